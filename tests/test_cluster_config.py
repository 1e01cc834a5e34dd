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

from service.cli import unknown_keys, unknown_variables  # noqa: E402
from service.cluster.app import app_builder  # noqa: E402
from service.cluster.config import ClusterSettings, deployment_options  # noqa: E402
from service.cluster.runtime import SERVE_ENV, ray_node_environment  # noqa: E402
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
    # no host path: the folders come from AUDIOSERVE_* on the node (`--print-env`)
    assert "models_dir" not in application.args and "voices_dir" not in application.args
    return schema


def test_serve_config_file() -> None:
    _serve_config(yaml.safe_load((ROOT / "deploy" / "serve.yaml").read_text()))
    assert app_builder.__module__ == "service.cluster.app"


def test_kuberay_manifest_runs_the_project_image() -> None:
    service = yaml.safe_load((ROOT / "deploy" / "kuberay-rayservice.yaml").read_text())
    assert (service["apiVersion"], service["kind"]) == ("ray.io/v1", "RayService")
    serve_config = yaml.safe_load(service["spec"]["serveConfigV2"])
    _serve_config(serve_config)
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
        wanted = ray_node_environment(Settings(_env_file=None))
        assert {k: env.get(k) for k in wanted} == wanted  # HAProxy and replicas read it here
        # the application is built on any pod: every pod has the service's folders,
        # mounted, and the port Serve's http_options name
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        assert mounts[env["AUDIOSERVE_MODELS_DIR"]].get("readOnly") is True
        assert not mounts[env["AUDIOSERVE_VOICES_DIR"]].get("readOnly")
        assert env["AUDIOSERVE_PORT"] == str(serve_config["http_options"]["port"])
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"]
              for v in ray_cluster["headGroupSpec"]["template"]["spec"]["volumes"]}
    assert claims == {"models": "audioserve-models", "voices": "audioserve-voices"}
    # ignored since KubeRay 1.1: a grace that does not exist; readiness gates traffic
    assert not {"serviceUnhealthySecondThreshold",
                "deploymentUnhealthySecondThreshold"} & set(service["spec"])
    for group in ray_cluster["workerGroupSpecs"]:
        (worker,) = group["template"]["spec"]["containers"]
        assert worker["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert "livenessProbe" not in worker  # KubeRay's raylet check: a long load lives
    major, minor, *_ = ray_cluster["rayVersion"].split(".")
    assert (int(major), int(minor)) >= (2, 60)


def test_a_misspelt_serve_config_argument_is_refused() -> None:
    """`args` of a Serve config file are settings by field name: a typo is refused, naming
    the closest, as an unknown AUDIOSERVE_* variable is."""
    with pytest.raises(ValueError, match=r"max_upload is not a setting; did you mean "
                                         r"max_upload_bytes\?; cluster\.app_nam is not a "
                                         r"setting; did you mean cluster\.app_name\?"):
        app_builder({"models_dir": "/models", "max_upload": 5, "cluster": {"app_nam": "x"}})


def test_the_deploy_files_set_only_real_settings() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    variables = dict(compose["services"]["audioserve"]["environment"])
    service = yaml.safe_load((ROOT / "deploy" / "kuberay-rayservice.yaml").read_text())
    ray_cluster = service["spec"]["rayClusterConfig"]
    for group in [ray_cluster["headGroupSpec"], *ray_cluster["workerGroupSpecs"]]:
        for container in group["template"]["spec"]["containers"]:
            variables.update({e["name"]: e.get("value", "") for e in container.get("env", [])})
    assert unknown_variables([Settings, ClusterSettings], variables) == []
    serve_args = _serve_config(yaml.safe_load((ROOT / "deploy" / "serve.yaml").read_text()))
    (application,) = serve_args.applications
    args = dict(application.args)
    assert unknown_keys({k: v for k, v in args.items() if k != "cluster"}, Settings) == []
    assert unknown_keys(args.get("cluster", {}), ClusterSettings) == []


def test_print_env_carries_the_port_the_folders_and_what_was_set(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What a node needs beside Ray's settings: the port, both folders absolute (a
    relative one would be resolved in each Ray worker's own directory), and every setting
    given, the cluster's included, in the variables they are read from."""
    from service.cluster.runtime import node_environment

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no Ray token of this machine's
    settings = Settings(_env_file=None, models_dir=Path("packs"), max_batch_size=4)
    cluster = ClusterSettings(_env_file=None, clap={"replicas": "auto", "max_replicas": 6},  # type: ignore[arg-type]
                              result_grace_s=1.5)
    env = node_environment(settings, cluster, env={})
    assert env["AUDIOSERVE_PORT"] == "8000"
    assert env["AUDIOSERVE_MODELS_DIR"] == str(tmp_path / "packs")
    assert Path(env["AUDIOSERVE_VOICES_DIR"]).is_absolute()
    assert env["AUDIOSERVE_MAX_BATCH_SIZE"] == "4"
    assert (env["AUDIOSERVE_CLUSTER_CLAP_REPLICAS"], env["AUDIOSERVE_CLUSTER_CLAP_MAX_REPLICAS"],
            env["AUDIOSERVE_CLUSTER_RESULT_GRACE_S"]) == ("auto", "6", "1.5")
    assert "AUDIOSERVE_API_KEY" not in env and "RAY_AUTH_MODE" not in env
    # read back, the variables give the same settings
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    again = Settings(_env_file=None)
    assert (again.models_dir, again.max_batch_size) == (tmp_path / "packs", 4)
    assert ClusterSettings(_env_file=None).clap == cluster.clap  # type: ignore[call-arg]


def test_print_env_turns_ray_token_auth_on_where_a_token_exists(tmp_path: Path) -> None:
    """`ray start --head` turns token auth on by itself once ~/.ray/auth_token exists;
    `serve deploy` then needs RAY_AUTH_MODE=token (test_deploy runs that path)."""
    from service.cluster.runtime import ray_auth_environment

    assert ray_auth_environment({}, home=tmp_path) == {}
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("t" * 32)
    assert ray_auth_environment({}, home=tmp_path) == {"RAY_AUTH_MODE": "token"}
    assert ray_auth_environment({"RAY_AUTH_MODE": "disabled"}, home=tmp_path) == {
        "RAY_AUTH_MODE": "disabled"}
    assert ray_auth_environment({"RAY_AUTH_TOKEN": "x"}, home=tmp_path / "none") == {
        "RAY_AUTH_MODE": "token"}


def test_a_config_files_port_and_audioserve_port_must_agree() -> None:
    from service.cluster.app import check_port

    check_port(Settings(_env_file=None), 8000)
    check_port(Settings(_env_file=None), 9000)  # AUDIOSERVE_PORT unset: nothing to disagree
    check_port(Settings(_env_file=None, port=9000), None)  # no Serve controller to ask
    with pytest.raises(ValueError, match=r"AUDIOSERVE_PORT=9000.*port 8000.*http_options"):
        check_port(Settings(_env_file=None, port=9000), 8000)
