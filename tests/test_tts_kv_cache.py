"""The decode batch's KV cache: joins left-pad, leaves compact and trim, strategies agree."""

from __future__ import annotations

import numpy as np
import pytest

from service.tts.kv_cache import BatchKVCache, PreallocatedKVCache, RowCache

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
