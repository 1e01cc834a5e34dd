"""Everything one `bench/run` measured: what bench/report.py writes and bench/plots.py
draws."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bench.overload import OverloadResult
from bench.raw_ceiling import CeilingPoint
from bench.soak import SoakResult
from bench.sweep import ConfigResult


@dataclass(frozen=True)
class RunResult:
    info: dict[str, Any]
    configs: list[ConfigResult]
    ceilings: dict[str, list[CeilingPoint]]
    units: dict[str, tuple[str, float]]  # endpoint -> (ceiling unit, units per request)
    max_batch_size: int
    overload: OverloadResult | None = None
    soak: SoakResult | None = None
    notes: list[str] = field(default_factory=list)

    def config(self, key: str) -> ConfigResult | None:
        return next((c for c in self.configs if c.key == key and c.sweep), None)

    def endpoints(self) -> list[str]:
        return list(dict.fromkeys(p.load.endpoint for c in self.configs for p in c.sweep))
