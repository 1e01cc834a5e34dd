"""Shared CLAP test fixtures: the tiny pack exported once per session, test clips, and the
PyTorch reference path (transformers ClapFeatureExtractor + ClapModel) configured from
the pack's own constants."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from service.runtime.packs import ModelPack, load_pack

SR = 48_000
WINDOW = 10 * SR


@pytest.fixture(scope="session")
def clap_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models dir holding the tiny CLAP pack at `<dir>/clap`, exported by the real code."""
    from export.clap import build_tiny

    root = tmp_path_factory.mktemp("clap_models")
    build_tiny(root / "clap")
    return root


@pytest.fixture(scope="session")
def clap_pack(clap_models_dir: Path) -> ModelPack:
    return load_pack(clap_models_dir / "clap", expected_kind="clap")


def extractor_from_pack(pack: ModelPack, **overrides: Any) -> Any:
    """transformers' ClapFeatureExtractor with every setting taken from the manifest."""
    from transformers import ClapFeatureExtractor

    c = pack.constants
    kwargs = {
        "feature_size": c["n_mels"],
        "sampling_rate": c["sample_rate"],
        "hop_length": c["hop_length"],
        "max_length_s": c["max_length_samples"] // c["sample_rate"],
        "fft_window_size": c["n_fft"],
        "padding_value": c["padding_value"],
        "frequency_min": c["f_min"],
        "frequency_max": c["f_max"],
        "top_db": c["top_db"],
        "truncation": c["truncation"],
        "padding": c["padding"],
    }
    kwargs.update(overrides)
    return ClapFeatureExtractor(**kwargs)


def make_clip(seconds: float, seed: int, *, amplitude: float = 0.2) -> np.ndarray:
    """A deterministic non-silent clip: a few tones with a wobbling envelope plus noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * SR)) / SR
    freqs = rng.uniform(80, 8000, size=3)
    tones = sum(np.sin(2 * np.pi * f * t + rng.uniform(0, 6)) for f in freqs)
    envelope = 0.6 + 0.4 * np.sin(2 * np.pi * rng.uniform(0.2, 2.0) * t)
    noise = rng.standard_normal(t.size) * 0.3
    clip = amplitude * envelope * (tones / 3 + noise)
    return clip.astype(np.float32)


def wav_bytes(samples: np.ndarray, rate: int = SR) -> bytes:
    """Float WAV: decoding gives back exactly these samples."""
    buf = io.BytesIO()
    sf.write(buf, samples, rate, format="WAV", subtype="FLOAT")
    return buf.getvalue()


def reference_windows(n_samples: int) -> list[int]:
    """The deterministic windowing the service documents, re-derived for the reference:
    consecutive 10 s windows, the last aligned to the clip's end."""
    if n_samples <= WINDOW:
        return [0]
    starts = list(range(0, n_samples - WINDOW + 1, WINDOW))
    if starts[-1] + WINDOW < n_samples:
        starts.append(n_samples - WINDOW)
    return starts


@pytest.fixture(scope="session")
def clap_fused_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models dir holding the tiny *fused* CLAP pack at `<dir>/clap`."""
    from export.clap import build_tiny

    root = tmp_path_factory.mktemp("clap_fused_models")
    build_tiny(root / "clap", fused=True)
    return root


def middle_choice(candidates: Any) -> Any:
    """Stands in for np.random.choice inside ClapFeatureExtractor's fusion crops: the
    middle candidate, the service's deterministic rule."""
    return candidates[len(candidates) // 2]
