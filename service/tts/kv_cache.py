"""The decode batch's KV cache: one left-padded [rows, heads, P, head_dim] array per layer.

Design note (what is copied, and when)
--------------------------------------
The `gpt` graph takes the past as `[B, h, P, d]` per layer and returns the full present
`[B, h, P+1, d]` (its Concat is the one copy the graph contract imposes). The cheapest
cache that contract allows is to feed each step's present back as the next step's past,
unchanged: in steady state numpy copies nothing at all. A preallocated
`[L, 2, max_active, h, max_len, d]` buffer with in-place column writes looks cheaper but is
not here: `[n, h, 0:P, d]` is not contiguous for n > 1, so ORT would get a fresh copy of
the whole used cache every step (on top of the graph's own Concat); `bench/bench_tts_engine.py`
measures both (`PreallocatedKVCache` below is that alternative).

Copies happen only when the batch's membership changes, at most twice per step and
batched over every row that joins or leaves in it:
- join: new rows (each prefilled alone, so prefill is exact) are left-padded to the
  batch's length (or the batch to theirs) and stacked under it;
- leave: finished or aborted rows are dropped with one `take`, and leading columns that
  are padding in every remaining row are trimmed at the same time;
- park: a paused row is copied out without its padding (`take`, then a leave) and joins
  again later like a prefilled row. Its columns are exactly its own past, so a row that
  was parked decodes on as if it never left (the mask hides padding either way).
Left padding keeps each row's own positions (`position_ids` count real tokens) and the
mask hides the pad columns, so a row's logits do not depend on its batch-mates.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import onnxruntime as ort

from service.tts.cache_editor import CacheEditor

if TYPE_CHECKING:
    from service.tts.model import TTSGraphs


STEP, MEMBERSHIP = "step", "membership"


@dataclass(frozen=True)
class RowCache:
    """One sequence's cache straight from its prefill: 2L arrays [1, h, p, d]."""

    request_id: str
    layers: tuple[np.ndarray, ...]

    @property
    def length(self) -> int:
        return int(self.layers[0].shape[2])


def _left_pad(array: np.ndarray, columns: int) -> np.ndarray:
    if columns == 0:
        return array
    pad = np.zeros((*array.shape[:2], columns, array.shape[3]), dtype=array.dtype)
    return np.concatenate([pad, array], axis=2)


