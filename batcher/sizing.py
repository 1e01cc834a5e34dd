"""Learns the batch size that gives a batch function the most items per second.

Why: `max_batch_size` is a bound, not a target. On a GPU a forward pass of 8 costs little
more than one of 1, so the largest batch wins; on a CPU the same graph can get slower *per
item* as the batch grows (CLAP's audio graph on 2 cores: 17.1 windows/s at batch 1, 13.9
at batch 8, as activations fall out of cache), and a fixed cap then makes batching cost
throughput. The sizer keeps a running cost per unit of work for each rung of a ladder of
sizes (1, 2, 4, ..., max) and caps batches at the cheapest rung; of rungs within
`tolerance` of it, the smallest, since at the same cost per item a smaller batch answers
its first items sooner. Every `explore_every` capped batches it tries a neighbouring rung, so
the table follows the machine and the load instead of trusting one early measurement.

Which items share a batch never changes a result when the graphs are batch-invariant (the
packs record it), so the cap is a pure throughput decision.
"""

from __future__ import annotations


def ladder(max_size: int) -> list[int]:
    """Powers of two below `max_size`, then `max_size` itself."""
    rungs = []
    size = 1
    while size < max_size:
        rungs.append(size)
        size *= 2
    return [*rungs, max_size]


class BatchSizer:
    """The cap on the next batch, learnt from measured batch times.

    `observe` takes every executed batch; only batches whose size is a rung enter the
    table. Costs are seconds per unit of real work, the items' lengths summed, so batches
    of different lengths compare and the padding a batch computes counts as its cost: for
    items of mixed lengths a larger batch pays for padding that a smaller one does not.
    """

    def __init__(self, max_size: int, *, explore_every: int = 16, tolerance: float = 0.05,
                 smoothing: float = 0.3) -> None:
        if max_size < 1 or explore_every < 2 or tolerance < 0 or not 0 < smoothing <= 1:
            raise ValueError("invalid batch sizer settings")
        self.rungs = ladder(max_size)
        self.explore_every = explore_every
        self.tolerance = tolerance
        self.smoothing = smoothing
        self._cost: dict[int, float] = {}
        self._limit = max_size
        self._capped = 0
        self._explore_up = False

    @property
    def limit(self) -> int:
        """The batch size the batcher fills up to (and dispatches at once when reached)."""
        return self._limit

    def costs(self) -> dict[int, float]:
        """Seconds per unit by rung, as measured so far."""
        return dict(sorted(self._cost.items()))

    def size_for(self, queued: int) -> int:
        """How many of `queued` items the next batch takes."""
        if queued <= self._limit:
            return queued
        self._capped += 1
        if self._capped % self.explore_every:
            return self._limit
        self._explore_up = not self._explore_up
        return min(queued, self._neighbour(up=self._explore_up))

    def observe(self, size: int, units: int, seconds: float) -> None:
        """Record one executed batch of `size` items holding `units` of real work."""
        if size not in self.rungs or units <= 0 or seconds <= 0:
            return
        cost = seconds / units
        old = self._cost.get(size)
        self._cost[size] = cost if old is None else old + self.smoothing * (cost - old)
        self._limit = self._best()

    def _best(self) -> int:
        """The smallest measured rung within `tolerance` of the cheapest; the configured
        maximum until two rungs have been measured."""
        if len(self._cost) < 2:
            return self.rungs[-1]
        cheapest = min(self._cost.values())
        return min(r for r, c in self._cost.items() if c <= cheapest * (1 + self.tolerance))

    def _neighbour(self, *, up: bool) -> int:
        i = self.rungs.index(self._limit)
        if up and i + 1 < len(self.rungs):
            return self.rungs[i + 1]
        if i > 0:
            return self.rungs[i - 1]
        return self.rungs[min(i + 1, len(self.rungs) - 1)]
