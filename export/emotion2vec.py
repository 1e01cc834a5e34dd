"""Emotion2Vec+ (FunASR) -> model pack: one padding-aware graph, the head, labels, manifest.

`python -m export emotion2vec --model-dir <folder>` where the folder is what FunASR /
ModelScope ship (`config.yaml`, `model.pt`, `tokens.txt`, e.g. `iic/emotion2vec_plus_base`),
`--tiny` (seeded random tiny config: tests and the offline demo) or `--random-real base|large`
(random weights at the real sizes: benchmarks). Tiny and random-real first write a folder of
the same layout (config.yaml, tokens.txt, our own model.pt) and export from it, so every pack
goes through the same strict loader.

The graph: `(waveform [B,T] f32, lengths [B] i64) -> logits [B,C], embedding [B,D],
frame_logits [B,F,C], feats [B,F,D], frame_lengths [B] i64`, masked at every stage (see
export/emotion2vec_model.py). `embedding` is the masked mean of the frame features, which
`proj` maps to `logits`; `proj` is also written to `head.npy` ([C, D+1], bias last) so the
service can apply it to merged chunk embeddings of long audio.
"""

from __future__ import annotations

import argparse
import copy
import logging
import pickle
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
import yaml
from torch import nn

from export.emotion2vec_model import Emotion2vec, build_model, frame_count
from export.pack import graph_entry, write_manifest

log = logging.getLogger("audioserve.export.emotion2vec")

SAMPLE_RATE = 16_000
GRAPH_FILE = "model.fp32.onnx"
HEAD_FILE = "head.npy"
TOKENS_FILE = "tokens.txt"
INPUTS = ["waveform", "lengths"]
OUTPUTS = ["logits", "embedding", "frame_logits", "feats", "frame_lengths"]
TINY_SEED = 0
PARITY_TOLERANCE = 1e-4
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model")  # FunASR unwraps in this order
DECODER_PREFIX = "modality_encoders.AUDIO.decoder."

# tokens.txt of emotion2vec_plus_{seed,base,large}, in order (see ../shared/notes/emotion2vec.md)
PLUS_TOKENS = ["生气/angry", "厌恶/disgusted", "恐惧/fearful", "开心/happy", "中立/neutral",
               "其他/other", "难过/sad", "吃惊/surprised", "<unk>"]
EMOJI = {"angry": "😠", "disgusted": "🤢", "fearful": "😨", "happy": "😊", "neutral": "😐",
         "other": "🤔", "sad": "😢", "surprised": "😲", "unknown": "❓"}

# Every key FunASR's Emotion2vec reads, at the data2vec 2.0 / emotion2vec base sizes.
_BASE_CONF: dict[str, Any] = {
    "loss_beta": 0.0, "loss_scale": None, "depth": 8, "start_drop_path_rate": 0.0,
    "end_drop_path_rate": 0.0, "num_heads": 12, "norm_eps": 1e-05, "norm_affine": True,
    "encoder_dropout": 0.1, "post_mlp_drop": 0.1, "attention_dropout": 0.1,
    "activation_dropout": 0.0, "dropout_input": 0.0, "layerdrop": 0.05, "embed_dim": 768,
    "mlp_ratio": 4.0, "layer_norm_first": False, "average_top_k_layers": 8,
    "end_of_block_targets": False, "clone_batch": 8, "normalize": True,
    "modalities": {"audio": {
        "type": "AUDIO", "prenet_depth": 4, "prenet_layerdrop": 0.05, "prenet_dropout": 0.1,
        "start_drop_path_rate": 0.0, "end_drop_path_rate": 0.0, "num_extra_tokens": 10,
        "init_extra_token_zero": False, "mask_noise_std": 0.01, "mask_prob": 0.5,
        "mask_length": 5, "inverse_mask": False, "keep_masked_pct": 0.0,
        "encoder_zero_mask": True, "mask_channel_prob": 0.0, "mask_channel_length": 64,
        "local_grad_mult": 1.0, "use_alibi_encoder": True, "alibi_scale": 1.0,
        "learned_alibi": False, "alibi_max_pos": None, "learned_alibi_scale": True,
        "learned_alibi_scale_per_head": True, "learned_alibi_scale_per_layer": True,
        "num_alibi_heads": 12, "model_depth": 8,
        "extractor_mode": "layer_norm",
        "feature_encoder_spec": "[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512,2,2)] + [(512,2,2)]",
        "conv_pos_width": 95, "conv_pos_groups": 16, "conv_pos_depth": 5,
        "conv_pos_pre_ln": False,
        "decoder": {"decoder_dim": 384, "decoder_groups": 16, "decoder_kernel": 7,
                    "decoder_layers": 4, "input_dropout": 0.1, "add_positions_masked": False,
                    "add_positions_all": False, "decoder_residual": True,
                    "projection_layers": 1, "projection_ratio": 2.0},
    }},
}