class BatchKVCache:
    """Rows in batch order; `feeds` and `advance` form one decode step's round trip."""

    def __init__(self, num_layers: int, num_heads: int, head_dim: int) -> None:
        self.num_layers = num_layers
        self._shape = (num_heads, head_dim)
        self.ids: list[str] = []
        self.layers: list[np.ndarray] = []
        self.mask = np.zeros((0, 0), dtype=np.int64)
        self.copies = 0
        """Whole-cache copies made so far (joins and leaves), for the benchmark."""
        self.copy_s = {STEP: 0.0, MEMBERSHIP: 0.0}
        """Seconds spent moving cache data outside the graph: in every decode step, and
        when rows join or leave (including uploads to the device after a change)."""

    @contextmanager
    def _timed(self, bucket: str = MEMBERSHIP) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.copy_s[bucket] += time.perf_counter() - t0

    @property
    def size(self) -> int:
        return len(self.ids)

    @property
    def length(self) -> int:
        return int(self.mask.shape[1])

    def row(self, request_id: str) -> int:
        return self.ids.index(request_id)

    def past(self) -> list[np.ndarray]:
        return self.layers

    def step_mask(self) -> np.ndarray:
        """Attention mask for one decode step: the past's mask plus the new token."""
        return np.concatenate([self.mask, np.ones((self.size, 1), np.int64)], axis=1)

    def advance(self, presents: Sequence[np.ndarray], step_mask: np.ndarray) -> None:
        """Adopt a decode step's presents as the cache (no copy)."""
        self.layers = list(presents)
        self.mask = step_mask

    def decode(self, graphs: TTSGraphs, embeds: np.ndarray,
               positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One batched decode step over this cache: (hidden [n, 1, H], code logits)."""
        mask = self.step_mask()
        out = graphs.gpt(embeds, mask, positions, self.past())
        self.advance(out.presents, mask)
        return out.hidden, out.code_logits

    def join(self, rows: Sequence[RowCache]) -> None:
        """Append prefilled rows below the batch, left-padding whichever side is shorter."""
        if not rows:
            return
        with self._timed():
            self._join(rows)

    def _join(self, rows: Sequence[RowCache]) -> None:
        length = max([self.length, *(r.length for r in rows)])
        if self.size:
            self.copies += 1
        new_layers = []
        for i in range(2 * self.num_layers):
            parts = [] if self.size == 0 else [_left_pad(self.layers[i], length - self.length)]
            parts += [_left_pad(r.layers[i], length - r.length) for r in rows]
            new_layers.append(parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0))
        self.layers = new_layers
        self._join_rows(rows, length)

    def _join_rows(self, rows: Sequence[RowCache], length: int) -> None:
        """The mask and ids of a join to `length` columns (the layers are the caller's)."""
        masks = [_left_pad(self.mask[:, None, :, None], length - self.length)[:, 0, :, 0]]
        for r in rows:
            masks.append(np.concatenate(
                [np.zeros((1, length - r.length), np.int64), np.ones((1, r.length), np.int64)],
                axis=1,
            ))
        self.mask = np.concatenate(masks, axis=0)
        self.ids += [r.request_id for r in rows]

    def take(self, request_ids: Sequence[str]) -> list[RowCache]:
        """Copy rows out without their left padding (to join again later), then drop them."""
        rows = []
        if request_ids:
            with self._timed():
                layers = self._host_layers()
                for rid in request_ids:
                    i = self.row(rid)
                    start = int(np.argmax(self.mask[i])) if self.mask[i].any() else self.length
                    rows.append(RowCache(rid, tuple(np.ascontiguousarray(a[i:i + 1, :, start:])
                                                    for a in layers)))
        self.remove(request_ids)
        return rows

    def _host_layers(self) -> list[np.ndarray]:
        """The cache as host arrays [rows, h, P, d], one per layer and key/value."""
        return self.layers

    def remove(self, request_ids: Sequence[str]) -> None:
        """Drop rows; trim leading columns that are padding in every remaining row."""
        gone = set(request_ids) & set(self.ids)
        if not gone:
            return
        with self._timed():
            self._remove(gone)

    def _remove(self, gone: set[str]) -> None:
        keep, start = self._remove_rows(gone)
        if not keep:
            self.layers = []
            return
        self.layers = [np.ascontiguousarray(a[keep, :, start:]) for a in self.layers]
        self.copies += 1

    def _remove_rows(self, gone: set[str]) -> tuple[list[int], int]:
        """The mask and ids after `gone` leave; returns (rows kept, first column kept)."""
        keep = [i for i, rid in enumerate(self.ids) if rid not in gone]
        self.ids = [self.ids[i] for i in keep]
        if not keep:
            self.mask = np.zeros((0, 0), np.int64)
            return [], 0
        mask = self.mask[keep]
        used = np.flatnonzero(mask.any(axis=0))
        start = int(used[0]) if used.size else mask.shape[1]
        self.mask = np.ascontiguousarray(mask[:, start:])
        return keep, start


class PreallocatedKVCache(BatchKVCache):
    """The alternative measured by the benchmark: a fixed buffer, new columns written in place.

    Rows live in columns [start, cursor) of a `[2L, max_rows, h, max_len, d]` buffer; a step
    writes only its new key/value column at `cursor` (compacting to column 0 when the
    buffer's end is reached). But `past()` must hand ORT contiguous `[n, h, P, d]` arrays,
    which for n > 1 means copying the used part of the buffer every step.
    """

    def __init__(self, num_layers: int, num_heads: int, head_dim: int,
                 max_rows: int, max_len: int) -> None:
        super().__init__(num_layers, num_heads, head_dim)
        self._buffer = np.zeros((2 * num_layers, max_rows, num_heads, max_len, head_dim),
                                np.float32)
        self._cursor = 0

    def _used(self) -> list[np.ndarray]:
        n, start = self.size, self._cursor - self.length
        return [np.ascontiguousarray(self._buffer[i, :n, :, start:self._cursor])
                for i in range(2 * self.num_layers)]

    def _host_layers(self) -> list[np.ndarray]:
        return self._used()

    def past(self) -> list[np.ndarray]:
        with self._timed(STEP):
            return self._used()

    def advance(self, presents: Sequence[np.ndarray], step_mask: np.ndarray) -> None:
        n = self.size
        if self._cursor == self._buffer.shape[3]:
            self._store(self._used())  # compaction: the used columns move to the front
        with self._timed(STEP):
            for i, present in enumerate(presents):
                self._buffer[i, :n, :, self._cursor] = present[:, :, -1]
        self._cursor += 1
        self.mask = step_mask

    def _store(self, layers: Sequence[np.ndarray]) -> None:
        n, p = self.size, self.length
        if p > self._buffer.shape[3]:
            raise RuntimeError("preallocated KV cache is full")
        with self._timed():
            for i, layer in enumerate(layers):
                self._buffer[i, :n, :, :p] = layer
        self._cursor = p

    def join(self, rows: Sequence[RowCache]) -> None:
        with self._timed():
            self.layers = self._used() if self.size else []
        super().join(rows)
        self._store(self.layers)
        self.layers = []

    def remove(self, request_ids: Sequence[str]) -> None:
        with self._timed():
            self.layers = self._used()
        super().remove(request_ids)
        self._store(self.layers)
        self.layers = []


class DeviceKVCache(BatchKVCache):
    """For CUDA: the cache lives on the device as OrtValues and each step's presents are
    bound as the next step's past (IO binding), so steady-state decode moves no cache
    between host and device. Joins and leaves are edited there too (`CacheEditor`): only
    the joining rows' prefill cache is uploaded, and nothing comes back. The host holds
    the cache only before its first decode step (the first rows, joined as numpy)."""

    def __init__(self, num_layers: int, num_heads: int, head_dim: int, device: str,
                 device_id: int = 0) -> None:
        super().__init__(num_layers, num_heads, head_dim)
        self.device = device
        self.device_id = device_id
        self._values: list[ort.OrtValue] | None = None
        self._editor: CacheEditor | None = None
        self.host_round_trips = 0
        """Times the whole cache came to the host (the benchmark and tests watch it: 0)."""

    def decode(self, graphs: TTSGraphs, embeds: np.ndarray,
               positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mask = self.step_mask()
        if self._values is None:
            with self._timed():
                self._values = self._upload(self.layers)
            self.layers = []
        hidden, logits, self._values = graphs.gpt_bound(embeds, mask, positions,
                                                        self._values, self.device,
                                                        self.device_id)
        self.mask = mask
        return hidden, logits

    def _upload(self, arrays: Sequence[np.ndarray]) -> list[ort.OrtValue]:
        return [ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(a), self.device,
                                                 self.device_id) for a in arrays]

    def _edits(self) -> CacheEditor:
        if self._editor is None:
            assert self._values is not None
            self._editor = CacheEditor(len(self._values), self._values[0].data_type(),
                                       self.device, self.device_id)
        return self._editor

    def _host_layers(self) -> list[np.ndarray]:
        """A paused row leaves through the host: one counted round trip (pauses are rare,
        joins and leaves stay on the device)."""
        return self.host_layers()

    def join(self, rows: Sequence[RowCache]) -> None:
        if not rows:
            return
        if self._values is None:  # still on the host: numpy, uploaded at the next step
            super().join(rows)
            return
        with self._timed():
            width = max(r.length for r in rows)
            block = [np.concatenate([_left_pad(r.layers[i], width - r.length) for r in rows])
                     for i in range(2 * self.num_layers)]
            length = max(self.length, width)
            self._values = self._edits().join(self._values, self._upload(block), self.length,
                                              width)
            self._join_rows(rows, length)
            self.copies += 1

    def remove(self, request_ids: Sequence[str]) -> None:
        gone = set(request_ids) & set(self.ids)
        if not gone:
            return
        if self._values is None:
            super().remove(request_ids)
            return
        with self._timed():
            keep, start = self._remove_rows(gone)
            self._values = self._edits().keep(self._values, keep, start) if keep else None
            self.copies += 1

    def host_layers(self) -> list[np.ndarray]:
        """The cache as numpy, wherever it lives (tests and debugging; counted)."""
        if self._values is None:
            return list(self.layers)
        self.host_round_trips += 1
        return [np.array(v.numpy()) for v in self._values]
