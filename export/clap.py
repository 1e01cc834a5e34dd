"""LAION CLAP (transformers.ClapModel) -> model pack: audio graph, text graph, tokenizer, manifest.

`python -m export clap --checkpoint laion/clap-htsat-unfused` (hub id or local folder),
`--tiny` (seeded random weights of a tiny config: tests and the offline demo) or
`--random-real` (random weights at the real size: benchmarks).

Every preprocessing constant in the manifest is read from the checkpoint's own
ClapFeatureExtractor (for tiny/random-real: the hub's `laion/clap-htsat-unfused`
preprocessor config, written into the pack), so the service never guesses.
"""

from __future__ import annotations

import argparse
import logging
import math
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from torch import nn
from transformers import ClapConfig, ClapFeatureExtractor, ClapModel

from export import clap_logmel, clap_tokenizer
from export.clap_fused import (
    FUSED_AUDIO_INPUTS,
    export_fused_audio,
    reference_embeds,
)
from export.clap_waveform import FRONT_END_FILE, WAVEFORM_GRAPH
from export.pack import graph_entry, write_manifest

log = logging.getLogger("audioserve.export.clap")

DEFAULT_CHECKPOINT = "laion/clap-htsat-unfused"
PROMPT_TEMPLATE = "This is a sound of {label}."
TINY_SEED = 0
PARITY_TOLERANCE = 1e-4
AUDIO_GRAPH = "audio.fp32.onnx"
TEXT_GRAPH = "text.fp32.onnx"

# As `laion/clap-htsat-unfused`'s preprocessor_config.json has it (see ../shared/notes/clap.md):
# the class defaults differ (fmin 0, truncation "fusion" -> HTK mels), so never rely on them.
HUB_UNFUSED_PREPROCESSOR: dict[str, Any] = {
    "feature_size": 64,
    "sampling_rate": 48_000,
    "hop_length": 480,
    "max_length_s": 10,
    "fft_window_size": 1024,
    "padding_value": 0.0,
    "return_attention_mask": False,
    "frequency_min": 50,
    "frequency_max": 14_000,
    "top_db": None,
    "truncation": "rand_trunc",
    "padding": "repeatpad",
}
# `laion/clap-htsat-fused` differs only in its truncation mode (fusion: HTK mels, no norm).
HUB_FUSED_PREPROCESSOR: dict[str, Any] = {**HUB_UNFUSED_PREPROCESSOR, "truncation": "fusion"}

TINY_AUDIO = {
    "spec_size": 256, "num_mel_bins": 64, "window_size": 8, "patch_size": 4,
    "patch_stride": [4, 4], "patch_embeds_hidden_size": 8, "depths": [2, 2, 2, 2],
    "num_attention_heads": [1, 1, 2, 2], "hidden_size": 64, "mlp_ratio": 2.0,
    "enable_fusion": False,
}
TINY_TEXT = {
    "vocab_size": 512, "hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2,
    "intermediate_size": 32, "max_position_embeddings": 80, "type_vocab_size": 1,
    "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2,
}


class AudioEmbedder(nn.Module):
    """input_features [B,1,frames,mels] -> L2-normalised audio embeddings [B,D]."""

    def __init__(self, model: ClapModel) -> None:
        super().__init__()
        self.audio_model = model.audio_model
        self.audio_projection = model.audio_projection

    def forward(self, input_features: torch.Tensor) -> torch.Tensor:
        pooled = self.audio_model(input_features=input_features).pooler_output
        return nn.functional.normalize(self.audio_projection(pooled), dim=-1)


class TextEmbedder(nn.Module):
    """input_ids, attention_mask [B,T] -> L2-normalised text embeddings [B,D]."""

    def __init__(self, model: ClapModel) -> None:
        super().__init__()
        self.text_model = model.text_model
        self.text_projection = model.text_projection

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        pooled = self.text_model(input_ids=input_ids, attention_mask=attention_mask).pooler_output
        return nn.functional.normalize(self.text_projection(pooled), dim=-1)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help=f"hub id or local folder, e.g. {DEFAULT_CHECKPOINT}")
    src.add_argument("--tiny", action="store_true", help="seeded random tiny config (demo)")
    src.add_argument("--random-real", action="store_true",
                     help="random weights at the real size (benchmarks)")
    parser.add_argument("--out", type=Path, default=Path("models/clap"))
    parser.add_argument("--fused", action="store_true",
                        help="with --tiny/--random-real: the fusion variant (a --checkpoint "
                             "is fused or not by its own config)")


def run(args: argparse.Namespace) -> int:
    if args.tiny:
        build_tiny(args.out, fused=args.fused)
    elif args.random_real:
        build_random_real(args.out, fused=args.fused)
    else:
        build_from_checkpoint(args.checkpoint, args.out)
    return 0


# -- sources ----------------------------------------------------------------------------

FUSION = {"enable_fusion": True, "fusion_type": "aff_2d"}


def tiny_config(fused: bool = False) -> ClapConfig:
    audio = {**TINY_AUDIO, **FUSION} if fused else TINY_AUDIO
    return ClapConfig(text_config=TINY_TEXT, audio_config=audio, projection_dim=16)


