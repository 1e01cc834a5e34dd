"""Calibration and evaluation inputs: one feed dict per item, as the service would build it.

Audio comes from a folder of files decoded with the service's own decoder and
preprocessing (CLAP: 48 kHz, 10 s windows, the numpy log-mel front-end; Emotion2Vec+:
16 kHz waveform chunks), so calibration sees exactly what serving sees; without a folder,
generated signals (tones, glides, noise bursts at varied loudness) stand in. Text comes
from a list of prompts tokenised with the pack's own tokenizer.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from service.audio import clap_features as cf
from service.audio.decode import decode_audio
from service.pipelines.clap_text import PromptTokenizer
from service.runtime.packs import ModelPack

Feed = dict[str, np.ndarray]
AUDIO_SUFFIXES = {".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".aac", ".webm"}
LABELS = ["dog barking", "rain on a roof", "a violin", "church bells", "footsteps",
          "a helicopter", "people talking", "a door knock", "birds singing", "a car horn",
          "typing on a keyboard", "thunder", "a crying baby", "glass breaking", "wind",
          "an engine idling"]
PROMPTS = [f"This is a sound of {label}." for label in LABELS]


@dataclass(frozen=True)
class AudioSource:
    """Where audio items come from: a folder of files, or `count` generated signals."""

    folder: Path | None = None
    count: int = 16
    seconds: float = 3.0
    seed: int = 0

    def describe(self) -> str:
        if self.folder is not None:
            return f"folder {self.folder} (first {self.count} files, <= {self.seconds:g} s)"
        return f"generated({self.count} x {self.seconds:g} s, seed={self.seed})"


def generated_signal(rate: int, seconds: float, rng: np.random.Generator) -> np.ndarray:
    """A varied non-silent test signal: harmonics with a glide, AM, a noise burst."""
    t = np.arange(int(rate * seconds)) / rate
    f0 = rng.uniform(80, 1000) * (1 + rng.uniform(-0.5, 0.5) * t / seconds)
    voice = sum(np.sin(2 * np.pi * k * np.cumsum(f0) / rate) / k for k in range(1, 6))
    envelope = 0.6 + 0.4 * np.sin(2 * np.pi * rng.uniform(0.5, 6) * t)
    noise = rng.standard_normal(t.size) * rng.uniform(0.02, 0.5)
    burst = np.zeros_like(t)
    start = int(rng.integers(0, max(1, t.size // 2)))
    width = min(t.size // 4, t.size - start)
    burst[start: start + width] = rng.standard_normal(width)
    gain = 10 ** (rng.uniform(-30, -3) / 20)
    return (gain * (envelope * voice / 3 + noise + 0.5 * burst)).astype(np.float32)


def audio_clips(source: AudioSource, rate: int) -> list[np.ndarray]:
    """Mono float32 clips at `rate`: decoded files (sorted, first `count`) or generated."""
    if source.folder is None:
        rng = np.random.default_rng(source.seed)
        return [generated_signal(rate, source.seconds * rng.uniform(0.5, 1.0), rng)
                for _ in range(source.count)]
    files = sorted(p for p in source.folder.iterdir() if p.suffix.lower() in AUDIO_SUFFIXES)
    if not files:
        raise SystemExit(f"calibration folder {source.folder} holds no audio files")
    return [decode_audio(p.read_bytes(), target_rate=rate, max_seconds=source.seconds,
                         on_long="truncate").samples for p in files[: source.count]]


def prompts_from(path: Path | None) -> list[str]:
    if path is None:
        return PROMPTS
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    return [line for line in lines if line]


# -- per-graph items --------------------------------------------------------------------

def clap_audio_items(pack: ModelPack, source: AudioSource) -> list[Feed]:
    mel = cf.MelConfig.from_constants(pack.constants)
    items = []
    for clip in audio_clips(source, mel.sample_rate):
        span = cf.select_windows(cf.plan_windows(clip, mel))[0]
        items.append({"input_features": cf.window_features(clip, span, mel)[None]})
    return items


def clap_waveform_items(pack: ModelPack, source: AudioSource) -> list[Feed]:
    """The waveform graph's items: each clip's first used window, padded as served."""
    mel = cf.MelConfig.from_constants(pack.constants)
    items = []
    for clip in audio_clips(source, mel.sample_rate):
        span = cf.select_windows(cf.plan_windows(clip, mel))[0]
        wav = cf.pad_short(clip[span.start:span.end], mel)[None]
        item: Feed = {"waveform": wav}
        if mel.fusion:  # rows of a clip of at most 10 s: the window's own log-mel
            item.update(long_features=np.zeros((1, 4, mel.frames, mel.n_mels), np.float32),
                        is_longer=np.zeros((1, 1), bool), use_waveform=np.ones((1, 1), bool))
        items.append(item)
    return items


def clap_text_items(pack: ModelPack, prompts: list[str]) -> list[Feed]:
    c = pack.constants
    tok = PromptTokenizer(pack.file("tokenizer"), max_length=int(c["text_max_length"]),
                          pad_id=int(c["pad_token_id"]))
    return [{"input_ids": ids[None], "attention_mask": np.ones((1, len(ids)), np.int64)}
            for ids in tok.encode(prompts)]


def emotion2vec_items(pack: ModelPack, source: AudioSource) -> list[Feed]:
    rate = int(pack.constants["sample_rate"])
    return [{"waveform": clip[None], "lengths": np.array([len(clip)], np.int64)}
            for clip in audio_clips(source, rate)]


def graph_items(pack: ModelPack, graph: str, source: AudioSource,
                prompts: list[str]) -> list[Feed]:
    """The items for one graph of a pack (batch dimension 1 each)."""
    prompts = prompts or PROMPTS
    key = (pack.kind, graph)
    if key == ("clap", "audio"):
        return clap_audio_items(pack, source)
    if key == ("clap", "audio_waveform"):
        return clap_waveform_items(pack, source)
    if key == ("clap", "text"):
        return clap_text_items(pack, (prompts * source.count)[: source.count])
    if key == ("emotion2vec", "model"):
        return emotion2vec_items(pack, source)
    if pack.kind == "chattts":
        from quant.chattts_inputs import chattts_items

        return chattts_items(pack, graph, prompts, count=source.count, seed=source.seed)
    raise SystemExit(f"no calibration inputs known for {pack.kind}/{graph}")


# -- batching and hashing ---------------------------------------------------------------

def collate(items: list[Feed], pad_values: dict[str, float]) -> Feed:
    """Concatenate single items along the batch axis, right-padding ragged axes."""
    batch: Feed = {}
    for name in items[0]:
        arrays = [item[name] for item in items]
        shape = np.max([a.shape for a in arrays], axis=0)
        pad = pad_values.get(name, 0.0)
        padded = []
        for a in arrays:
            widths = [(0, int(s - d)) for s, d in zip(shape, a.shape, strict=True)]
            padded.append(np.pad(a, widths, constant_values=pad) if any(w for _, w in widths)
                          else a)
        batch[name] = np.concatenate(padded, axis=0)
    return batch


def items_hash(items: list[Feed]) -> str:
    """sha256 over every item's names, shapes, dtypes and bytes: names a calibration set."""
    digest = hashlib.sha256()
    for item in items:
        for name in sorted(item):
            a = np.ascontiguousarray(item[name])
            digest.update(f"{name}:{a.dtype.str}:{a.shape};".encode())
            digest.update(a.tobytes())
    return digest.hexdigest()


class ItemReader(CalibrationDataReader):
    """onnxruntime's calibration interface over a list of single items."""

    def __init__(self, items: list[Feed]) -> None:
        self._items = items
        self._it: Iterator[Feed] = iter(items)

    def get_next(self) -> Feed | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self._items)
