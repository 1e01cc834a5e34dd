"""CLAP's log-mel (ClapFeatureExtractor's) as an ONNX front-end, and the waveform graphs
built by putting it in front of an audio graph.

Design note. The front-end runs where the model runs (the GPU, when there is one), so a
request costs the host only its decode and window padding. It uses only ops that ONNX
Runtime's CUDA execution provider has kernels for (read from its kernel registrations:
there is no CUDA kernel for ONNX's DFT or STFT, only CPU ones, and the CUDA-only
`com.microsoft.Rfft` has no CPU kernel), so no node falls back to the CPU and costs two
device copies:
- reflect-centred framing: the n_fft/2 mirrored samples at each end are two `Gather`s
  with constant indices, then `Concat`; zero-padded to a whole number of hops, the signal
  is `Reshape`d into hop-long chunks and frame t is chunks t, t+1, ... side by side
  (`Slice` + `Concat`), so no [frames, n_fft] index table is stored;
- the DFT is one `MatMul` against a fixed basis [n_fft, 2K] (periodic Hann folded in; cos
  and -sin columns) holding only the K bins the mel bank weighs (50 Hz - 14 kHz of the
  hub's config: 297 of 513), the power spectrum is `Mul` of that with itself, and the
  mel bank is a second `MatMul` against the bank stacked twice ([2K, n_mels]: re^2 and
  im^2 summed by the product);
- floor (`Max`), dB (`Log`, `Mul`), and top_db when the checkpoint sets one.
The DFT and everything after it run in float64: an fp32 MatMul DFT leaks a loud tone into
far bins at the ~-150 dB level, which put a quiet 440 Hz sine's top mel bands 3.2e-3 dB
off the extractor (measured; the host's float32 FFT: 1.0e-3), and on CUDA fp32 MatMul
runs as TF32 unless told not to. In float64 the graph matches the extractor's own float64
path. The front-end therefore stays outside fp16/int8 conversion: the waveform graph of a
precision is this front-end put in front of that precision's audio graph
(`compose_waveform_graph`), so its HTSAT part is the very graph the host path runs.

Fused checkpoints: their item is 4 mel maps (see service/audio/clap_features.py). The fused
front-end takes the 10 s window and, per row, either tiles its log-mel 4 times (a clip of
at most 10 s) or passes the host's 4 maps through (a longer clip's shrunk mel + crops,
which need the whole clip), chosen by `use_waveform`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from export.clap_waveform import (
    FRONT_END_FILE,
    LOG_MEL,
    OPSET,
    compose_waveform_graph,
    composed_entry,
    log_mel_output,
)


@dataclass(frozen=True)
class FrontEndConfig:
    """The manifest constants the front-end computes with, plus the checkpoint's bank."""

    n_fft: int
    hop_length: int
    max_length_samples: int
    frames: int
    n_mels: int
    sample_rate: int
    mel_floor: float
    db_min_value: float
    top_db: float | None
    fusion: bool
    bank: np.ndarray
    """[n_fft // 2 + 1, n_mels] float64: the extractor's own filter bank."""

    @classmethod
    def from_extractor(cls, constants: Mapping[str, Any], extractor: Any) -> FrontEndConfig:
        """ClapFeatureExtractor uses HTK mels without norm for truncation="fusion", Slaney
        otherwise (see export/clap.py); its constants must say reflect-centred periodic
        Hann and power 2, the only front-end built here."""
        expected = {"window": "hann_periodic", "center": True, "pad_mode": "reflect",
                    "power": 2.0}
        wrong = {k: constants.get(k) for k, v in expected.items() if constants.get(k) != v}
        if wrong:
            raise ValueError(f"no graph front-end for {wrong}")
        fusion = constants["truncation"] == "fusion"
        bank = extractor.mel_filters if fusion else extractor.mel_filters_slaney
        return cls(n_fft=int(constants["n_fft"]), hop_length=int(constants["hop_length"]),
                   max_length_samples=int(constants["max_length_samples"]),
                   frames=int(constants["frames"]), n_mels=int(constants["n_mels"]),
                   sample_rate=int(constants["sample_rate"]),
                   mel_floor=float(constants["mel_floor"]),
                   db_min_value=float(constants["db_min_value"]),
                   top_db=None if constants["top_db"] is None else float(constants["top_db"]),
                   fusion=fusion, bank=np.asarray(bank, np.float64))


