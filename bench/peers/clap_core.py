"""The CLAP classify work every peer server does, built from the service's own pieces.

Peers must differ from audioserve only in how they queue, batch and serve, so the request
parsing result, the decode (service.audio.decode.decode_audio), the windowing and log-mel front-end
(service.audio.clap_features), the tokenizer, the ONNX sessions (service.runtime.sessions, same
threads) and the scoring are the service's own functions. Text embeddings of a label set are cached
per prompt, as the service's LRU cache does once warm.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from service.audio import clap_features as cf
from service.audio.decode import decode_audio
from service.pipelines.clap import softmax
from service.pipelines.clap_text import PromptTokenizer, pad_batch
from service.runtime.packs import load_pack
from service.runtime.sessions import GraphRunner, RuntimeConfig, create_session

MAX_SECONDS = 120.0  # the service's classify_max_seconds default
MAX_BYTES = 25 * 1024 * 1024


@dataclass(frozen=True)
class Prepared:
    """One request after CPU preprocessing: its windows' features and its labels."""

    features: list[np.ndarray]
    labels: list[str]
    duration_s: float


class ClapCore:
    def __init__(self, pack_dir: Path, threads: int = 0) -> None:
        pack = load_pack(pack_dir, expected_kind="clap")
        runtime = RuntimeConfig("auto", 0, threads)
        self.audio = GraphRunner(create_session(pack.graph("audio", "fp32")[0], runtime))
        self.text = GraphRunner(create_session(pack.graph("text", "fp32")[0], runtime))
        c = pack.constants
        self.mel = cf.MelConfig.from_constants(c)
        self.template = str(c["prompt_template"])
        self.logit_scale = float(c["logit_scale"])
        self.tokenizer = PromptTokenizer(pack.file("tokenizer"),
                                         max_length=int(c["text_max_length"]),
                                         pad_id=int(c["pad_token_id"]))
        self._text_cache: dict[str, np.ndarray] = {}

    def prepare(self, audio: bytes, labels: list[str]) -> Prepared:
        decoded = decode_audio(audio, target_rate=self.mel.sample_rate, max_seconds=MAX_SECONDS,
                               on_long="truncate", max_bytes=MAX_BYTES)
        spans = cf.select_windows(cf.plan_windows(decoded.samples, self.mel))
        features = [cf.window_features(decoded.samples, s, self.mel) for s in spans]
        return Prepared(features, labels, decoded.duration_s)

    def embed_windows(self, features: list[np.ndarray]) -> np.ndarray:
        return self.audio.run({"input_features": np.stack(features)})["audio_embeds"]

    def text_embeddings(self, labels: list[str]) -> np.ndarray:
        prompts = [self.template.format(label=label) for label in labels]
        missing = [p for p in dict.fromkeys(prompts) if p not in self._text_cache]
        if missing:
            ids, mask = pad_batch(self.tokenizer.encode(missing), self.tokenizer.pad_id)
            rows = self.text.run({"input_ids": ids, "attention_mask": mask})["text_embeds"]
            self._text_cache.update(zip(missing, rows, strict=True))
        return np.stack([self._text_cache[p] for p in prompts])

    def classify_batch(self, items: list[Prepared]) -> list[dict[str, Any]]:
        """One audio-graph call for every window of every request in the batch."""
        rows = self.embed_windows([f for item in items for f in item.features])
        out, at = [], 0
        for item in items:
            windows = rows[at:at + len(item.features)].astype(np.float64)
            at += len(item.features)
            mean = windows.mean(axis=0)
            embedding = mean / max(np.linalg.norm(mean), 1e-12)
            out.append(self.score(embedding, item))
        return out

    def score(self, embedding: np.ndarray, item: Prepared) -> dict[str, Any]:
        texts = self.text_embeddings(item.labels).astype(np.float64)
        similarity = texts @ embedding
        probs = softmax(similarity * self.logit_scale)
        order = np.argsort(-probs, kind="stable")
        return {"labels": [{"label": item.labels[i], "probability": float(probs[i]),
                            "similarity": float(similarity[i])} for i in order],
                "duration_s": round(item.duration_s, 4), "windows_used": len(item.features)}


def labels_from_form(values: list[Any]) -> list[str]:
    """Repeated `labels` fields as they are; one field split on commas (as the service)."""
    texts = [str(v) for v in values]
    return texts[0].split(",") if len(texts) == 1 else texts


def peer_arguments(doc: str | None) -> argparse.ArgumentParser:
    """The options every peer server takes, so that both are tuned alike."""
    p = argparse.ArgumentParser(description=(doc or "").splitlines()[0])
    p.add_argument("--pack", type=Path, required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--wait-ms", type=float, default=5.0)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--workers", type=int, default=1, help="server processes / replicas")
    p.add_argument("--timeout-s", type=float, default=30.0)
    return p