def tiny_model(fused: bool = False) -> ClapModel:
    """The seeded random-weight tiny ClapModel (the same weights on every call)."""
    torch.manual_seed(TINY_SEED)
    return ClapModel(tiny_config(fused)).eval()


def _hub_extractor(fused: bool) -> ClapFeatureExtractor:
    return ClapFeatureExtractor(**(HUB_FUSED_PREPROCESSOR if fused else HUB_UNFUSED_PREPROCESSOR))


def build_tiny(out: Path, fused: bool = False) -> None:
    """The seeded tiny pack (seconds to build; identical for identical library versions)."""
    model = tiny_model(fused)
    tok = clap_tokenizer.train_tiny(TINY_TEXT["vocab_size"])
    source = f"tiny(seed={TINY_SEED}{', fused' if fused else ''})"
    _write_pack(model, tok, _hub_extractor(fused), out, source=source, demo=True)


def build_random_real(out: Path, fused: bool = False) -> None:
    """Random weights at `laion/clap-htsat-unfused`'s size: for benchmarks, never for answers."""
    torch.manual_seed(TINY_SEED)
    model = ClapModel(ClapConfig(audio_config=FUSION if fused else None)).eval()
    tok = clap_tokenizer.train_tiny(512)  # ids < 512 are valid for the 50k vocab too
    source = f"random-real(seed={TINY_SEED}{', fused' if fused else ''})"
    _write_pack(model, tok, _hub_extractor(fused), out, source=source, demo=True)


def build_from_checkpoint(checkpoint: str, out: Path) -> None:
    model = ClapModel.from_pretrained(checkpoint).eval()
    extractor = ClapFeatureExtractor.from_pretrained(checkpoint)
    tok = clap_tokenizer.export_checkpoint_tokenizer(checkpoint)
    _write_pack(model, tok, extractor, out, source=checkpoint, demo=False)


# -- the pack ---------------------------------------------------------------------------

def preprocessing_constants(extractor: ClapFeatureExtractor) -> dict[str, Any]:
    """Everything the service's log-mel front-end needs, read from the extractor itself."""
    fusion = extractor.truncation == "fusion"
    sr = int(extractor.sampling_rate)
    max_samples = int(extractor.nb_max_samples)
    return {
        "sample_rate": sr,
        "n_fft": int(extractor.fft_window_size),
        "hop_length": int(extractor.hop_length),
        "n_mels": int(extractor.feature_size),
        "f_min": float(extractor.frequency_min),
        "f_max": float(extractor.frequency_max),
        # ClapFeatureExtractor: HTK mels without norm for "fusion", Slaney/Slaney otherwise.
        "mel_scale": "htk" if fusion else "slaney",
        "mel_norm": None if fusion else "slaney",
        "window": "hann_periodic",
        "center": True,
        "pad_mode": "reflect",
        "power": 2.0,
        "mel_floor": 1e-10,
        "db_min_value": 1e-10,
        "top_db": extractor.top_db,
        "truncation": extractor.truncation,
        "padding": extractor.padding,
        "padding_value": float(extractor.padding_value),
        "max_length_samples": max_samples,
        "window_seconds": max_samples / sr,
        "frames": max_samples // int(extractor.hop_length) + 1,
    }


def _write_pack(model: ClapModel, tok: Any, extractor: ClapFeatureExtractor, out: Path,
                *, source: str, demo: bool) -> None:
    started = time.monotonic()
    out.mkdir(parents=True, exist_ok=True)
    model.eval()
    pre = preprocessing_constants(extractor)
    tok_info = clap_tokenizer.save(tok, out)
    extractor.to_json_file(str(out / "preprocessor_config.json"))
    fused = bool(model.config.audio_config.enable_fusion)
    if fused:
        with torch.no_grad(), _quiet_tracer():
            export_fused_audio(model, out / AUDIO_GRAPH, frames=pre["frames"], mels=pre["n_mels"])
    else:
        export_audio(model, out / AUDIO_GRAPH, frames=pre["frames"], mels=pre["n_mels"])
    export_text(model, out / TEXT_GRAPH, pad_id=tok_info.pad_token_id)
    text_cfg = model.config.text_config
    constants = {
        **pre,
        "logit_scale": float(math.exp(model.logit_scale_a.item())),  # logits_per_audio's
        "logit_scale_text": float(math.exp(model.logit_scale_t.item())),
        "prompt_template": PROMPT_TEMPLATE,
        # RoBERTa positions start after the padding id, so 2 positions are never usable.
        "text_max_length": int(text_cfg.max_position_embeddings) - 2,
        "pad_token_id": tok_info.pad_token_id,
        "bos_token_id": tok_info.bos_token_id,
        "eos_token_id": tok_info.eos_token_id,
        "embed_dim": int(model.config.projection_dim),
        # fused: one [4, frames, mels] item per clip (see service/audio/clap_features.py)
        "fusion": fused,
    }
    audio_entry = graph_entry(AUDIO_GRAPH, FUSED_AUDIO_INPUTS if fused else ["input_features"],
                              ["audio_embeds"])
    # the 10 s waveform in, ClapFeatureExtractor's log-mel computed inside (export/clap_logmel)
    mel = clap_logmel.FrontEndConfig.from_extractor(constants, extractor)
    waveform_entry = clap_logmel.write_waveform_graph(out, mel, audio_entry)
    write_manifest(
        out,
        kind="clap",
        source=source,
        demo=demo,
        graphs={
            "audio": {"fp32": audio_entry},
            WAVEFORM_GRAPH: {"fp32": waveform_entry},
            "text": {"fp32": graph_entry(TEXT_GRAPH, ["input_ids", "attention_mask"],
                                         ["text_embeds"])},
        },
        files={"tokenizer": tok_info.file, "preprocessor_config": "preprocessor_config.json",
               "log_mel_front_end": FRONT_END_FILE},
        constants=constants,
    )
    check_parity(model, out, frames=pre["frames"], mels=pre["n_mels"], tok=tok)
    clap_logmel.check_waveform_parity(out, waveform_entry, AUDIO_GRAPH, extractor, mel)
    log.info("clap pack (%s) written to %s in %.1f s", source, out, time.monotonic() - started)


