"""The Ray Serve application: an ingress and one deployment per model pack to serve.

`build(settings, cluster)` is what `python -m service.cluster` runs; `app_builder` is the
same for a Serve config file (`serve run` / `serve deploy deploy/serve.yaml`), whose
`args` may set any `AUDIOSERVE_*` setting by its field name (`models_dir: /models`) and
the cluster's under `cluster:` (`cluster: {clap: {replicas: 2}}`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import ray
from ray import serve
from ray.serve import Application

from service.cli import unknown_keys
from service.cluster.config import INGRESS, ClusterSettings, deployment_options
from service.cluster.ingress import Ingress
from service.cluster.replica import ModelReplica
from service.pipelines.loader import packs_to_load
from service.runtime.packs import ModelPack
from service.settings import Settings


def absolute_paths(settings: Settings) -> Settings:
    """Replicas start in other processes, maybe on other machines: paths relative to this
    one's working directory are resolved here (the same paths must exist on every node)."""
    def resolve(path: Path) -> Path:
        return path if path.is_absolute() else path.resolve()

    return settings.model_copy(update={"models_dir": resolve(settings.models_dir),
                                       "voices_dir": resolve(settings.voices_dir)})


def cluster_gpus() -> float:
    return float(ray.cluster_resources().get("GPU", 0.0)) if ray.is_initialized() else 0.0


def build(settings: Settings, cluster: ClusterSettings,
          packs: list[ModelPack] | None = None) -> Application:
    """The application for the packs `settings` names; a missing or broken pack fails
    here, before anything is deployed, naming the file. `packs`: already checked."""
    settings = absolute_paths(settings)
    gpus = cluster_gpus()
    models = {}
    for pack in packs if packs is not None else packs_to_load(settings):
        options = deployment_options(pack.kind, cluster, settings, gpus)
        models[pack.kind] = serve.deployment(**options)(ModelReplica).bind(pack.kind, settings)
    ingress = serve.deployment(**deployment_options(INGRESS, cluster, settings, gpus))(Ingress)
    return ingress.bind(settings, models, cluster.seam_options(settings))


def serve_http_port() -> int | None:
    """The port Serve's HTTP ingress was started on (a config file's `http_options`), or
    None where no Serve controller answers."""
    from ray.serve.context import _get_global_client

    try:
        client = _get_global_client(raise_if_no_controller_running=False)
        return None if client is None else int(client.http_config.port)
    except Exception:  # only a consistency check: never what fails a deploy
        return None


def check_port(settings: Settings, serve_port: int | None) -> None:
    """A Serve config file fixes the HTTP port in its `http_options` (Ray Serve reads no
    variable for it): an `AUDIOSERVE_PORT` that names another one is refused, so an
    operator who set it learns where the port lives instead of finding the service on
    another one."""
    if serve_port is not None and "port" in settings.model_fields_set \
            and settings.port != serve_port:
        raise ValueError(
            f"AUDIOSERVE_PORT={settings.port}, but Ray Serve's HTTP ingress is on port "
            f"{serve_port} (`http_options.port` of the Serve config; Ray Serve reads no "
            f"variable for it): set the same port in both (docs/cluster.md)")


def app_builder(args: dict[str, Any]) -> Application:
    """Serve config files' `import_path: service.cluster.app:app_builder`."""
    args = dict(args or {})
    cluster_args = args.pop("cluster", {}) or {}
    unknown = unknown_keys(args, Settings) + unknown_keys(cluster_args, ClusterSettings,
                                                          "cluster.")
    if unknown:  # a misspelt limit must not be dropped silently
        raise ValueError("; ".join(unknown))
    settings = Settings(**args)
    check_port(settings, serve_http_port())
    return build(settings, ClusterSettings(**cluster_args))
