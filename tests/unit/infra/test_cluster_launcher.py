"""infra/cluster: the Ray cluster-launcher configs against Ray's own autoscaler schema (the
ray-schema.json inside the installed ray package) and Ray's own config preparation, plus the
ports, images and paths the rest of the project uses. Nothing is launched."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from .conftest import CLUSTER, MOUNT, load_yaml, makefile_images, serve_args

CONFIGS = ["onprem.yaml", "aws.yaml"]
NEVER_OPEN = {6379, 8265, 10001, 8080}  # GCS, dashboard + Jobs API, Ray client, metrics


def ray_schema() -> dict[str, Any]:
    import ray.autoscaler

    return json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


def config(name: str) -> dict[str, Any]:
    return load_yaml(CLUSTER / name)


def commands(cfg: dict[str, Any], key: str) -> str:
    return " ".join(cfg[key])


@pytest.mark.parametrize("name", CONFIGS)
def test_config_validates_against_rays_autoscaler_schema(name):
    jsonschema.Draft7Validator(ray_schema()).validate(config(name))


@pytest.mark.parametrize("name", CONFIGS)
def test_config_survives_rays_own_preparation_and_validation(name):
    """What `ray up` does before it touches a machine: fill in the provider's defaults, then
    validate (schema + node-type checks)."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config(name)))
    validate_config(prepared)


def test_onprem_uses_the_local_provider_with_cpu_and_gpu_pools():
    cfg = config("onprem.yaml")
    assert cfg["provider"]["type"] == "local" and cfg["provider"]["worker_ips"]
    # Ray's local provider refuses available_node_types: the pool is decided on each host.
    assert "available_node_types" not in cfg
    workers = commands(cfg, "worker_start_ray_commands")
    assert "POOL=xeon-cpu" in workers and "POOL=gpu" in workers and "nvidia-smi" in workers
    assert "EXTRAS=train,gpu" in commands(cfg, "setup_commands")
    assert all("-c ~/patchray/constraints.txt" in c for c in cfg["setup_commands"]
               if "pip install" in c)


def test_aws_has_xeon_cpu_and_gpu_worker_types_on_the_project_images():
    cfg = config("aws.yaml")
    types = cfg["available_node_types"]
    assert set(types) == {"head", "xeon-cpu", "gpu"} and cfg["head_node_type"] == "head"
    # Intel Xeon instance families (m7i/c7i: Sapphire Rapids).
    for name in ("head", "xeon-cpu"):
        assert re.fullmatch(r"[mcr]\d+i\.\w+", types[name]["node_config"]["InstanceType"]), name
    assert types["gpu"]["node_config"]["InstanceType"].startswith(("g", "p"))
    images = makefile_images()
    assert cfg["docker"]["image"] == images["TRAIN_IMAGE"]
    assert types["gpu"]["docker"]["worker_image"] == images["TRAIN_GPU_IMAGE"]
    assert "--gpus all" in types["gpu"]["docker"]["worker_run_options"]
    assert f"-v {MOUNT}:{MOUNT}" in cfg["docker"]["run_options"]
    assert MOUNT in commands(cfg, "initialization_commands")


@pytest.mark.parametrize("name", CONFIGS)
def test_ray_ports_and_a_loopback_only_dashboard(name):
    cfg = config(name)
    head = commands(cfg, "head_start_ray_commands")
    for flag in ("--port=6379", "--dashboard-port=8265", "--ray-client-server-port=10001",
                 "--metrics-export-port=8080", "--dashboard-host=127.0.0.1"):
        assert flag in head, flag
    workers = commands(cfg, "worker_start_ray_commands")
    assert "--address=$RAY_HEAD_IP:6379" in workers and "--metrics-export-port=8080" in workers


def test_aws_security_group_opens_only_ssh_and_serve():
    from patchray.config import ServeConfig

    rules = config("aws.yaml")["provider"]["security_group"]["IpPermissions"]
    opened = set()
    for rule in rules:
        opened |= set(range(rule["FromPort"], rule["ToPort"] + 1))
        assert all(r["CidrIp"] != "0.0.0.0/0" for r in rule["IpRanges"]), rule
    assert opened == {22, ServeConfig().port}
    assert not opened & NEVER_OPEN
    assert config("aws.yaml")["provider"]["use_internal_ips"] is True


def test_onprem_environment_matches_serve_config_paths():
    env = dict(line.split("=", 1) for line in (CLUSTER / "patchray.env").read_text().splitlines()
               if line and not line.startswith("#"))
    args = serve_args()
    assert (env["PATCHRAY_REGISTRY"], env["PATCHRAY_KEYS"], env["PATCHRAY_AUDIT"]) == (
        args["registry"], args["keys"], args["audit_dir"])
    cfg = config("onprem.yaml")
    assert cfg["file_mounts"] == {"~/patchray": "."}  # where PYTHONPATH and the env file are
    assert env["PYTHONPATH"] == "$HOME/patchray"
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        assert ". ~/patchray/infra/cluster/patchray.env" in commands(cfg, key), key
