"""Shared readers for the infra tests: files are parsed, nothing is built or started."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]
KUBERAY = REPO / "infra" / "kuberay"
CLUSTER = REPO / "infra" / "cluster"
DOCKER = REPO / "infra" / "docker"
# KubeRay's CRDs live beside the project, never inside it (../shared/kuberay-crds).
CRDS = REPO.parent / "shared" / "kuberay-crds"
MOUNT = "/var/lib/patchray"  # where serve/config.yaml's paths live on every node


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def manifest(name: str) -> dict[str, Any]:
    return load_yaml(KUBERAY / name)


def serve_config() -> dict[str, Any]:
    return load_yaml(REPO / "serve" / "config.yaml")


def serve_args() -> dict[str, Any]:
    (app,) = serve_config()["applications"]
    return app["args"]


def constraints() -> dict[str, str]:
    """constraints.txt as {normalised name: version}."""
    from packaging.utils import canonicalize_name

    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[canonicalize_name(name)] = version
    return pins


def makefile_images() -> dict[str, str]:
    """The image names the Makefile builds, e.g. {"SERVE_IMAGE": "registry.../patchray-serve:0.1.0"}."""
    text = (REPO / "Makefile").read_text()
    variables = dict(re.findall(r"^(IMAGE_REGISTRY|IMAGE_TAG)\s*\?=\s*(\S+)", text, re.M))
    images = {}
    for var, value in re.findall(r"^(\w+_IMAGE)\s*:=\s*(\S+)", text, re.M):
        images[var] = re.sub(r"\$\((\w+)\)", lambda m: variables[m.group(1)], value)
    return images


def ray_clusters() -> dict[str, dict[str, Any]]:
    """Every RayCluster spec in the manifests, by where it sits."""
    return {"raycluster.yaml": manifest("raycluster.yaml")["spec"],
            "rayservice.yaml": manifest("rayservice.yaml")["spec"]["rayClusterConfig"]}


def groups(cluster: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(group name, group spec) for the head and every worker group."""
    return [("head", cluster["headGroupSpec"])] + [
        (g["groupName"], g) for g in cluster.get("workerGroupSpecs", [])]


def containers(group: dict[str, Any]) -> list[dict[str, Any]]:
    return group["template"]["spec"]["containers"]


def ports(container: dict[str, Any]) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in container.get("ports", [])}


@pytest.fixture(scope="session")
def crds() -> Path:
    if not CRDS.is_dir():
        pytest.skip(f"KubeRay CRDs not found at {CRDS}")
    return CRDS
