"""A stream's utterance result started before the end-pointer has confirmed its end.

The end-pointer knows an utterance is over only after `min_silence_ms` of silence, but
its audio (speech plus `padding_ms` after it) is complete `min_silence_ms - padding_ms`
earlier (300 ms with the defaults). Computing it from then hides that wait behind the
model's own time, the way voice agents start a reply before the end of a turn is certain.
The work is the same call on the same samples as the confirmed utterance's, so the result
is too; when the speech goes on instead, the work is cancelled (in a batcher's queue it
costs nothing; a batch already running finishes for nothing) and counted as wasted.

At most one is in flight per stream: the open utterance's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, Generic, Literal, TypeVar

from service.live.vad import Utterance

T = TypeVar("T")

EarlyOutcome = Literal["used", "wasted"]
"""The `outcome` label of audioserve_live_early_emotion_total."""


def _key(utterance: Utterance) -> tuple[int, int, int]:
    return utterance.index, utterance.start, utterance.end


def _retrieve(task: asyncio.Task[Any]) -> None:
    """Read a dropped task's error, if any: whoever takes the task sees it again; nobody
    else needs asyncio's "exception was never retrieved"."""
    if not task.cancelled():
        task.exception()


class EarlyStart(Generic[T]):
    def __init__(self, start: Callable[[Utterance, float], Coroutine[Any, Any, T]],
                 count: Callable[[EarlyOutcome], None]) -> None:
        """`start(utterance, received_at)`: the work, run as a task (`received_at`: when
        the audio that completed the utterance arrived); `count(outcome)` when it is
        settled."""
        self._start = start
        self._count = count
        self._key: tuple[int, int, int] | None = None
        self._task: asyncio.Task[T] | None = None

    def offer(self, ending: Utterance | None, received_at: float) -> None:
        """After each analysis step: the open utterance if its audio is complete
        (`Found.ending`). A new one is started; one that is no longer ending (the speech
        went on) is cancelled."""
        if ending is not None and _key(ending) == self._key:
            return
        self.drop()
        if ending is not None:
            self._key, self._task = _key(ending), asyncio.create_task(
                self._start(ending, received_at))
            self._task.add_done_callback(_retrieve)

    def take(self, utterance: Utterance) -> asyncio.Task[T] | None:
        """The work started for this (now confirmed) utterance, if it was; the caller
        then `settle`s it."""
        if self._task is None or _key(utterance) != self._key:
            return None
        task, self._key, self._task = self._task, None, None
        return task

    def settle(self, task: asyncio.Task[T], used: bool) -> None:
        """Count a taken task; one that will not be used (its utterance was skipped) is
        cancelled."""
        if not used:
            task.cancel()
        self._count("used" if used else "wasted")

    def drop(self) -> None:
        """Cancel the work in flight, if any (the speech went on, or the stream ends)."""
        task, self._key, self._task = self._task, None, None
        if task is not None:
            task.cancel()
            self._count("wasted")
