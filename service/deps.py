"""FastAPI dependencies: the route's way to the app's state (no module singletons)."""

from __future__ import annotations

import time
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, TypeVar

from fastapi import Request

from service.admission import AdmissionGate, CpuWorkers
from service.errors import ModelNotLoaded
from service.metrics import Metrics
from service.settings import Settings
from service.uploads import AudioInput, body_kind, check_audio_size, parse_audio_body

if TYPE_CHECKING:
    from service.routes.params import UploadParams

P = TypeVar("P", bound="UploadParams")


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


async def read_upload(request: Request, settings: Settings, params: type[P]
                      ) -> tuple[AudioInput, P]:
    """The whole upload read (under the body limits), then parsed and its fields
    validated in the CPU pool: none of that work runs on the event loop."""
    kind = body_kind(request)
    body = await request.body()
    cpu: CpuWorkers = request.app.state.cpu
    return await cpu.run(_parse_upload, kind, request.headers["content-type"], body,
                         settings, params)


def _parse_upload(kind: str, content_type: str, body: bytes, settings: Settings,
                  params: type[P]) -> tuple[AudioInput, P]:
    form = parse_audio_body(kind, content_type, body)
    check_audio_size(form, settings)
    return form, params.from_input(form, settings)
