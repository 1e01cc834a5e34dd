"""The ORT session factory's memory behaviour, on the tiny Emotion2Vec+ graph (real export).

A variable-shape graph must give back the CPU arena memory a rare large batch needed,
and its answers must not depend on whether that happened.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from service.runtime.packs import ModelPack
from service.runtime.sessions import GraphRunner, RuntimeConfig, open_graph

pytest_plugins = ("tests.emotion2vec_fixtures",)

CPU = RuntimeConfig(provider="cpu", intra_op_threads=1)


def feeds(batch: int, seconds: float, seed: int = 0) -> dict[str, np.ndarray]:
    n = int(16_000 * seconds)
    wav = np.random.default_rng(seed).standard_normal((batch, n)).astype(np.float32) * 0.1
    return {"waveform": wav, "lengths": np.full(batch, n, np.int64)}


def rss_mb() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * 4096 / 2**20


def graph_path(pack: ModelPack) -> Path:
    return pack.graph("model", "fp32")[0]


def test_only_graphs_with_varying_shapes_release_peaks(emotion_pack: ModelPack) -> None:
    assert open_graph(graph_path(emotion_pack), CPU).release_peaks
    fixed = RuntimeConfig(provider="cpu", intra_op_threads=1, fixed_shapes=True)
    assert not open_graph(graph_path(emotion_pack), fixed).release_peaks
    no_arena = RuntimeConfig(provider="cpu", intra_op_threads=1, cpu_arena=False)
    assert not open_graph(graph_path(emotion_pack), no_arena).release_peaks


def test_a_peak_is_a_call_well_above_the_recent_median(emotion_pack: ModelPack) -> None:
    runner = open_graph(graph_path(emotion_pack), CPU)
    small = {"x": np.zeros(100)}
    assert not any(runner.is_peak(small) for _ in range(GraphRunner.MIN_HISTORY))
    assert not runner.is_peak({"x": np.zeros(200)})  # 2x the median: not yet a peak
    assert runner.is_peak({"x": np.zeros(201)})


def _released_peaks_growth(graph: str) -> tuple[int, float]:
    """Steady batches, then three rare large ones: (peaks released, RSS growth in MB).
    Run in a fresh interpreter: in the suite's process the heap left by earlier tests
    (and pinned malloc thresholds) would be measured along with the arena."""
    runner = open_graph(Path(graph), CPU)
    steady = feeds(4, 3.0)
    for _ in range(GraphRunner.MIN_HISTORY + 4):
        runner.run(steady)
    before = rss_mb()
    big = feeds(8, 12.0, seed=1)
    for _ in range(3):
        runner.run(big)
    return runner.peaks_released, rss_mb() - before


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs Linux /proc")
def test_memory_of_a_rare_large_batch_goes_back(emotion_pack: ModelPack) -> None:
    """Steady 4 x 3 s batches, then three 8 x 12 s ones: measured +236 MB kept without
    release and +37 MB with it; the bound leaves room for allocator noise."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        released, grown = pool.submit(_released_peaks_growth,
                                      str(graph_path(emotion_pack))).result(timeout=300)
    assert released == 3
    assert grown < 100, f"RSS grew {grown:.0f} MB across three released peaks"
    runner = open_graph(graph_path(emotion_pack), CPU)
    for _ in range(GraphRunner.MIN_HISTORY + 4):
        runner.run(feeds(4, 3.0))
    big = feeds(8, 12.0, seed=1)
    released_answer = runner.run(big)
    assert runner.peaks_released == 1
    kept = GraphRunner(runner.session)  # same session, no release: same numbers
    np.testing.assert_array_equal(kept.run(big)["logits"], released_answer["logits"])
