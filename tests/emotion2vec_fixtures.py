"""Shared Emotion2vec test fixtures: the tiny pack exported once per session, FunASR's own
class (imported once: ~15 s), and deterministic clips."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from service.runtime.packs import ModelPack, load_pack
from tests.tools import require_module

SR = 16_000
SPEECH = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "speech"


@pytest.fixture(scope="session")
def emotion_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models dir holding the tiny pack at `<dir>/emotion2vec`, exported by the real code."""
    from export.emotion2vec import build_tiny

    root = tmp_path_factory.mktemp("emotion_models")
    build_tiny(root / "emotion2vec")
    return root


@pytest.fixture(scope="session")
def emotion_pack(emotion_models_dir: Path) -> ModelPack:
    return load_pack(emotion_models_dir / "emotion2vec", expected_kind="emotion2vec")


@pytest.fixture(scope="session")
def funasr_emotion2vec() -> Any:
    """FunASR's own `Emotion2vec` class (test-only dependency: `pip install funasr`)."""
    module = require_module("funasr.models.emotion2vec.model",
                            "the `test` extra's oracle: pip install -e '.[test]'")
    return module.Emotion2vec


@pytest.fixture(scope="session")
def speech_files() -> list[Path]:
    files = sorted(SPEECH.glob("*.flac")) if SPEECH.is_dir() else []
    if not files:
        pytest.skip(f"no real speech clips at {SPEECH}")
    return files


def make_clip(seconds: float, seed: int, *, amplitude: float = 0.2) -> np.ndarray:
    """A deterministic voiced-like clip: a wobbling harmonic tone plus a little noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * SR)) / SR
    f0 = 120 + 40 * rng.random() + 20 * np.sin(2 * np.pi * 3 * t)
    phase = 2 * np.pi * np.cumsum(f0) / SR
    voiced = sum(np.sin(k * phase) / k for k in range(1, 6))
    envelope = 0.6 + 0.4 * np.sin(2 * np.pi * (0.5 + rng.random()) * t)
    clip = amplitude * envelope * voiced / 2 + 0.01 * rng.standard_normal(len(t))
    return clip.astype(np.float32)


def wav_bytes(samples: np.ndarray, rate: int = SR) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples, rate, format="WAV", subtype="FLOAT")
    return buf.getvalue()


def frames_for(samples: int) -> int:
    """The standard wav2vec-style CNN: 400-sample receptive field, 320-sample hop."""
    return max(0, (samples - 400) // 320 + 1)