def dft_basis(cfg: FrontEndConfig) -> tuple[np.ndarray, np.ndarray]:
    """(basis [n_fft, 2K], bank2 [2K, n_mels]) float64 for the K bins with mel weight."""
    used = np.flatnonzero(cfg.bank.any(axis=1))
    lo, hi = int(used[0]), int(used[-1]) + 1
    n = np.arange(cfg.n_fft, dtype=np.float64)[:, None]
    k = np.arange(lo, hi, dtype=np.float64)[None, :]
    angle = 2.0 * np.pi * n * k / cfg.n_fft
    window = np.hanning(cfg.n_fft + 1)[:-1][:, None]  # periodic, as the extractor's
    basis = np.concatenate([window * np.cos(angle), -window * np.sin(angle)], axis=1)
    bank2 = np.concatenate([cfg.bank[lo:hi], cfg.bank[lo:hi]], axis=0)
    return basis, bank2


class LogMel(nn.Module):
    """waveform [B, max_length_samples] float32 -> log-mel [B, 1, frames, n_mels] float32."""

    def __init__(self, cfg: FrontEndConfig) -> None:
        super().__init__()
        n, half, hop = cfg.max_length_samples, cfg.n_fft // 2, cfg.hop_length
        if n <= half:
            raise ValueError("the window must be longer than n_fft / 2 for reflect padding")
        self.cfg = cfg
        self.frames = 1 + (n + 2 * half - cfg.n_fft) // hop
        if self.frames != cfg.frames:
            raise ValueError(f"{self.frames} frames, the manifest says {cfg.frames}")
        self.pieces = math.ceil(cfg.n_fft / hop)
        self.tail = (self.frames + self.pieces - 1) * hop - (n + 2 * half)
        basis, bank2 = dft_basis(cfg)
        self.register_buffer("left", torch.arange(half, 0, -1))  # x[half], ..., x[1]
        self.register_buffer("right", torch.arange(n - 2, n - 2 - half, -1))
        self.register_buffer("basis", torch.from_numpy(basis))
        self.register_buffer("bank2", torch.from_numpy(bank2))

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        cfg, hop = self.cfg, self.cfg.hop_length
        padded = torch.cat([waveform.index_select(1, self.left), waveform,
                            waveform.index_select(1, self.right)], dim=1)
        padded = nn.functional.pad(padded, (0, self.tail))
        chunks = padded.reshape(-1, self.frames + self.pieces - 1, hop)
        frames = torch.cat([chunks[:, j:j + self.frames, :min(hop, cfg.n_fft - j * hop)]
                            for j in range(self.pieces)], dim=2)
        spectrum = frames.double() @ self.basis
        mel = (spectrum * spectrum) @ self.bank2
        mel = torch.clamp_min(mel, cfg.mel_floor)
        db = (10.0 / math.log(10.0)) * torch.log(torch.clamp_min(mel, cfg.db_min_value))
        if cfg.top_db is not None:
            peak = db.amax(dim=(1, 2), keepdim=True)
            db = torch.maximum(db, peak - cfg.top_db)
        return db.float().unsqueeze(1)


class FusedLogMel(nn.Module):
    """(waveform [B, N], long_features [B, 4, T, M], use_waveform [B, 1] bool) -> the
    fused graph's [B, 4, T, M]: the window's log-mel 4 times, or the host's maps."""

    def __init__(self, cfg: FrontEndConfig) -> None:
        super().__init__()
        self.log_mel = LogMel(cfg)

    def forward(self, waveform: torch.Tensor, long_features: torch.Tensor,
                use_waveform: torch.Tensor) -> torch.Tensor:
        mel = self.log_mel(waveform).expand(-1, 4, -1, -1)
        return torch.where(use_waveform.reshape(-1, 1, 1, 1), mel, long_features)


def export_front_end(cfg: FrontEndConfig, path: Path) -> None:
    """The front-end alone (`waveform` -> `log_mel`), dynamic batch; fused: 3 inputs."""
    gen = torch.Generator().manual_seed(3)
    wav = torch.randn(2, cfg.max_length_samples, generator=gen) * 0.1
    with torch.no_grad():
        if cfg.fusion:
            long = torch.randn(2, 4, cfg.frames, cfg.n_mels, generator=gen)
            use = torch.tensor([[True], [False]])
            torch.onnx.export(
                FusedLogMel(cfg).eval(), (wav, long, use), str(path), dynamo=False,
                opset_version=OPSET, input_names=["waveform", "long_features", "use_waveform"],
                output_names=[LOG_MEL],
                dynamic_axes={n: {0: "batch"} for n in
                              ("waveform", "long_features", "use_waveform", LOG_MEL)},
            )
        else:
            torch.onnx.export(
                LogMel(cfg).eval(), (wav,), str(path), dynamo=False, opset_version=OPSET,
                input_names=["waveform"], output_names=[LOG_MEL],
                dynamic_axes={"waveform": {0: "batch"}, LOG_MEL: {0: "batch"}},
            )


