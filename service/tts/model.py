"""The ChatTTS pack's graphs behind typed calls, and its constants from the manifest.

Only this module and the engine's worker threads touch these sessions. Names and shapes
follow docs/chattts-pack.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnxruntime as ort

from service.runtime.packs import ModelPack
from service.runtime.sessions import GraphRunner, RuntimeConfig, open_graph, resolve_provider
from service.tts.sampler_graph import GraphSampler
from service.tts.sampling import SamplingParams

GRAPHS = ("embed_text", "embed_code", "gpt", "head_text", "decoder", "vocos")


@dataclass(frozen=True)
class SamplingDefaults:
    temperature: float
    top_p: float
    top_k: int
    repetition_penalty: float
    repetition_window: int
    max_new_token: int
    min_new_token: int

    @classmethod
    def from_manifest(cls, raw: dict[str, Any]) -> SamplingDefaults:
        return cls(
            temperature=float(raw["temperature"]), top_p=float(raw["top_p"]),
            top_k=int(raw["top_k"]), repetition_penalty=float(raw["repetition_penalty"]),
            repetition_window=int(raw.get("repetition_window", 16)),
            max_new_token=int(raw["max_new_token"]), min_new_token=int(raw["min_new_token"]),
        )

    def params(self, *, temperature: float | None = None, top_p: float | None = None,
               top_k: int | None = None, min_new_tokens: int | None = None,
               greedy: bool = False) -> SamplingParams:
        return SamplingParams(
            temperature=self.temperature if temperature is None else temperature,
            top_p=self.top_p if top_p is None else top_p,
            top_k=self.top_k if top_k is None else top_k,
            repetition_penalty=self.repetition_penalty, window=self.repetition_window,
            min_new_tokens=self.min_new_token if min_new_tokens is None else min_new_tokens,
            greedy=greedy,
        )


@dataclass(frozen=True)
class TTSConstants:
    sample_rate: int
    samples_per_token: int
    hidden_size: int
    num_layers: int
    num_heads: int
    head_dim: int
    num_vq: int
    num_audio_tokens: int
    audio_eos: int
    spk_emb_dim: int
    max_position_embeddings: int
    refine_eos_token_id: int
    code: SamplingDefaults
    refine: SamplingDefaults

    @classmethod
    def from_manifest(cls, c: dict[str, Any]) -> TTSConstants:
        return cls(
            sample_rate=int(c["sample_rate"]),
            samples_per_token=int(c.get("samples_per_token", 2 * int(c["hop_length"]))),
            hidden_size=int(c["hidden_size"]), num_layers=int(c["num_layers"]),
            num_heads=int(c["num_heads"]), head_dim=int(c["head_dim"]),
            num_vq=int(c["num_vq"]), num_audio_tokens=int(c["num_audio_tokens"]),
            audio_eos=int(c["audio_eos"]), spk_emb_dim=int(c["spk_emb_dim"]),
            max_position_embeddings=int(c["max_position_embeddings"]),
            refine_eos_token_id=int(c["refine_eos_token_id"]),
            code=SamplingDefaults.from_manifest(c["sampling"]["code"]),
            refine=SamplingDefaults.from_manifest(c["sampling"]["refine"]),
        )


@dataclass(frozen=True)
class GptOutput:
    hidden: np.ndarray
    """[B, T, H] final hidden states."""
    code_logits: np.ndarray
    """[B, 4, 626] from the last position."""
    presents: list[np.ndarray]
    """2L arrays [B, h, P+T, d]: key 0, value 0, key 1, ..."""


class TTSGraphs:
    """Typed calls into the pack's ONNX sessions."""

    def __init__(self, runners: dict[str, GraphRunner], constants: TTSConstants,
                 sampler: GraphSampler | None = None) -> None:
        self.runners = runners
        self.c = constants
        self.sampler = sampler
        """Token sampling in an ORT session on the GPT's device (service/tts/
        sampler_graph.py); None: numpy on the host (service/tts/sampling.py)."""
        self.provider = runners["gpt"].provider
        self.device_id = runners["gpt"].device_id
        layers = range(constants.num_layers)
        self.past_names = [n for i in layers for n in (f"past_key_{i}", f"past_value_{i}")]
        self.present_names = [
            n for i in layers for n in (f"present_key_{i}", f"present_value_{i}")
        ]

    @classmethod
    def open(cls, pack: ModelPack, precision: str, runtime: RuntimeConfig,
             sampler: str = "auto") -> TTSGraphs:
        """`sampler`: `graph` (the device's session), `host` (numpy) or `auto`: the graph on
        CUDA, where numpy's sort and sums would hold every step on one host core (0.6 ms
        a step for 8 sequences on this project's CPU), numpy on CPU, where it is cheaper."""
        runners = {}
        for name in GRAPHS:
            path, _ = pack.graph(name, precision if precision in pack.precisions(name)
                                 else "fp32")
            runners[name] = open_graph(path, runtime)
        provider = resolve_provider(runtime.provider, log_fallback=False)
        graph = sampler == "graph" or (sampler == "auto" and provider == "cuda")
        return cls(runners, TTSConstants.from_manifest(pack.constants),
                   GraphSampler(provider, runtime.device_id) if graph else None)

    def embed_text(self, input_ids: np.ndarray, spk_emb: np.ndarray) -> np.ndarray:
        out = self.runners["embed_text"].run(
            {"input_ids": input_ids.astype(np.int64), "spk_emb": spk_emb.astype(np.float32)}
        )
        return out["inputs_embeds"]

    def embed_code(self, codes: np.ndarray) -> np.ndarray:
        return self.runners["embed_code"].run({"codes": codes.astype(np.int64)})["inputs_embeds"]

    def empty_past(self, batch: int) -> list[np.ndarray]:
        shape = (batch, self.c.num_heads, 0, self.c.head_dim)
        return [np.zeros(shape, np.float32) for _ in self.past_names]

    def gpt(self, embeds: np.ndarray, mask: np.ndarray, positions: np.ndarray,
            past: Sequence[np.ndarray]) -> GptOutput:
        feeds = {"inputs_embeds": embeds, "attention_mask": mask, "position_ids": positions}
        feeds.update(zip(self.past_names, past, strict=True))
        out = self.runners["gpt"].run(feeds)
        return GptOutput(out["hidden"], out["code_logits"],
                         [out[n] for n in self.present_names])

    def gpt_bound(self, embeds: np.ndarray, mask: np.ndarray, positions: np.ndarray,
                  past: Sequence[ort.OrtValue], device: str,
                  device_id: int = 0) -> tuple[np.ndarray, np.ndarray, list[ort.OrtValue]]:
        """`gpt` through IO binding: the past is bound where it lives and the presents stay
        on `device` as OrtValues, so a CUDA decode step moves no cache over PCIe; only the
        new embeddings in and the hidden state and logits out."""
        session = self.runners["gpt"].session
        binding = session.io_binding()
        binding.bind_cpu_input("inputs_embeds", np.ascontiguousarray(embeds, np.float32))
        binding.bind_cpu_input("attention_mask", np.ascontiguousarray(mask, np.int64))
        binding.bind_cpu_input("position_ids", np.ascontiguousarray(positions, np.int64))
        for name, value in zip(self.past_names, past, strict=True):
            binding.bind_ortvalue_input(name, value)
        binding.bind_output("hidden", "cpu")
        binding.bind_output("code_logits", "cpu")
        for name in self.present_names:
            binding.bind_output(name, device, device_id)
        session.run_with_iobinding(binding)
        outputs = binding.get_outputs()  # in binding order
        return outputs[0].numpy(), outputs[1].numpy(), list(outputs[2:])

    def head_text(self, hidden: np.ndarray) -> np.ndarray:
        return self.runners["head_text"].run({"hidden": hidden})["text_logits"]

    def waveform(self, hidden: np.ndarray) -> np.ndarray:
        """[B, N, H] hidden states of N audio tokens -> [B, samples] (decoder, then vocos)."""
        mel = self.runners["decoder"].run({"hidden": hidden.astype(np.float32)})["mel"]
        return self.runners["vocos"].run({"mel": mel})["waveform"]
