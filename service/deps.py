"""FastAPI dependencies: the route's way to the app's state (no module singletons)."""

from __future__ import annotations

import time
from contextlib import AbstractAsyncContextManager
from typing import Any

from fastapi import Request

from service.admission import AdmissionGate
from service.errors import ModelNotLoaded
from service.metrics import Metrics
from service.settings import Settings


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_metrics(request: Request) -> Metrics:
    metrics: Metrics = request.app.state.metrics
    return metrics


def get_pipeline(request: Request, kind: str) -> Any:
    """The loaded pipeline of one model kind, or 503 naming what is loaded."""
    pipelines: dict[str, Any] = request.app.state.pipelines
    pipeline = pipelines.get(kind)
    if pipeline is None:
        loaded = ", ".join(sorted(pipelines)) or "none"
        raise ModelNotLoaded(
            f"model {kind!r} is not loaded (loaded: {loaded}); put its pack in "
            f"{request.app.state.settings.models_dir}/{kind} or build it with "
            f"`python -m export {kind} ...`"
        )
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
