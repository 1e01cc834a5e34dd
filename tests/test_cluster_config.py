"""Cluster settings and the deployment files: `AUDIOSERVE_CLUSTER_*` parsing, the options
each deployment gets, and the Serve config file and KubeRay manifest validated by Ray's own
schema against this code (import path, Serve settings, image)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.tools import require_module

require_module("ray.serve", "the `cluster` extra: pip install -e '.[cluster]'")
yaml = require_module("yaml", "the `export` extra: pip install -e '.[export]'")

from ray.serve.schema import ServeDeploySchema  # noqa: E402

from service.cluster.app import app_builder  # noqa: E402
from service.cluster.config import ClusterSettings, deployment_options  # noqa: E402
from service.cluster.runtime import SERVE_ENV, node_environment  # noqa: E402
from service.settings import Settings  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def test_per_model_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in {"CLAP_REPLICAS": "auto", "CLAP_MAX_REPLICAS": "6",
                       "CLAP_NUM_GPUS": "0.5", "CHATTTS_REPLICAS": "3",
                       "EMOTION2VEC_MAX_QUEUED_REQUESTS": "4", "INGRESS_NUM_CPUS": "2",
                       "RESULT_GRACE_S": "1.5"}.items():
        monkeypatch.setenv(f"AUDIOSERVE_CLUSTER_{key}", value)
    cluster = ClusterSettings(_env_file=None)  # type: ignore[call-arg]
    settings = Settings(_env_file=None)
    clap = deployment_options("clap", cluster, settings, cluster_gpus=0)
    assert clap["autoscaling_config"] == {"min_replicas": 1, "max_replicas": 6,
                                          "target_ongoing_requests": 16.0}
    assert "num_replicas" not in clap
    assert clap["ray_actor_options"] == {"num_cpus": 0.25, "num_gpus": 0.5}
    assert deployment_options("chattts", cluster, settings, 0)["num_replicas"] == 3
    assert deployment_options("emotion2vec", cluster, settings, 0)["max_queued_requests"] == 4
    assert deployment_options("ingress", cluster, settings, 0)["ray_actor_options"] == {
        "num_cpus": 2.0, "num_gpus": 0.0}
    assert cluster.seam_options(settings).result_grace_s == 1.5


def test_defaults_fit_one_gpu_node() -> None:
    cluster, settings = ClusterSettings(_env_file=None), Settings(_env_file=None)  # type: ignore[call-arg]
    with_gpu = {k: deployment_options(k, cluster, settings, cluster_gpus=1)
                for k in ("ingress", "clap", "emotion2vec", "chattts")}
    assert sum(o["ray_actor_options"]["num_gpus"] for o in with_gpu.values()) == 1.0
    assert all(o["num_replicas"] == 1 for o in with_gpu.values())
    without = [deployment_options(k, cluster, settings, cluster_gpus=0)
               for k in ("ingress", "clap", "emotion2vec", "chattts")]
    assert all(o["ray_actor_options"]["num_gpus"] == 0 for o in without)
    engine = settings.tts_max_active + settings.max_queue  # every sequence its engine admits
    assert with_gpu["chattts"]["max_ongoing_requests"] >= engine
    assert with_gpu["ingress"]["max_queued_requests"] == -1  # the app's own gate refuses


def test_an_ingress_replica_takes_every_connection_the_service_takes() -> None:
    """Ray counts a request from its headers on, and the app reads bodies before its own
    gate: an ingress cap below the connection cap let slow uploads hold every slot."""
    cluster = ClusterSettings(_env_file=None)  # type: ignore[call-arg]
    for connections in (64, 1024, 5000):
        settings = Settings(_env_file=None, max_connections=connections)
        options = deployment_options("ingress", cluster, settings, cluster_gpus=0)
        assert options["max_ongoing_requests"] == connections


def _serve_config(doc: dict[str, Any]) -> ServeDeploySchema:
    schema = ServeDeploySchema.model_validate(doc) if hasattr(
        ServeDeploySchema, "model_validate") else ServeDeploySchema.parse_obj(doc)
    (application,) = schema.applications
    module, _, name = application.import_path.partition(":")
    assert (module, name) == ("service.cluster.app", "app_builder")
    assert application.runtime_env["env_vars"] == SERVE_ENV
    assert application.args["models_dir"] == "/models"
    return schema


def test_serve_config_file() -> None:
    _serve_config(yaml.safe_load((ROOT / "deploy" / "serve.yaml").read_text()))
    assert app_builder.__module__ == "service.cluster.app"


def test_kuberay_manifest_runs_the_project_image() -> None:
    service = yaml.safe_load((ROOT / "deploy" / "kuberay-rayservice.yaml").read_text())
    assert (service["apiVersion"], service["kind"]) == ("ray.io/v1", "RayService")
    _serve_config(yaml.safe_load(service["spec"]["serveConfigV2"]))
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    image = compose["services"]["audioserve"]["image"]
    ray_cluster = service["spec"]["rayClusterConfig"]
    pods = [ray_cluster["headGroupSpec"]["template"]] + [
        g["template"] for g in ray_cluster["workerGroupSpecs"]]
    for pod in pods:
        (container,) = pod["spec"]["containers"]
        assert container["image"] == image
        env = {e["name"]: e["value"] for e in container["env"]}
        # what `python -m service.cluster --print-env` prints for the default settings
        wanted = node_environment(Settings(_env_file=None))
        assert {k: env.get(k) for k in wanted} == wanted  # HAProxy and replicas read it here
        assert any(m["mountPath"] == "/models" for m in container["volumeMounts"])
    major, minor, *_ = ray_cluster["rayVersion"].split(".")
    assert (int(major), int(minor)) >= (2, 60)
