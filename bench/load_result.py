"""The result every load generator of the bench returns: wrk (bench/wrk_load.py), the
Python closed loop (bench/closed_loop.py) and the open loop (bench/openloop.py)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class LoadResult:
    """One load run against one endpoint."""

    endpoint: str
    mode: str  # "closed" (wrk, fixed concurrency) or "open" (fixed arrival rate)
    concurrency: int  # connections (closed) or 0 (open)
    rate: float  # offered requests/s (open) or 0 (closed)
    duration_s: float
    requests: int
    status: dict[int, int]
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    retry_after_503: int = 0
    socket_errors: int = 0
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> int:
        return sum(n for s, n in self.status.items() if 200 <= s < 300)

    @property
    def ok_rps(self) -> float:
        return self.ok / self.duration_s if self.duration_s else 0.0

    @property
    def shed(self) -> int:
        return self.status.get(503, 0) + self.status.get(504, 0)

    @property
    def server_errors(self) -> int:
        """5xx other than the intended shedding (503 overloaded, 504 deadline)."""
        return sum(n for s, n in self.status.items() if s >= 500 and s not in (503, 504))

    def non_2xx(self) -> dict[int, int]:
        return {s: n for s, n in sorted(self.status.items()) if not 200 <= s < 300}
