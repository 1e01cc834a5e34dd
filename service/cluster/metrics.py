"""Prometheus metrics of many replicas in one exposition, each sample labelled `replica`.

Every replica keeps its own registry (`service.runtime.metrics.Metrics`): its batchers' queue
depths, batch sizes, waits and compute times are its own. A scrape of the cluster's
/metrics asks every replica for its families and serves them merged by name, so one
scrape target shows every replica side by side (`sum by (queue)` adds them up again).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

LABEL = "replica"


class _Merged(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        yield from self._families


def merge(sources: Iterable[tuple[str, list[Metric]]]) -> list[Metric]:
    """One family per name, holding the samples of every source, labelled by source."""
    merged: dict[str, Metric] = {}
    for replica, families in sources:
        for family in families:
            into = merged.get(family.name)
            if into is None:
                into = merged[family.name] = Metric(family.name, family.documentation,
                                                    family.type, family.unit)
            into.samples.extend(s._replace(labels={**s.labels, LABEL: replica})
                                for s in family.samples)
    return list(merged.values())


def exposition(sources: Iterable[tuple[str, list[Metric]]]) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Merged(merge(sources)))
    return generate_latest(registry)