def model_conf(size: str) -> dict[str, Any]:
    """A complete `model_conf` (FunASR builds from it too) for tiny, base or large."""
    conf = copy.deepcopy(_BASE_CONF)
    audio = conf["modalities"]["audio"]
    if size == "large":
        conf.update(embed_dim=1024, num_heads=16, depth=16)
        audio.update(prenet_depth=8, num_alibi_heads=16, model_depth=16)
    elif size == "tiny":  # same CNN strides and kernels (so the frame formula holds), small dims
        conf.update(embed_dim=32, num_heads=4, depth=2)
        audio.update(
            prenet_depth=1, num_alibi_heads=4, model_depth=2, num_extra_tokens=4,
            feature_encoder_spec="[(32, 10, 5)] + [(32, 3, 2)] * 4 + [(32,2,2)] + [(32,2,2)]",
            conv_pos_width=38, conv_pos_groups=4, conv_pos_depth=2,
        )
        audio["decoder"].update(decoder_dim=16, decoder_groups=4, decoder_layers=1)
    elif size != "base":
        raise ValueError(f"unknown size {size!r}: tiny, base or large")
    return conf


class CheckpointMismatch(RuntimeError):
    """The checkpoint's keys do not match the model built from its config."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--model-dir", type=Path,
                     help="folder with config.yaml, model.pt, tokens.txt (FunASR layout)")
    src.add_argument("--tiny", action="store_true", help="seeded random tiny model (demo)")
    src.add_argument("--random-real", choices=["base", "large"],
                     help="random weights at the real size (benchmarks)")
    parser.add_argument("--out", type=Path, default=Path("models/emotion2vec"))
    parser.add_argument("--allow-pickle", action="store_true",
                        help="load model.pt with weights_only=False if it is not a plain "
                             "tensor checkpoint (only for files you trust)")


def run(args: argparse.Namespace) -> int:
    if args.tiny:
        build_tiny(args.out)
    elif args.random_real:
        build_random(args.out, args.random_real, seed=TINY_SEED)
    else:
        export_folder(args.model_dir, args.out, source=str(args.model_dir), demo=False,
                      allow_pickle=args.allow_pickle)
    return 0


def build_tiny(out: Path) -> None:
    """The offline demo pack: seeded, deterministic, a few seconds."""
    build_random(out, "tiny", seed=TINY_SEED)


def build_random(out: Path, size: str, *, seed: int) -> None:
    conf = model_conf(size)
    model = random_model(conf, seed)
    with tempfile.TemporaryDirectory(prefix="emotion2vec-src-") as tmp:
        write_model_folder(Path(tmp), conf, model.state_dict())
        label = "tiny" if size == "tiny" else f"random-real({size})"
        export_folder(Path(tmp), out, source=f"{label}(seed={seed})", demo=True)


def random_model(conf: dict[str, Any], seed: int) -> Emotion2vec:
    """Our definition with seeded random weights (non-trivial scales and extra tokens)."""
    torch.manual_seed(seed)
    model = build_model(conf, len(PLUS_TOKENS))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        audio = model.audio
        if hasattr(audio, "extra_tokens"):
            audio.extra_tokens.copy_(torch.randn(audio.extra_tokens.shape, generator=gen))
        if hasattr(audio, "alibi_scale"):
            audio.alibi_scale.copy_(0.5 + torch.rand(audio.alibi_scale.shape, generator=gen))
    return model


def write_model_folder(folder: Path, conf: dict[str, Any], state: dict[str, torch.Tensor]
                       ) -> None:
    """config.yaml + tokens.txt + model.pt as FunASR ships them (state dict wrapped)."""
    folder.mkdir(parents=True, exist_ok=True)
    config = {"model": "Emotion2vec", "model_conf": conf,
              "tokenizer": "CharTokenizer", "tokenizer_conf": {"token_list": TOKENS_FILE}}
    (folder / "config.yaml").write_text(yaml.safe_dump(config, allow_unicode=True),
                                        encoding="utf-8")
    (folder / TOKENS_FILE).write_text("\n".join(PLUS_TOKENS) + "\n", encoding="utf-8")
    torch.save({"state_dict": {k: v.clone() for k, v in state.items()}}, folder / "model.pt")


def read_tokens(path: Path) -> list[str]:
    tokens = [t.strip() for t in path.read_text(encoding="utf-8").splitlines() if t.strip()]
    if not tokens:
        raise ValueError(f"{path}: no labels")
    return tokens


def label_entry(token: str) -> dict[str, str]:
    """`生气/angry` -> en, zh, emoji; `<unk>` is presented as `unknown`."""
    if token == "<unk>":
        zh, en = "未知", "unknown"
    elif "/" in token:
        zh, en = token.split("/", 1)
    else:
        zh, en = token, token
    return {"token": token, "en": en, "zh": zh, "emoji": EMOJI.get(en, "")}


def load_checkpoint(path: Path, *, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """A flat state dict from model.pt: weights_only first, unwrapped as FunASR does."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if not allow_pickle:
            raise RuntimeError(
                f"{path} is not a plain tensor checkpoint (torch.load weights_only=True "
                f"refused it: {exc}). If you trust the file, rerun with --allow-pickle."
            ) from exc
        log.warning("%s: weights_only load refused (%s); loading with weights_only=False "
                    "because --allow-pickle was given", path, exc)
        obj = torch.load(path, map_location="cpu", weights_only=False)
    for key in WRAPPER_KEYS:
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            log.info("%s: unwrapping %r", path, key)
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointMismatch(f"{path}: no state dict of tensors found")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_strict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load every key, or fail naming the missing and unexpected ones.

    The pre-training decoder (`modality_encoders.AUDIO.decoder.*`) is unused at inference:
    its keys are dropped, and the log says how many.
    """
    state = dict(state)
    dropped = [k for k in state if k.startswith(DECODER_PREFIX)]
    for k in dropped:
        del state[k]
    if dropped:
        log.info("dropped %d %s* keys (pre-training decoder, unused at inference)",
                 len(dropped), DECODER_PREFIX)
    scale_key = "modality_encoders.AUDIO.alibi_scale"
    if scale_key in state and state[scale_key].dim() == 4:  # older layout, as upstream upgrades
        state[scale_key] = state[scale_key].unsqueeze(0)
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise CheckpointMismatch(
            f"checkpoint does not match the config: {len(missing)} missing "
            f"{missing[:20]}, {len(unexpected)} unexpected {unexpected[:20]}"
        )
    model.load_state_dict(state, strict=True)


def load_folder(folder: Path, *, allow_pickle: bool = False
                ) -> tuple[Emotion2vec, dict[str, Any], list[str]]:
    for name in ("config.yaml", "model.pt", TOKENS_FILE):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder}: missing {name} (FunASR model folder layout)")
    config = yaml.safe_load((folder / "config.yaml").read_text(encoding="utf-8"))
    if config.get("model") != "Emotion2vec":
        raise ValueError(f"{folder / 'config.yaml'}: model is {config.get('model')!r}, "
                         "expected 'Emotion2vec'")
    tokens = read_tokens(folder / TOKENS_FILE)
    conf = config["model_conf"]
    model = build_model(conf, len(tokens))
    load_strict(model, load_checkpoint(folder / "model.pt", allow_pickle=allow_pickle))
    return model.eval(), conf, tokens


class _GraphModule(nn.Module):
    """The dataclass output as the graph's tuple, in OUTPUTS order."""

    def __init__(self, model: Emotion2vec) -> None:
        super().__init__()
        self.model = model

    def forward(self, waveform: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(waveform, lengths)
        return out.logits, out.embedding, out.frame_logits, out.feats, out.frame_lengths


def export_graph(model: Emotion2vec, path: Path) -> None:
    # A padded dummy batch so tracing sees masking at work (masking is unconditional anyway).
    wav = torch.randn(2, SAMPLE_RATE)
    lengths = torch.tensor([SAMPLE_RATE, SAMPLE_RATE * 3 // 4])
    batch, samples, frames = "batch", "samples", "frames"
    with torch.no_grad():
        torch.onnx.export(
            _GraphModule(model).eval(), (wav, lengths), str(path), dynamo=False,
            opset_version=17, input_names=INPUTS, output_names=OUTPUTS,
            dynamic_axes={"waveform": {0: batch, 1: samples}, "lengths": {0: batch},
                          "logits": {0: batch}, "embedding": {0: batch},
                          "frame_logits": {0: batch, 1: frames},
                          "feats": {0: batch, 1: frames}, "frame_lengths": {0: batch}},
        )


def frame_constants(conv_layers: tuple[tuple[int, int, int], ...]) -> dict[str, Any]:
    """What the service needs to predict frame counts: layers, and the closed form."""
    hop = int(np.prod([s for _, _, s in conv_layers]))
    receptive = 1
    for _, k, s in reversed(conv_layers):
        receptive = (receptive - 1) * s + k
    min_samples = next(t for t in range(1, receptive + 2)
                       if int(frame_count(torch.tensor([t]), conv_layers)[0]) > 0)
    return {"conv_layers": [list(layer) for layer in conv_layers], "hop_samples": hop,
            "receptive_field_samples": receptive, "min_samples": min_samples,
            "frame_rate": SAMPLE_RATE / hop,
            "formula": "frames = floor((samples - receptive_field) / hop) + 1"}


def export_folder(folder: Path, out: Path, *, source: str, demo: bool,
                  allow_pickle: bool = False) -> Path:
    model, _, tokens = load_folder(folder, allow_pickle=allow_pickle)
    out.mkdir(parents=True, exist_ok=True)
    export_graph(model, out / GRAPH_FILE)
    head = torch.cat([model.proj.weight, model.proj.bias[:, None]], dim=1)
    np.save(out / HEAD_FILE, head.detach().numpy().astype(np.float32))
    shutil.copyfile(folder / TOKENS_FILE, out / TOKENS_FILE)
    worst = check_parity(model, out / GRAPH_FILE)
    frames = frame_constants(model.cfg.conv_layers)
    constants = {
        "sample_rate": SAMPLE_RATE, "labels": [label_entry(t) for t in tokens],
        "normalize": model.cfg.normalize, "embed_dim": model.cfg.embed_dim,
        "num_classes": len(tokens), **frames,
        "head": {"file": HEAD_FILE, "layout": "[num_classes, embed_dim + 1], bias last"},
        "parity_max_abs_logit_diff": f"{worst:.1e}",
    }
    path = write_manifest(
        out, kind="emotion2vec", source=source, demo=demo,
        graphs={"model": {"fp32": graph_entry(GRAPH_FILE, INPUTS, OUTPUTS)}},
        files={"head": HEAD_FILE, "tokens": TOKENS_FILE}, constants=constants,
        architecture={"embed_dim": model.cfg.embed_dim, "depth": model.cfg.depth,
                      "prenet_depth": model.cfg.prenet_depth, "num_heads": model.cfg.num_heads},
    )
    log.info("wrote %s (source %s, demo %s)", path, source, demo)
    return path


def parity_lengths(rate: int = SAMPLE_RATE) -> list[int]:
    """Mixed lengths: the longest, ragged ones, and the shortest that gives one frame."""
    return [3 * rate // 2, rate + 137, rate // 2 + 3, 400]


def check_parity(model: Emotion2vec, graph: Path, lengths: list[int] | None = None) -> float:
    """ORT on one padded batch of mixed lengths vs the PyTorch definition on each item alone.

    Printed and enforced: logits within PARITY_TOLERANCE, frame counts exact.
    """
    lengths = lengths or parity_lengths()
    gen = torch.Generator().manual_seed(1234)
    items = [0.1 * torch.randn(n, generator=gen) for n in lengths]
    batch = torch.zeros(len(items), max(lengths))
    for i, item in enumerate(items):
        batch[i, : len(item)] = item
    session = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    got = dict(zip(OUTPUTS, session.run(OUTPUTS, {
        "waveform": batch.numpy(), "lengths": np.asarray(lengths, np.int64)}), strict=True))
    worst = 0.0
    with torch.no_grad():
        for i, item in enumerate(items):
            ref = model(item[None], torch.tensor([len(item)]))
            n = int(ref.frame_lengths[0])
            if int(got["frame_lengths"][i]) != n:
                raise AssertionError(f"parity: item {i} frames {got['frame_lengths'][i]} != {n}")
            diff = float(np.abs(got["logits"][i] - ref.logits[0].numpy()).max())
            frame_ref = ref.frame_logits[0].numpy()
            frame_diff = float(np.abs(got["frame_logits"][i, :n] - frame_ref).max())
            worst = max(worst, diff)
            print(f"parity item {i}: {len(item)} samples, {n} frames, "
                  f"max |dlogit| {diff:.2e}, max |dframe_logit| {frame_diff:.2e}")
    scale = max(1.0, float(np.abs(got["logits"]).max()))
    if worst > PARITY_TOLERANCE * scale:
        raise AssertionError(f"parity: max |dlogit| {worst:.2e} > {PARITY_TOLERANCE * scale:.1e}")
    print(f"parity OK: padded ORT batch vs PyTorch items, max |dlogit| {worst:.2e}")
    return worst
