"""The decode batch's KV cache: joins left-pad, leaves compact and trim, strategies agree."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from service.tts.kv_cache import BatchKVCache, DeviceKVCache, PreallocatedKVCache, RowCache

LAYERS, HEADS, DIM = 2, 2, 3


def row(name: str, length: int, seed: int) -> RowCache:
    rng = np.random.default_rng(seed)
    return RowCache(name, tuple(rng.standard_normal((1, HEADS, length, DIM)).astype(np.float32)
                                for _ in range(2 * LAYERS)))


def step(cache: BatchKVCache, seed: int) -> list[np.ndarray]:
    """What the gpt graph would return: the past with one new column appended."""
    rng = np.random.default_rng(seed)
    new = [rng.standard_normal((cache.size, HEADS, 1, DIM)).astype(np.float32)
           for _ in range(2 * LAYERS)]
    presents = [np.concatenate([p, n], axis=2) for p, n in zip(cache.past(), new, strict=True)]
    cache.advance(presents, cache.step_mask())
    return new


def valid(cache: BatchKVCache, name: str, layer: int) -> np.ndarray:
    """A row's unpadded keys/values, in order."""
    i = cache.row(name)
    return cache.past()[layer][i][:, cache.mask[i].astype(bool)]


@pytest.mark.parametrize("kind", ["present", "preallocated"])
def test_join_step_leave_keeps_every_rows_own_cache(kind: str) -> None:
    cache = (BatchKVCache(LAYERS, HEADS, DIM) if kind == "present"
             else PreallocatedKVCache(LAYERS, HEADS, DIM, max_rows=4, max_len=32))
    a = row("a", 3, 0)
    cache.join([a])
    new1 = step(cache, 1)
    b, c = row("b", 6, 2), row("c", 2, 3)
    cache.join([b, c])  # b is longer than the batch: the batch gets left-padded
    assert cache.ids == ["a", "b", "c"] and cache.length == 6
    assert cache.mask.tolist() == [[0, 0, 1, 1, 1, 1], [1] * 6, [0, 0, 0, 0, 1, 1]]
    new2 = step(cache, 4)
    expect_a = np.concatenate([a.layers[1][0], new1[1][0], new2[1][0]], axis=1)
    np.testing.assert_array_equal(valid(cache, "a", 1), expect_a)

    cache.remove(["b"])  # the longest row leaves: two all-padding columns go too
    assert cache.ids == ["a", "c"] and cache.length == 5
    np.testing.assert_array_equal(valid(cache, "a", 1), expect_a)
    expect_c = np.concatenate([c.layers[3][0], new2[3][2]], axis=1)  # c was row 2
    np.testing.assert_array_equal(valid(cache, "c", 3), expect_c)
    cache.remove(["a", "c", "unknown"])
    assert cache.size == 0 and cache.length == 0


def test_steady_state_steps_copy_nothing() -> None:
    cache = BatchKVCache(LAYERS, HEADS, DIM)
    cache.join([row("a", 4, 0), row("b", 2, 1)])
    copies = cache.copies
    for seed in range(5):
        presents_before = cache.past()
        step(cache, seed)
        assert cache.past()[0] is not presents_before[0]  # adopted, not copied into
    assert cache.copies == copies


class _Graphs:
    """What DeviceKVCache needs of TTSGraphs: `gpt_bound` appending one new column per
    layer (seeded), the presents returned as OrtValues like the real graph's."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.new: list[np.ndarray] = []

    def gpt_bound(self, embeds: np.ndarray, mask: np.ndarray, positions: np.ndarray,
                  past: list[Any], device: str, device_id: int = 0) -> tuple[Any, Any, list[Any]]:
        n = mask.shape[0]
        self.new = [self.rng.standard_normal((n, HEADS, 1, DIM)).astype(np.float32)
                    for _ in range(2 * LAYERS)]
        presents = [ort.OrtValue.ortvalue_from_numpy(np.concatenate([p.numpy(), c], axis=2))
                    for p, c in zip(past, self.new, strict=True)]
        return np.zeros((n, 1, 4), np.float32), np.zeros((n, 4, 5), np.float32), presents


def _host_step(cache: BatchKVCache, new: list[np.ndarray]) -> None:
    presents = [np.concatenate([p, c], axis=2) for p, c in zip(cache.past(), new, strict=True)]
    cache.advance(presents, cache.step_mask())


def test_device_cache_joins_and_leaves_on_the_device_exactly() -> None:
    """The same joins, steps and leaves on the host cache and on the device cache (here
    OrtValues on CPU, through the same edit graphs CUDA runs): identical arrays, and the
    device cache never comes back to the host for a membership change."""
    host = BatchKVCache(LAYERS, HEADS, DIM)
    device = DeviceKVCache(LAYERS, HEADS, DIM, "cpu")
    graphs = _Graphs(7)
    no_input = np.zeros((0,), np.float32)

    def step() -> None:
        device.decode(graphs, no_input, no_input)  # type: ignore[arg-type]
        _host_step(host, graphs.new)

    for cache in (host, device):
        cache.join([row("a", 3, 0)])
    step()
    for cache in (host, device):
        cache.join([row("b", 6, 2), row("c", 2, 3)])  # longer than the batch, and shorter
    step()
    step()
    for cache in (host, device):
        cache.remove(["b"])  # the longest leaves: leading all-padding columns go
    step()
    for cache in (host, device):
        cache.join([row("d", 1, 4)])
    step()
    for cache in (host, device):
        cache.remove(["a"])
    assert device.ids == host.ids == ["c", "d"]
    np.testing.assert_array_equal(device.mask, host.mask)
    assert device.host_round_trips == 0
    for got, want in zip(device.host_layers(), host.past(), strict=True):
        np.testing.assert_array_equal(got, want)
    assert device.copies == host.copies
    for cache in (host, device):
        cache.remove(["c", "d"])
    assert device.size == 0 and device.length == 0