def write_waveform_graph(root: Path, cfg: FrontEndConfig, audio_entry: dict[str, Any],
                         precision: str = "fp32") -> dict[str, Any]:
    """Export the front-end and compose it with one precision of the audio graph; returns
    the manifest entry."""
    front_end = root / FRONT_END_FILE
    export_front_end(cfg, front_end)
    entry = composed_entry(audio_entry, precision, cfg.fusion)
    compose_waveform_graph(front_end, root / audio_entry["file"], root / entry["file"])
    return entry


# -- parity at export ----------------------------------------------------------------------

DB_TOLERANCE = 1e-3
EMBED_TOLERANCE = 1e-4


def parity_clips(cfg: FrontEndConfig) -> list[np.ndarray]:
    """10 s windows: tones with noise at three levels (one with a zero tail, as a padded
    short clip has), plus a quiet pure tone (its top mel bands sit at fp32's rounding
    floor)."""
    rng = np.random.default_rng(5)
    rate, n, clips = cfg.sample_rate, cfg.max_length_samples, []
    t = np.arange(n) / rate
    for gain, silent_tail in ((0.3, 0), (0.05, n // 3), (0.005, 0)):
        tones = sum(np.sin(2 * np.pi * f * t) for f in rng.uniform(80, 8000, 3))
        clip = gain * (tones / 3 + rng.standard_normal(n) * 0.3)
        clip[n - silent_tail:] = 0.0
        clips.append(clip.astype(np.float32))
    clips.append((0.01 * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32))
    return clips


def _session(model: onnx.ModelProto | Path) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    source = str(model) if isinstance(model, Path) else model.SerializeToString()
    return ort.InferenceSession(source, sess_options=options,
                                providers=["CPUExecutionProvider"])


def waveform_feeds(clips: list[np.ndarray], cfg: FrontEndConfig) -> dict[str, np.ndarray]:
    """Feeds of a waveform graph for windows of clips of at most 10 s."""
    wav = np.stack(clips).astype(np.float32)
    if not cfg.fusion:
        return {"waveform": wav}
    rows = len(clips)
    return {"waveform": wav,
            "long_features": np.zeros((rows, 4, cfg.frames, cfg.n_mels), np.float32),
            "is_longer": np.zeros((rows, 1), bool), "use_waveform": np.ones((rows, 1), bool)}


def check_waveform_parity(root: Path, entry: dict[str, Any], audio_file: str,
                          extractor: Any, cfg: FrontEndConfig) -> tuple[float, float]:
    """The waveform graph vs ClapFeatureExtractor (log-mel, dB) and vs the audio graph fed
    the extractor's features (embeddings), batched and alone. Raises above tolerance;
    returns (max dB diff, max embedding diff)."""
    clips = parity_clips(cfg)
    graph = _session(log_mel_output(root / entry["file"]))
    audio = _session(root / audio_file)
    out = graph.run(["audio_embeds", LOG_MEL], waveform_feeds(clips, cfg))
    reference = np.stack([np.asarray(extractor(c, sampling_rate=cfg.sample_rate,
                                               return_tensors="np")["input_features"])[0]
                          for c in clips]).astype(np.float32)
    db = float(np.abs(out[1] - reference).max())
    host_feeds: dict[str, np.ndarray] = {"input_features": reference}
    if cfg.fusion:
        host_feeds["is_longer"] = np.zeros((len(clips), 1), bool)
    host = audio.run(["audio_embeds"], host_feeds)[0]
    embed = float(np.abs(out[0] - host).max())
    alone = max(float(np.abs(graph.run(["audio_embeds"], waveform_feeds([c], cfg))[0][0]
                             - out[0][i]).max()) for i, c in enumerate(clips))
    print(f"clap waveform graph: log-mel vs extractor {db:.2e} dB (tolerance {DB_TOLERANCE:g}), "
          f"embeddings vs host features {embed:.2e}, batched vs alone {alone:.1e}")
    if not (db <= DB_TOLERANCE and embed <= EMBED_TOLERANCE and alone <= EMBED_TOLERANCE):
        raise RuntimeError(f"clap waveform graph parity failed: {db:.3e} dB, embeddings "
                           f"{embed:.3e}, batched vs alone {alone:.3e}")
    return db, embed
