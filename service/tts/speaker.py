"""ChatTTS speakers: seeded random speakers as upstream samples them, and `spk_emb` strings.

Seeded speakers. Upstream users pick a voice by `torch.manual_seed(seed)` then
`chat.sample_random_speaker()`: `torch.randn(768, dtype=float16) * std + mean`, all in
float16 (ChatTTS 0.2.5 `model/speaker.py`). Torch's CPU `randn` for half draws float32
normals and rounds them, and its float32 normals come from MT19937 (seeded like numpy's
legacy `RandomState(seed)`), 24-bit uniforms and a Box-Muller transform over blocks of 16
(the first 8 of a block give the radius, the last 8 the angle; a tail shorter than 16
recomputes the last 16 values from fresh draws). `torch_randn` reproduces that in numpy.
Torch evaluates log/cos/sin with SIMD code whose last float32 bit sometimes differs from
numpy's, so about 1 seed in 100 gives a speaker with one or two elements one float16 step
away from upstream's (measured: 992 of 1000 seeds bit-identical with the real spk_stat);
the others are bit-identical. Seeds are taken modulo 2**32, as torch's generator does.

`spk_emb` strings: base16384 text of raw LZMA2 (preset 9 | extreme) of float16 bytes,
exactly upstream's `Speaker._encode`, so strings move freely between this service and
ChatTTS users.
"""

from __future__ import annotations

import lzma
from dataclasses import dataclass

import numpy as np
import pybase16384 as b14

from service.errors import PackError
from service.runtime.packs import ModelPack

_LZMA_FILTERS = [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME}]
MAX_SPK_EMB_CHARS = 8192  # a 768-d speaker encodes to ~1,100 characters


@dataclass(frozen=True)
class SpeakerStats:
    """Per-dimension std and mean of speaker embeddings (float16, as upstream keeps them)."""

    std: np.ndarray
    mean: np.ndarray

    @property
    def dim(self) -> int:
        return int(self.std.shape[0])


def load_spk_stat(pack: ModelPack) -> SpeakerStats:
    path = pack.file("spk_stat")
    stat = np.load(path).astype(np.float16).reshape(-1)
    dim = int(pack.constants.get("spk_emb_dim", stat.shape[0] // 2))
    if stat.shape[0] != 2 * dim:
        raise PackError(f"{path}: {stat.shape[0]} values, expected 2 x spk_emb_dim = {2 * dim}")
    return SpeakerStats(std=stat[:dim].copy(), mean=stat[dim:].copy())


def _box_muller_16(uniform: np.ndarray) -> np.ndarray:
    """16 uniforms -> 16 normals, torch's `normal_fill_16` layout, float32 arithmetic."""
    u1 = np.float32(1.0) - uniform[:8]
    radius = np.sqrt(np.float32(-2.0) * np.log(u1))
    theta = np.float32(2.0 * np.pi) * uniform[8:]
    return np.concatenate([radius * np.cos(theta), radius * np.sin(theta)]).astype(np.float32)


def torch_randn(seed: int, size: int) -> np.ndarray:
    """`torch.manual_seed(seed); torch.randn(size)` on CPU, in numpy (float32; see the note)."""
    if size < 16:  # torch then draws each value with its own Box-Muller pair
        raise ValueError("torch_randn reproduces sizes >= 16 only")
    bits = np.random.MT19937(0)
    bits._legacy_seeding(seed % 2**32)  # init_genrand(seed), as torch's CPU generator
    tail = 16 if size % 16 else 0
    raw = bits.random_raw(size + tail)
    uniform = (raw & 0xFFFFFF).astype(np.float32) * np.float32(2.0**-24)
    out = uniform[:size].copy()
    for start in range(0, size - 15, 16):
        out[start : start + 16] = _box_muller_16(out[start : start + 16])
    if tail:
        out[size - 16 :] = _box_muller_16(uniform[size:])
    return out


def sample_speaker(stats: SpeakerStats, seed: int) -> np.ndarray:
    """The speaker `torch.manual_seed(seed); chat.sample_random_speaker()` gives, as float32
    holding float16 values: randn rounded to half, then `* std` and `+ mean` in half."""
    normal = torch_randn(seed, stats.dim).astype(np.float16)
    scaled = (normal.astype(np.float32) * stats.std.astype(np.float32)).astype(np.float16)
    spk = (scaled.astype(np.float32) + stats.mean.astype(np.float32)).astype(np.float16)
    return spk.astype(np.float32)


def encode_spk_emb(spk: np.ndarray) -> str:
    """Upstream's `spk_emb` string of a speaker vector (rounded to float16)."""
    data = np.asarray(spk).astype("<f2").tobytes()
    return b14.encode_to_string(lzma.compress(data, format=lzma.FORMAT_RAW,
                                              filters=_LZMA_FILTERS))


def decode_spk_emb(text: str, dim: int) -> np.ndarray:
    """An upstream `spk_emb` string -> float32 [dim] (float16 values). ValueError if it is
    not one; decompression is capped, so a crafted string cannot inflate memory."""
    if not isinstance(text, str) or not text or len(text) > MAX_SPK_EMB_CHARS:
        raise ValueError(f"expected a non-empty string of at most {MAX_SPK_EMB_CHARS} chars")
    try:
        packed = b14.decode_from_string(text)
        canonical = b14.encode_to_string(packed) == text
        inflater = lzma.LZMADecompressor(format=lzma.FORMAT_RAW, filters=_LZMA_FILTERS)
        raw = inflater.decompress(packed, max_length=2 * dim + 1)
    except (lzma.LZMAError, ValueError, TypeError, UnicodeError) as exc:
        raise ValueError(f"not a base16384/LZMA2 speaker string ({exc})") from None
    if not canonical:  # characters outside base16384's alphabet, or a stray tail
        raise ValueError("not a base16384 string (it does not re-encode to itself)")
    if len(raw) != 2 * dim or not inflater.eof:
        raise ValueError(f"decodes to {len(raw)} bytes (or more), expected {dim} float16 values")
    if inflater.unused_data:
        raise ValueError(f"{len(inflater.unused_data)} bytes follow the LZMA2 stream")
    spk = np.frombuffer(raw, dtype="<f2").astype(np.float32)
    if not np.all(np.isfinite(spk)):
        raise ValueError("speaker embedding holds non-finite values")
    return spk


def mix_speakers(parts: list[tuple[np.ndarray, float]]) -> np.ndarray:
    """Weighted mean of speaker embeddings, rounded to float16 like every upstream speaker.
    (The model L2-normalises the speaker, so only the weights' ratios matter.)"""
    if not parts:
        raise ValueError("no speakers to mix")
    weights = np.array([w for _, w in parts], dtype=np.float64)
    if not (np.all(np.isfinite(weights)) and np.all(weights > 0)):
        raise ValueError("mix weights must be finite and > 0")
    stack = np.stack([np.asarray(s, dtype=np.float64) for s, _ in parts])
    mixed = ((weights[:, None] * stack).sum(0) / weights.sum()).astype(np.float16)
    if not np.all(np.isfinite(mixed)):
        raise ValueError("the mix is not finite in float16")
    return mixed.astype(np.float32)
