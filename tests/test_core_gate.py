"""The core gate (batcher/gate.py): batches of models that share CPU cores run one per
slot, the oldest due work first. Ordered by events (threading gates), never by sleeps."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from batcher import BatchConfig, CoreGate, DynamicBatcher, due_since
from service.pipelines import loader
from tests.clap_fixtures import clap_models_dir  # noqa: F401  (fixtures)
from tests.conftest import HANG_S, running_app
from tests.emotion2vec_fixtures import emotion_models_dir  # noqa: F401
from tests.live_fixtures import live_models_dir  # noqa: F401


def test_a_free_slot_goes_to_the_waiter_due_the_longest() -> None:
    async def main() -> list[str]:
        gate = CoreGate(1)
        granted: list[str] = []
        await gate.acquire(due=100.0)  # the slot is busy

        async def wait(name: str, due: float) -> None:
            await gate.acquire(due)
            granted.append(name)
            gate.release()

        waiters = [asyncio.create_task(wait(name, due))
                   for name, due in (("late", 3.0), ("oldest", 1.0), ("middle", 2.0),
                                     ("middle-after", 2.0))]
        await asyncio.sleep(0)
        assert gate.waiting == 4 and gate.busy == 1
        gate.release()
        await asyncio.gather(*waiters)
        assert gate.busy == 0
        return granted

    assert asyncio.run(main()) == ["oldest", "middle", "middle-after", "late"]


def test_a_cancelled_waiter_holds_no_slot_and_is_skipped() -> None:
    async def main() -> None:
        gate = CoreGate(1)
        await gate.acquire(due=0.0)
        gone = asyncio.create_task(gate.acquire(due=1.0))
        kept = asyncio.create_task(gate.acquire(due=2.0))
        await asyncio.sleep(0)
        gone.cancel()
        with pytest.raises(asyncio.CancelledError):
            await gone
        gate.release()
        await asyncio.wait_for(kept, HANG_S)
        assert gate.busy == 1  # `kept` holds it; `gone` took nothing
        # granted and cancelled before it resumed: the slot passes on, not lost
        granted_late = asyncio.create_task(gate.acquire(due=3.0))
        after = asyncio.create_task(gate.acquire(due=4.0))
        await asyncio.sleep(0)
        gate.release()  # grants `granted_late`...
        granted_late.cancel()  # ...which is cancelled before it runs
        with pytest.raises(asyncio.CancelledError):
            await granted_late
        await asyncio.wait_for(after, HANG_S)
        assert gate.busy == 1

    asyncio.run(main())


def test_a_gate_needs_a_slot() -> None:
    with pytest.raises(ValueError, match="at least one slot"):
        CoreGate(0)


class Recorder:
    """Batch functions of several models writing into one log; each call can be held."""

    def __init__(self) -> None:
        self.log: list[tuple[str, list[int]]] = []
        self.running = 0
        self.most_at_once = 0
        self.hold = threading.Event()
        self.hold.set()
        self.entered = threading.Event()
        self._lock = threading.Lock()

    def model(self, name: str) -> Any:
        def batch_fn(items: list[int]) -> list[int]:
            with self._lock:
                self.log.append((name, list(items)))
                self.running += 1
                self.most_at_once = max(self.most_at_once, self.running)
            self.entered.set()
            try:
                if not self.hold.wait(HANG_S):
                    raise RuntimeError("never released")
                time.sleep(0.002)  # long enough for the other workers to try to overlap
                return [i * 10 for i in items]
            finally:
                with self._lock:
                    self.running -= 1
        return batch_fn


def test_a_batch_of_another_model_due_earlier_gets_the_core_first() -> None:
    """CLAP holds the one core; a CLAP window queued now and an utterance due since a
    second ago wait: the utterance runs next, though it was submitted last."""
    rec = Recorder()

    async def main() -> None:
        gate = CoreGate(1)
        config = BatchConfig(max_batch_size=4, max_wait_ms=0, workers=2, core_slots=1)
        clap = DynamicBatcher(rec.model("clap"), config, name="clap", gate=gate)
        emotion = DynamicBatcher(rec.model("emotion"), config, name="emotion", gate=gate)
        clap.start()
        emotion.start()
        try:
            rec.hold.clear()
            first = asyncio.create_task(clap.submit(1))
            while not rec.entered.is_set():
                await asyncio.sleep(0.001)
            window = asyncio.create_task(clap.submit(2))
            for _ in range(5):
                await asyncio.sleep(0)
            with due_since(time.monotonic() - 1.0):
                utterance = asyncio.create_task(emotion.submit(3))
            while gate.waiting < 2:
                await asyncio.sleep(0.001)
            rec.hold.set()
            assert await asyncio.wait_for(asyncio.gather(first, window, utterance),
                                          HANG_S) == [10, 20, 30]
        finally:
            rec.hold.set()
            await clap.close()
            await emotion.close()

    asyncio.run(main())
    assert rec.log == [("clap", [1]), ("emotion", [3]), ("clap", [2])]
    assert rec.most_at_once == 1


def test_batches_of_all_models_never_compute_on_more_slots_than_the_gate_has() -> None:
    rec = Recorder()

    async def main() -> list[int]:
        gate = CoreGate(2)
        config = BatchConfig(max_batch_size=2, max_wait_ms=0, workers=2, core_slots=2)
        batchers = [DynamicBatcher(rec.model(f"m{k}"), config, name=f"m{k}", gate=gate)
                    for k in range(3)]
        for b in batchers:
            b.start()
        try:
            return list(await asyncio.wait_for(asyncio.gather(
                *(batchers[i % 3].submit(i) for i in range(60))), HANG_S))
        finally:
            for b in batchers:
                await b.close()

    assert asyncio.run(main()) == [i * 10 for i in range(60)]
    assert {name for name, _ in rec.log} == {"m0", "m1", "m2"}
    assert rec.most_at_once <= 2


def test_on_cpu_the_analysis_models_share_one_gate_of_a_slot_per_core(
        monkeypatch: pytest.MonkeyPatch, live_models_dir: Path) -> None:  # noqa: F811
    monkeypatch.setattr(loader, "cpu_cores", lambda: 2)
    with running_app(models_dir=live_models_dir, provider="cpu", warmup=False) as client:
        queues = client.app.state.seam.queues  # type: ignore[attr-defined]
        gate = client.app.state.seam.core_gate  # type: ignore[attr-defined]
        assert gate is not None and gate.slots == 2
        shared = {name: q for name, q in queues.items() if q._gate is gate}
        assert {"clap_audio", "clap_text", "emotion2vec"} <= set(shared)
        assert all(queues[name].config.workers == 2 for name in ("clap_audio", "emotion2vec"))
    with running_app(models_dir=live_models_dir, provider="cpu", warmup=False,
                     cpu_core_gate=False) as client:
        assert client.app.state.seam.core_gate is None  # type: ignore[attr-defined]
        assert all(q._gate is None for q in client.app.state.seam.queues.values())  # type: ignore[attr-defined]
