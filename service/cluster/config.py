"""Cluster settings: replicas and resources per deployment, from `AUDIOSERVE_CLUSTER_*`.

Per deployment (`INGRESS`, `CLAP`, `EMOTION2VEC`, `CHATTTS`), e.g. for CLAP:
`AUDIOSERVE_CLUSTER_CLAP_REPLICAS` (a number, or `auto`: autoscaled on ongoing requests
between `_MIN_REPLICAS` and `_MAX_REPLICAS`, aiming at `_TARGET_ONGOING_REQUESTS` per
replica), `_NUM_GPUS` (a fraction of a GPU, or `auto`), `_NUM_CPUS`,
`_MAX_ONGOING_REQUESTS`, `_MAX_QUEUED_REQUESTS` (-1: unbounded) and
`_MAX_REPLICAS_PER_NODE`. Unset values take the defaults of `deployment_options`, which
fit one GPU node: one replica each, CLAP and Emotion2Vec+ a quarter of the GPU each and
ChatTTS half of it (none on a cluster without GPUs). Everything else (`AUDIOSERVE_*`) is
the single-process service's settings, passed to every replica.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.settings import Settings

if TYPE_CHECKING:  # ray: imported where the seam is built, not to read the settings
    from service.cluster.remote import SeamOptions

INGRESS = "ingress"
GPU_SHARE = {"clap": 0.25, "emotion2vec": 0.25, "chattts": 0.5}
"""`num_gpus: auto` on a cluster with GPUs: the three models share one."""


class DeploymentSettings(BaseModel):
    """One deployment's scaling and resources; None: the deployment's default."""

    model_config = ConfigDict(extra="forbid")

    replicas: Annotated[int, Field(ge=0)] | Literal["auto"] | None = None
    min_replicas: int | None = Field(None, ge=0)
    max_replicas: int | None = Field(None, ge=1)
    target_ongoing_requests: float | None = Field(None, gt=0)
    num_cpus: float | None = Field(None, ge=0)
    num_gpus: Annotated[float, Field(ge=0)] | Literal["auto"] | None = None
    max_ongoing_requests: int | None = Field(None, ge=1)
    max_queued_requests: int | None = Field(None, ge=-1)
    max_replicas_per_node: int | None = Field(None, ge=1)


class ClusterSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="AUDIOSERVE_CLUSTER_", env_file=".env",
                                      extra="ignore", env_nested_delimiter="_",
                                      env_nested_max_split=1)

    app_name: str = "audioserve"
    ingress: DeploymentSettings = Field(default_factory=DeploymentSettings)
    clap: DeploymentSettings = Field(default_factory=DeploymentSettings)
    emotion2vec: DeploymentSettings = Field(default_factory=DeploymentSettings)
    chattts: DeploymentSettings = Field(default_factory=DeploymentSettings)
    result_grace_s: float = Field(2.0, ge=0)
    """How long past its deadline the ingress waits for a batch that started in time."""
    health_interval_s: float = Field(1.0, gt=0)
    """How often the ingress asks every model replica whether it is healthy."""
    proxy_location: Literal["HeadOnly", "EveryNode"] = "EveryNode"
    """Where Ray Serve runs its HTTP ingress (an HAProxy on each such node)."""

    def deployment(self, name: str) -> DeploymentSettings:
        value: DeploymentSettings = getattr(self, name)
        return value

    def seam_options(self, settings: Settings) -> SeamOptions:
        from service.cluster.remote import SeamOptions

        return SeamOptions(result_grace_s=self.result_grace_s,
                           call_timeout_s=settings.request_timeout_s,
                           health_interval_s=self.health_interval_s)


def _defaults(name: str, settings: Settings) -> dict[str, Any]:
    """Per-deployment defaults. A model replica takes up to two batches per batch worker
    at once (the rest waits in the handle's queue, free to go to whichever replica frees
    first); the TTS replica as many as its engine admits, plus its decode batches.

    An ingress replica takes as many requests as the service takes connections: Ray counts
    a request as ongoing from its headers on, while the app reads its body before its own
    admission gate (`MAX_IN_FLIGHT`) lets it near a model, so a lower cap let slow uploads
    hold every ingress slot (256 dripping uploads against a cap of 256: legitimate
    /classify P99 29 s, bench_slow_clients --cluster)."""
    batches = 2 * settings.max_batch_size * max(settings.batch_workers, 2)
    if name == INGRESS:
        return {"num_cpus": 0.5, "max_ongoing": settings.max_connections, "max_queued": -1,
                "target": 64.0}
    if name == "chattts":
        engine = settings.tts_max_active + (settings.tts_max_waiting or settings.max_queue)
        return {"num_cpus": 0.25, "max_ongoing": engine + batches,
                "max_queued": settings.max_queue, "target": float(settings.tts_max_active)}
    return {"num_cpus": 0.25, "max_ongoing": batches, "max_queued": settings.max_queue,
            "target": float(batches // 2)}


def deployment_options(name: str, cluster: ClusterSettings, settings: Settings,
                       cluster_gpus: float) -> dict[str, Any]:
    """Keyword arguments of `Deployment.options` for one deployment."""
    d = cluster.deployment(name)
    base = _defaults(name, settings)
    gpus = d.num_gpus if d.num_gpus not in (None, "auto") else (
        GPU_SHARE.get(name, 0.0) if cluster_gpus > 0 else 0.0)
    options: dict[str, Any] = {
        "name": name,
        "max_ongoing_requests": d.max_ongoing_requests or base["max_ongoing"],
        "max_queued_requests": (d.max_queued_requests if d.max_queued_requests is not None
                                else base["max_queued"]),
        "ray_actor_options": {"num_cpus": base["num_cpus"] if d.num_cpus is None
                              else d.num_cpus, "num_gpus": gpus},
        "health_check_period_s": max(1.0, cluster.health_interval_s),
        "health_check_timeout_s": 30.0,
        # the app logs every request itself; Ray's own access line per request on every
        # replica it passes cost CPU for a duplicate
        "logging_config": {"enable_access_log": False},
    }
    if d.replicas == "auto":
        low = 1 if d.min_replicas is None else d.min_replicas
        options["autoscaling_config"] = {
            "min_replicas": low, "max_replicas": d.max_replicas or max(low, 4),
            "target_ongoing_requests": d.target_ongoing_requests or base["target"],
        }
    else:
        options["num_replicas"] = 1 if d.replicas is None else d.replicas
    if d.max_replicas_per_node is not None:
        options["max_replicas_per_node"] = d.max_replicas_per_node
    return options