@contextmanager
def _quiet_tracer() -> Iterator[None]:
    """HTSAT's shape checks trip TracerWarnings; they are expected (shapes are fixed)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        yield


def export_audio(model: ClapModel, path: Path, *, frames: int, mels: int) -> None:
    example = torch.randn(2, 1, frames, mels, generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), _quiet_tracer():
        torch.onnx.export(
            AudioEmbedder(model).eval(), (example,), str(path), dynamo=False, opset_version=17,
            input_names=["input_features"], output_names=["audio_embeds"],
            dynamic_axes={"input_features": {0: "batch"}, "audio_embeds": {0: "batch"}},
        )


def export_text(model: ClapModel, path: Path, *, pad_id: int) -> None:
    ids = torch.tensor([[0, 5, 6, 7, 2], [0, 8, 2, pad_id, pad_id]], dtype=torch.int64)
    mask = (ids != pad_id).to(torch.int64)
    with torch.no_grad(), _quiet_tracer():
        torch.onnx.export(
            TextEmbedder(model).eval(), (ids, mask), str(path), dynamo=False, opset_version=17,
            input_names=["input_ids", "attention_mask"], output_names=["text_embeds"],
            dynamic_axes={"input_ids": {0: "batch", 1: "tokens"},
                          "attention_mask": {0: "batch", 1: "tokens"},
                          "text_embeds": {0: "batch"}},
        )


def check_parity(model: ClapModel, out: Path, *, frames: int, mels: int, tok: Any) -> float:
    """ORT vs PyTorch on a few inputs; raises above PARITY_TOLERANCE. Returns the max diff."""
    audio_diff = _audio_parity(model, out / AUDIO_GRAPH, frames=frames, mels=mels)
    prompts = ["This is a sound of dog.", "This is a sound of rain on a tin roof.", "a"]
    pad_id = tok.token_to_id(clap_tokenizer.PAD)
    encoded = [tok.encode(p).ids for p in prompts]
    width = max(len(e) for e in encoded)
    ids = torch.tensor([e + [pad_id] * (width - len(e)) for e in encoded], dtype=torch.int64)
    mask = (torch.arange(width)[None, :] < torch.tensor([len(e) for e in encoded])[:, None])
    mask = mask.to(torch.int64)
    with torch.no_grad():
        ref_text = TextEmbedder(model)(ids, mask).numpy()
    text = _ort(out / TEXT_GRAPH).run(
        None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}
    )[0]
    diff = max(audio_diff, float(np.abs(text - ref_text).max()))
    print(f"clap parity ORT vs PyTorch: max abs diff {diff:.2e} (tolerance {PARITY_TOLERANCE:g})")
    if not diff <= PARITY_TOLERANCE:
        raise RuntimeError(f"clap export parity failed: max abs diff {diff:.3e}")
    return diff


def _audio_parity(model: ClapModel, path: Path, *, frames: int, mels: int) -> float:
    """Unfused: 3 random feature maps. Fused: the same with mixed, all-false and all-true
    `is_longer`, against upstream's own data-dependent branch."""
    gen = torch.Generator().manual_seed(2)
    session = _ort(path)
    if not model.config.audio_config.enable_fusion:
        features = torch.randn(3, 1, frames, mels, generator=gen) * 20 - 40  # dB-like range
        with torch.no_grad():
            ref = AudioEmbedder(model)(features).numpy()
        return float(np.abs(session.run(None, {"input_features": features.numpy()})[0] - ref)
                     .max())
    features = torch.randn(3, 4, frames, mels, generator=gen) * 20 - 40
    diff = 0.0
    for rows in ([True, False, True], [False] * 3, [True] * 3):
        is_longer = torch.tensor(rows).reshape(-1, 1)
        with torch.no_grad():
            ref = reference_embeds(model, features, is_longer).numpy()
        got = session.run(None, {"input_features": features.numpy(),
                                 "is_longer": is_longer.numpy()})[0]
        diff = max(diff, float(np.abs(got - ref).max()))
    return diff


def _ort(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
