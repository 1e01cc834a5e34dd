"""ChatTTS -> model pack: embedding, GPT (KV cache), heads, Decoder, DVAE, Vocos graphs.

`python -m export chattts --assets <ChatTTS folder>` (official asset layout), `--tiny`
(seeded random weights of a tiny config of the same classes, own tokenizer: tests and the
offline demo) or `--random-real` (random weights at the real size: benchmarks).
The pack's layout and every constant are documented in docs/chattts-pack.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import ChatTTS
import numpy as np
import torch
from tokenizers import Tokenizer
from torch.export import Dim

from export.chattts_graphs import (
    DecoderGraph,
    DVAEDecodeGraph,
    EmbedCode,
    EmbedText,
    GPTStep,
    HeadText,
    VocosGraph,
)
from export.chattts_modules import (
    NUM_AUDIO_TOKENS,
    NUM_VQ,
    ChatTTSModules,
    ChatTTSSizes,
    build_random,
    load_assets,
)
from export.chattts_parity import check_pack_parity, random_feeds
from export.chattts_tokenizer import (
    TOKENIZER_FILE,
    build_tiny_tokenizer,
    load_asset_tokenizer,
    special_token_ids,
    write_tokenizer,
)
from export.pack import graph_entry, write_manifest

log = logging.getLogger("audioserve.export.chattts")

TINY_SEED = 0
PARITY_TOLERANCE = 1e-4
OPSET = 18
SPK_STAT_FILE = "spk_stat.npy"
EXPORTERS = ("torchscript", "dynamo")
HOMOPHONES_FILE = "homophones.json"
HOMOPHONES_SOURCE = Path(ChatTTS.__file__).parent / "res" / "homophones_map.json"

# Upstream's defaults (ChatTTS 0.2.5 core.py RefineTextParams / InferCodeParams,
# model/processors.py: window 16, min_tokens_to_keep 3).
SAMPLING = {
    "code": {"temperature": 0.3, "top_p": 0.7, "top_k": 20, "repetition_penalty": 1.05,
             "repetition_window": 16, "min_tokens_to_keep": 3, "max_new_token": 2048,
             "min_new_token": 0},
    "refine": {"temperature": 0.7, "top_p": 0.7, "top_k": 20, "repetition_penalty": 1.0,
               "repetition_window": 16, "min_tokens_to_keep": 3, "max_new_token": 384,
               "min_new_token": 0},
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--assets", type=Path,
                        help="ChatTTS folder in the official layout "
                             "(asset/gpt, asset/*.safetensors, asset/tokenizer)")
    source.add_argument("--tiny", action="store_true", help="seeded random tiny config (demo)")
    source.add_argument("--random-real", action="store_true",
                        help="random weights at the real size (benchmarks)")
    parser.add_argument("--out", type=Path, default=Path("models/chattts"))
    parser.add_argument("--seed", type=int, default=TINY_SEED)
    parser.add_argument("--exporter", choices=EXPORTERS, default=EXPORTERS[0],
                        help="torch.onnx path (both are parity-checked)")


def run(args: argparse.Namespace) -> int:
    if args.tiny:
        build_tiny(args.out, seed=args.seed, exporter=args.exporter)
    elif args.random_real:
        build_random_real(args.out, seed=args.seed, exporter=args.exporter)
    else:
        build_from_assets(args.assets, args.out, exporter=args.exporter)
    return 0


def build_tiny(out: Path, seed: int = TINY_SEED, exporter: str = EXPORTERS[0]) -> None:
    """The offline demo pack: deterministic for a given seed and torch version."""
    tok = build_tiny_tokenizer()
    modules = build_random(ChatTTSSizes.tiny(tok.get_vocab_size()), seed)
    write_pack(modules, tok, out, source=f"tiny(seed={seed})", demo=True,
               tokenizer_source="tiny-wordpiece", exporter=exporter)


def build_random_real(out: Path, seed: int = TINY_SEED, exporter: str = EXPORTERS[0]) -> None:
    """Real-size random weights; the tiny tokenizer (21,194 ids vs 21,178) stands in."""
    tok = build_tiny_tokenizer()
    sizes = dataclasses.replace(ChatTTSSizes.real(), text_vocab_size=tok.get_vocab_size())
    modules = build_random(sizes, seed)
    write_pack(modules, tok, out, source=f"random-real(seed={seed})", demo=True,
               tokenizer_source="tiny-wordpiece", exporter=exporter)


def build_from_assets(root: Path, out: Path, sizes: ChatTTSSizes | None = None,
                      exporter: str = EXPORTERS[0]) -> None:
    asset = root / "asset" if (root / "asset").is_dir() else root
    tok = load_asset_tokenizer(asset / "tokenizer")
    sizes = sizes or ChatTTSSizes.real()
    if tok.get_vocab_size() != sizes.text_vocab_size:
        raise ValueError(f"tokenizer has {tok.get_vocab_size()} ids, the GPT "
                         f"{sizes.text_vocab_size}")
    modules = load_assets(root, sizes)
    write_pack(modules, tok, out, source=f"chattts-assets:{root.name}", demo=False,
               tokenizer_source="chattts", exporter=exporter)


def graph_specs(m: ChatTTSModules, spk_emb_id: int) -> dict[str, dict[str, Any]]:
    """Per graph: the wrapper, and its inputs and outputs with their named dynamic axes."""
    layers = m.sizes.num_layers
    kv = [(i, name) for i in range(layers) for name in ("key", "value")]
    cache_in = {f"past_{n}_{i}": {0: "batch", 2: "past"} for i, n in kv}
    cache_out = {f"present_{n}_{i}": {0: "batch", 2: "total"} for i, n in kv}
    seq = {0: "batch", 1: "seq"}
    return {
        "embed_text": {"module": EmbedText(m.embed, spk_emb_id),
                       "inputs": {"input_ids": seq, "spk_emb": {0: "batch"}},
                       "outputs": {"inputs_embeds": seq}},
        "embed_code": {"module": EmbedCode(m.embed), "inputs": {"codes": seq},
                       "outputs": {"inputs_embeds": seq}},
        "gpt": {"module": GPTStep(m.gpt, m.embed),
                "inputs": {"inputs_embeds": seq, "attention_mask": {0: "batch", 1: "total"},
                           "position_ids": seq, **cache_in},
                "outputs": {"hidden": seq, "code_logits": {0: "batch"}, **cache_out}},
        "head_text": {"module": HeadText(m.embed), "inputs": {"hidden": {0: "batch"}},
                      "outputs": {"text_logits": {0: "batch"}}},
        "decoder": {"module": DecoderGraph(m.decoder), "inputs": {"hidden": seq},
                    "outputs": {"mel": {0: "batch", 2: "frames"}}},
        "dvae_decode": {"module": DVAEDecodeGraph(m.dvae), "inputs": {"codes": seq},
                        "outputs": {"mel": {0: "batch", 2: "frames"}}},
        "vocos": {"module": VocosGraph(m.vocos), "inputs": {"mel": {0: "batch", 2: "frames"}},
                  "outputs": {"waveform": {0: "batch", 1: "samples"}}},
    }


def export_graph(name: str, spec: dict[str, Any], feeds: dict[str, np.ndarray], path: Path,
                 exporter: str = EXPORTERS[0]) -> None:
    """Export one wrapper. The GPT's cache goes in as ONE tuple argument (dynamo rejects
    *varargs and wants its dynamic shapes nested the same way).

    "torchscript" (default) exports the tiny pack in ~5 s instead of ~60 s with "dynamo";
    both are parity-checked the same way. Tracing fixes Python branches, none of which
    depends on data here (checked by the tests across batch, past and new lengths).
    """
    module = spec["module"].eval()
    inputs, outputs = list(spec["inputs"]), list(spec["outputs"])
    tensors = [torch.from_numpy(feeds[n]) for n in inputs]
    args: tuple[Any, ...] = tuple(tensors)
    if name == "gpt":
        args = (*tensors[:3], tuple(tensors[3:]))
    start = time.perf_counter()
    with torch.no_grad():
        if exporter == "dynamo":
            logging.getLogger("onnx_ir").setLevel(logging.WARNING)
            auto = [{axis: Dim.AUTO for axis in spec["inputs"][n]} for n in inputs]
            dynamic: Any = auto if name != "gpt" else (*auto[:3], tuple(auto[3:]))
            torch.onnx.export(module, args, str(path), input_names=inputs, output_names=outputs,
                              dynamic_shapes=dynamic, opset_version=OPSET, dynamo=True,
                              external_data=False, verbose=False)
        else:
            axes = {**spec["inputs"], **spec["outputs"]}
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", message=".*advanced indexing.*")  # ids are >= 0
            warnings.filterwarnings("ignore", message="Constant folding")
            torch.onnx.export(module, args, str(path), input_names=inputs, output_names=outputs,
                              dynamic_axes=axes, opset_version=OPSET, dynamo=False)
    log.info("exported %s (%s) in %.1f s (%.1f MB)", path.name, exporter,
             time.perf_counter() - start, path.stat().st_size / 2**20)


def pack_constants(m: ChatTTSModules, tok: Tokenizer, tokenizer_source: str) -> dict[str, Any]:
    s = m.sizes
    specials = special_token_ids(tok)
    return {
        "sample_rate": s.sample_rate, "hop_length": s.hop_length, "n_fft": s.n_fft,
        "n_mels": s.n_mels, "mel_frames_per_token": 2, "samples_per_token": 2 * s.hop_length,
        "hidden_size": s.hidden_size, "num_layers": s.num_layers, "num_heads": s.num_heads,
        "head_dim": s.head_dim, "max_position_embeddings": s.max_position_embeddings,
        "num_vq": NUM_VQ, "num_audio_tokens": NUM_AUDIO_TOKENS, "audio_eos": NUM_AUDIO_TOKENS - 1,
        "text_vocab_size": tok.get_vocab_size(), "spk_emb_dim": s.hidden_size,
        "pad_token_id": specials["[PAD]"], "special_tokens": specials,
        "refine_eos_token_id": specials["[Ebreak]"], "refine_drop_from_id": specials["[break_0]"],
        "code_prompt_template": "[Stts]{speaker}{txt_smp}{speed}{text}[Ptts]",
        "speaker_token": "[spk_emb]", "no_speaker_token": "[empty_spk]",
        "default_speed_token": "[speed_5]",
        "refine_prompt_template": "[Sbreak]{text}[Pbreak]{prompt}",
        "sampling": SAMPLING, "silence_threshold": 1e-5, "vocos_istft": "graph",
        "spk_stat_layout": "std_then_mean", "tokenizer_source": tokenizer_source,
    }


def write_pack(m: ChatTTSModules, tok: Tokenizer, out: Path, *, source: str, demo: bool,
               tokenizer_source: str, exporter: str = EXPORTERS[0]) -> dict[str, float]:
    """Export every graph, the tokenizer, spk_stat and the manifest; enforce parity."""
    out.mkdir(parents=True, exist_ok=True)
    spk_emb_id = special_token_ids(tok)["[spk_emb]"]
    specs = graph_specs(m, spk_emb_id)
    feeds = random_feeds(m, spk_emb_id, seed=1)
    files: dict[str, Path] = {}
    graphs: dict[str, dict[str, dict[str, Any]]] = {}
    for name, spec in specs.items():
        files[name] = out / f"{name}.fp32.onnx"
        export_graph(name, spec, feeds[name], files[name], exporter)
        graphs[name] = {"fp32": graph_entry(files[name].name, list(spec["inputs"]),
                                            list(spec["outputs"]), exporter=exporter)}
    write_tokenizer(tok, out)
    np.save(out / SPK_STAT_FILE, m.spk_stat.astype(np.float16))
    extra_files = {}
    if HOMOPHONES_SOURCE.is_file():  # data of the installed package, not of this repo
        shutil.copyfile(HOMOPHONES_SOURCE, out / HOMOPHONES_FILE)
        extra_files["homophones"] = HOMOPHONES_FILE
    diffs = check_pack_parity(m, files, spk_emb_id, PARITY_TOLERANCE)
    for name, diff in diffs.items():
        print(f"parity {name:12s} max|ORT - chattts| = {diff:.2e}")
    write_manifest(
        out, kind="chattts", source=source, demo=demo, graphs=graphs,
        files={"tokenizer": TOKENIZER_FILE, "spk_stat": SPK_STAT_FILE, **extra_files},
        constants=pack_constants(m, tok, tokenizer_source),
        config=m.sizes.to_json(), parity={"tolerance": PARITY_TOLERANCE, "max_abs_diff": diffs},
        weights_licence=("random weights (no licence attached)" if demo
                         else "CC BY-NC 4.0 (2Noise/ChatTTS assets)"),
    )
    log.info("ChatTTS pack written to %s", out)
    return diffs
