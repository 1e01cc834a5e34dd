"""FastAPI dependencies: the route's way to the app's state (no module singletons)."""

from __future__ import annotations

import time
from contextlib import AbstractAsyncContextManager
from typing import Any

from fastapi import Request

from service.errors import ModelNotLoaded
from service.runtime.admission import AdmissionGate
from service.runtime.metrics import Metrics
from service.settings import Settings


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_metrics(request: Request) -> Metrics:
    metrics: Metrics = request.app.state.metrics
    return metrics


def get_pipeline(request: Request, kind: str) -> Any:
    """The loaded pipeline of one model kind, or 503 saying why it is not there (loading,
    failed, or not asked for)."""
    pipelines: dict[str, Any] = request.app.state.pipelines
    pipeline = pipelines.get(kind)
    if pipeline is None:
        loader = getattr(request.app.state, "loader", None)
        if loader is None:
            raise ModelNotLoaded(f"model {kind!r} is not loaded yet: the server is starting",
                                 headers={"Retry-After": "5"})
        status = loader.status()
        loading = kind in status.expected and status.error is None
        raise ModelNotLoaded(status.why_not_loaded(kind, get_settings(request)),
                             headers={"Retry-After": "5"} if loading else None)
    return pipeline


def check_admission(request: Request, kind: str) -> None:
    """Refuse at once (503 + Retry-After) when the model would refuse the request now:
    before its upload is read, so an overloaded model costs a shed client nothing."""
    gate: AdmissionGate = request.app.state.admission[kind]
    gate.check(time.monotonic())


def admit(request: Request, kind: str) -> AbstractAsyncContextManager[float]:
    """`async with admit(request, kind):` holds an in-flight slot and sets the deadline;
    refuses at once (503 + Retry-After) when the model cannot take more. Take it after
    the request is read: a slow client must not hold a slot while it sends."""
    gate: AdmissionGate = request.app.state.admission[kind]
    return gate.admit()
