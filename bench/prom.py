"""Reading the service's Prometheus text: snapshots, deltas between two, and the figures the
report wants (batch-size histogram, queue wait, rejections) for one run.

A run is measured as (metrics after) - (metrics before), so warm-up and earlier runs on the
same server never leak into a point.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

Key = tuple[str, tuple[tuple[str, str], ...]]


def snapshot(text: str) -> dict[Key, float]:
    values: dict[Key, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            values[(s.name, tuple(sorted(s.labels.items())))] = float(s.value)
    return values


def delta(before: dict[Key, float], after: dict[Key, float]) -> dict[Key, float]:
    return {k: v - before.get(k, 0.0) for k, v in after.items()}


@dataclass(frozen=True)
class QueueFigures:
    """One batcher queue over one run."""

    queue: str
    batches: int
    items: int
    mean_batch: float
    batch_histogram: dict[str, int]  # "<=le" bucket -> batches in it (non-cumulative)
    mean_wait_ms: float
    p99_wait_ms: float  # upper bound of the bucket holding the 99th percentile
    rejections: dict[str, int]


def _histogram(d: dict[Key, float], name: str, value: str,
               label: str = "queue") -> list[tuple[float, float]]:
    rows = []
    for (metric, labels), count in d.items():
        lab = dict(labels)
        if metric == f"{name}_bucket" and lab.get(label) == value:
            rows.append((float(lab["le"]), count))
    return sorted(rows)


def count_over(d: dict[Key, float], name: str, bound: float, label: str,
               values: tuple[str, ...]) -> float:
    """Observations of histogram `name` whose `label` is one of `values` that are above
    `bound` (one of its bucket bounds)."""
    total = 0.0
    for value in values:
        buckets = dict(_histogram(d, name, value, label))
        if buckets:
            total += buckets[math.inf] - buckets[bound]
    return total


@dataclass(frozen=True)
class RouteTime:
    """Server-side request time of one route (RequestContextMiddleware), over one run."""

    route: str
    requests: int
    mean_ms: float
    p99_bound_ms: float  # upper bound of the bucket holding the 99th percentile


def route_time(d: dict[Key, float], route: str) -> RouteTime:
    count = sum(v for (m, lab), v in d.items()
                if m == "audioserve_request_seconds_count" and dict(lab).get("route") == route)
    total = sum(v for (m, lab), v in d.items()
                if m == "audioserve_request_seconds_sum" and dict(lab).get("route") == route)
    buckets = _histogram(d, "audioserve_request_seconds", route, label="route")
    return RouteTime(route, round(count), 1000 * total / count if count else math.nan,
                     1000 * _quantile_bound(buckets, 0.99))


def _scalar(d: dict[Key, float], name: str, queue: str) -> float:
    return sum(v for (m, labels), v in d.items()
               if m == name and dict(labels).get("queue") == queue)


def _quantile_bound(buckets: list[tuple[float, float]], q: float) -> float:
    if not buckets or buckets[-1][1] <= 0:
        return math.nan
    total = buckets[-1][1]
    for le, cumulative in buckets:
        if cumulative >= q * total:
            return le
    return math.inf


def queues(d: dict[Key, float]) -> list[str]:
    return sorted({dict(labels)["queue"] for (m, labels), v in d.items()
                   if m == "audioserve_batch_size_count" and v > 0})


def queue_figures(d: dict[Key, float], queue: str) -> QueueFigures:
    sizes = _histogram(d, "audioserve_batch_size", queue)
    histogram: dict[str, int] = {}
    previous = 0.0
    for le, cumulative in sizes:
        if cumulative - previous > 0:
            label = "+Inf" if math.isinf(le) else f"{le:g}"
            histogram[label] = round(cumulative - previous)
        previous = cumulative
    batches = _scalar(d, "audioserve_batch_size_count", queue)
    items = _scalar(d, "audioserve_batch_size_sum", queue)
    waits = _histogram(d, "audioserve_queue_wait_seconds", queue)
    wait_count = _scalar(d, "audioserve_queue_wait_seconds_count", queue)
    wait_sum = _scalar(d, "audioserve_queue_wait_seconds_sum", queue)
    rejections: dict[str, int] = defaultdict(int)
    for (metric, labels), value in d.items():
        lab = dict(labels)
        if metric == "audioserve_rejections_total" and lab.get("queue") == queue and value:
            rejections[lab.get("reason", "?")] += round(value)
    return QueueFigures(
        queue=queue, batches=round(batches), items=round(items),
        mean_batch=items / batches if batches else math.nan, batch_histogram=histogram,
        mean_wait_ms=1000 * wait_sum / wait_count if wait_count else math.nan,
        p99_wait_ms=1000 * _quantile_bound(waits, 0.99), rejections=dict(rejections),
    )


def all_queue_figures(before_text: str, after_text: str) -> list[QueueFigures]:
    if not before_text or not after_text:
        return []
    d = delta(snapshot(before_text), snapshot(after_text))
    return [queue_figures(d, q) for q in queues(d)]
