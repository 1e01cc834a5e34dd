"""ChatTTS graphs, raw: one GPT decode step (T=1, past P=128) at batch 1, 2, 4, 8.

Times the pack's `gpt` graph alone through the service's session factory (no sampling,
no scheduler), with the cache held at P past positions so every batch size sees the same
work per row, plus the audio side per generated token (decoder + vocos over 64 tokens).
Side by side in the same run: the same step through the package's PyTorch `LlamaModel`
(+ heads) when torch and chattts are installed, as the baseline the export replaces.
Real time needs 46.9 tokens/s per stream (one token = 512 samples at 24 kHz = 21.3 ms).

    .venv/bin/python -m bench.bench_tts_graphs [--pack models/chattts] [--real-pack DIR]
        [--past 128] [--steps 20]

Without --pack the tiny pack is built into a temp folder (~20 s); build the real-size one
with `python -m export chattts --random-real --out /tmp/chattts-real` (~2 min, 1 GB).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from service.runtime.packs import ModelPack, load_pack
from service.runtime.sessions import RuntimeConfig, create_session

TOKEN_SECONDS = 512 / 24000
BATCHES = (1, 2, 4, 8)


def step_feeds(c: dict[str, Any], batch: int, past: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {
        "inputs_embeds": rng.normal(size=(batch, 1, c["hidden_size"])).astype(np.float32),
        "attention_mask": np.ones((batch, past + 1), dtype=np.int64),
        "position_ids": np.full((batch, 1), past, dtype=np.int64),
    }
    shape = (batch, c["num_heads"], past, c["head_dim"])
    for i in range(c["num_layers"]):
        for kv in ("key", "value"):
            feeds[f"past_{kv}_{i}"] = rng.normal(size=shape).astype(np.float32)
    return feeds


def time_it(fn: Any, steps: int, warmup: int = 3) -> float:
    """Median seconds of `fn()` over `steps` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def torch_step(pack: ModelPack) -> Any | None:
    """The package's modules with random weights of the pack's sizes (timing only)."""
    try:
        import torch

        from export.chattts_modules import ChatTTSSizes, ConvStack, build_random
    except ImportError:
        return None
    cfg = dict(pack.manifest.model_extra.get("config", {}))
    if not cfg:
        return None
    for key in ("decoder", "dvae_decoder"):
        cfg[key] = ConvStack(**cfg[key])
    cfg["vq_levels"] = tuple(cfg["vq_levels"])
    modules = build_random(ChatTTSSizes(**cfg), seed=0)
    torch.set_num_threads(max(1, torch.get_num_threads()))

    def run(feeds: dict[str, np.ndarray]) -> None:
        from export.chattts_parity import ref_gpt

        with torch.inference_mode():
            ref_gpt(modules, feeds)

    return run


def bench_pack(name: str, root: Path, past: int, steps: int, threads: int) -> None:
    pack = load_pack(root, expected_kind="chattts")
    c = pack.constants
    config = RuntimeConfig(provider="cpu", intra_op_threads=threads)
    gpt = create_session(pack.graph("gpt", "fp32")[0], config)
    reference = torch_step(pack)
    print(f"\n== {name}: hidden {c['hidden_size']}, {c['num_layers']} layers, past {past} ==")
    print(f"{'B':>3} {'ORT ms/step':>12} {'tok/s all':>10} {'tok/s/stream':>13} "
          f"{'xB=1':>6} {'RTF/stream':>11} {'torch ms':>9} {'torch/ORT':>10}")
    base = None
    for batch in BATCHES:
        feeds = step_feeds(c, batch, past)
        ort_s = time_it(lambda f=feeds: gpt.run(None, f), steps)
        base = base or ort_s
        torch_s = time_it(lambda f=feeds: reference(f), max(3, steps // 4)) if reference else None
        per_stream = 1 / ort_s
        torch_cols = (f"{torch_s * 1e3:9.2f} {torch_s / ort_s:10.2f}" if torch_s
                      else f"{'-':>9} {'-':>10}")
        print(f"{batch:>3} {ort_s * 1e3:12.2f} {batch * per_stream:10.1f} {per_stream:13.1f} "
              f"{batch * base / ort_s:6.2f} {ort_s / TOKEN_SECONDS:11.3f} {torch_cols}")
    bench_audio(pack, config, steps)


def bench_audio(pack: ModelPack, config: RuntimeConfig, steps: int, tokens: int = 64) -> None:
    c = pack.constants
    decoder = create_session(pack.graph("decoder", "fp32")[0], config)
    vocos = create_session(pack.graph("vocos", "fp32")[0], config)
    hidden = np.random.default_rng(1).normal(size=(1, tokens, c["hidden_size"]))
    mel = decoder.run(None, {"hidden": hidden.astype(np.float32)})[0]
    dec_s = time_it(lambda: decoder.run(None, {"hidden": hidden.astype(np.float32)}), steps)
    voc_s = time_it(lambda: vocos.run(None, {"mel": mel}), steps)
    audio_s = tokens * TOKEN_SECONDS
    print(f"audio side, {tokens} tokens ({audio_s:.2f} s): decoder {dec_s * 1e3:.1f} ms, "
          f"vocos {voc_s * 1e3:.1f} ms, RTF {(dec_s + voc_s) / audio_s:.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pack", type=Path, help="tiny (or any) pack; built if absent")
    parser.add_argument("--real-pack", type=Path, help="a --random-real pack")
    parser.add_argument("--past", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=0, help="ORT intra-op threads (0: all)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        pack = args.pack
        if pack is None:
            from export.chattts import build_tiny

            pack = Path(tmp) / "chattts"
            build_tiny(pack)
        bench_pack("tiny" if args.pack is None else str(pack), pack, args.past, args.steps,
                   args.threads)
        if args.real_pack:
            bench_pack("random-real", args.real_pack, args.past, max(5, args.steps // 2),
                       args.threads)


if __name__ == "__main__":
    main()
