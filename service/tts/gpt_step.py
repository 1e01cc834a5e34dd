"""The model half of the TTS engine: one forward pass of ChatTTS's GPT, then sampling.

Why a module of its own: the engine (engine.py) decides *which* rows run and keeps their
bookkeeping; this decides nothing and only turns rows into tokens, so it is the one place
in the engine thread that touches ORT sessions. Exactness lives here: every row is
embedded, positioned and sampled from its own state and seeded generator alone, so a row's
tokens never depend on its batch-mates.
"""

from __future__ import annotations

import numpy as np

from service.tts.jobs import LiveSequence, PassKind
from service.tts.kv_cache import BatchKVCache, RowCache
from service.tts.model import TTSGraphs
from service.tts.sampling import sample_rows

NON_EMPTY_REDRAWS = 16
"""Upstream regenerates when the first token is EOS (`ensure_non_empty`); we redraw it."""

Sampled = tuple[np.ndarray, np.ndarray | None]
"""A row's new token ids (one per codebook, or one text id) and, for audio rows, the hidden
state that predicted them (the decoder's input); None for text rows."""


class GPTStepper:
    """Batched decode steps over a KV cache's rows, and single-sequence prefills."""

    def __init__(self, graphs: TTSGraphs) -> None:
        self.graphs = graphs

    def eos(self, kind: PassKind) -> int:
        c = self.graphs.c
        return c.audio_eos if kind == PassKind.CODE else c.refine_eos_token_id

    def decode(self, lives: list[LiveSequence], cache: BatchKVCache) -> list[Sampled]:
        """One step for every row of `cache`; `lives` are its rows, in its order."""
        g = self.graphs
        embeds = self._last_token_embeds(lives)
        positions = np.array(
            [[live.prompt_len + len(live.tokens) - 1] for live in lives], np.int64
        )
        hidden_all, code_logits = cache.decode(g, embeds, positions)
        hidden = hidden_all[:, -1]
        out: dict[int, Sampled] = {}
        code = [i for i, live in enumerate(lives) if live.job.kind == PassKind.CODE]
        text = [i for i, live in enumerate(lives) if live.job.kind == PassKind.TEXT]
        if code:
            logits = code_logits[code].reshape(len(code) * g.c.num_vq, -1)
            ids = self._sample_rows([lives[i] for i in code], logits)
            for i, row_ids in zip(code, ids, strict=True):
                out[i] = (row_ids, hidden[i])
        if text:
            ids = self._sample_rows([lives[i] for i in text], g.head_text(hidden[text]))
            for i, row_ids in zip(text, ids, strict=True):
                out[i] = (row_ids, None)
        return [out[i] for i in range(len(lives))]

    def prefill(self, live: LiveSequence) -> tuple[Sampled, RowCache]:
        """The prompt of one sequence (B=1: exact, no padding), its first token sampled,
        and the cache rows it joins the batch with."""
        g = self.graphs
        job = live.job
        ids = job.prompt_ids.astype(np.int64)[None]
        spk = (np.zeros(g.c.spk_emb_dim, np.float32) if job.spk_emb is None
               else job.spk_emb.astype(np.float32))
        embeds = g.embed_text(ids, spk[None])
        length = ids.shape[1]
        out = g.gpt(embeds, np.ones((1, length), np.int64),
                    np.arange(length, dtype=np.int64)[None], g.empty_past(1))
        hidden = out.hidden[0, -1]
        if job.kind == PassKind.CODE:
            sampled: Sampled = (self._sample_first(live, out.code_logits[0]), hidden)
        else:
            sampled = (self._sample_first(live, g.head_text(hidden[None])), None)
        return sampled, RowCache(job.request_id, tuple(out.presents))

    def _last_token_embeds(self, lives: list[LiveSequence]) -> np.ndarray:
        """Audio rows through `embed_code`, text rows through `embed_text`: both passes
        share one batch."""
        g = self.graphs
        embeds = np.empty((len(lives), 1, g.c.hidden_size), np.float32)
        code = [i for i, live in enumerate(lives) if live.job.kind == PassKind.CODE]
        text = [i for i, live in enumerate(lives) if live.job.kind == PassKind.TEXT]
        if code:
            codes = np.stack([lives[i].tokens[-1] for i in code])[:, None, :]
            embeds[code] = g.embed_code(codes)
        if text:
            ids = np.array([[int(lives[i].tokens[-1][0])] for i in text], np.int64)
            embeds[text] = g.embed_text(ids, np.zeros((len(text), g.c.spk_emb_dim), np.float32))
        return embeds

    def _sample_rows(self, lives: list[LiveSequence], logits: np.ndarray) -> list[np.ndarray]:
        """One vectorised sampler call for sequences of one kind; a row per codebook."""
        per = logits.shape[0] // len(lives)
        params, steps, uniforms = [], [], []
        for live in lives:
            params += [live.job.params] * per
            steps += [len(live.tokens)] * per
            uniforms.append(np.zeros(per) if live.job.params.greedy else live.rng.random(per))
        histories = np.concatenate([live.history() for live in lives])
        sampler = self.graphs.sampler
        sample = sample_rows if sampler is None else sampler.sample_rows
        ids = sample(logits, histories, params, steps, np.concatenate(uniforms),
                     eos_id=self.eos(lives[0].job.kind))
        return list(ids.reshape(len(lives), per))

    def _sample_first(self, live: LiveSequence, logits: np.ndarray) -> np.ndarray:
        """The first token; drawn again while it is EOS, as upstream's `ensure_non_empty`."""
        eos_id = self.eos(live.job.kind)
        ids = self._sample_rows([live], logits)[0]
        redraws = 0 if live.job.params.greedy else NON_EMPTY_REDRAWS
        while redraws and (ids == eos_id).any():
            ids = self._sample_rows([live], logits)[0]
            redraws -= 1
        return ids
