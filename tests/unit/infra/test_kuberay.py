"""infra/kuberay: the manifests against KubeRay's and Kubernetes' real schemas, and against
the rest of the project (images, CLI, job specs, serve/config.yaml, ports, paths).

KubeRay's CRDs are read from ../shared/kuberay-crds (skipped when absent, never copied in).
Their schemas are made strict here (``additionalProperties: false`` wherever a field list
is given), as ``kubectl apply --validate=strict`` is: the API server would otherwise drop a
misspelt field silently. CEL rules (``x-kubernetes-validations``) are not evaluated."""

from __future__ import annotations

import copy
import shlex
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from .conftest import (
    KUBERAY,
    MOUNT,
    REPO,
    constraints,
    containers,
    groups,
    load_yaml,
    makefile_images,
    manifest,
    ports,
    ray_clusters,
    serve_args,
    serve_config,
)

CRD_FILES = {"RayCluster": "ray.io_rayclusters.yaml", "RayJob": "ray.io_rayjobs.yaml",
             "RayService": "ray.io_rayservices.yaml"}
MANIFESTS = sorted(p.name for p in KUBERAY.glob("*.yaml")
                   if p.name not in ("kustomization.yaml", "rayservice.template.yaml"))
RAY_PORTS = {"gcs-server": 6379, "dashboard": 8265, "client": 10001}  # never leave the namespace


def strict(schema: Any) -> Any:
    """The schema with unknown fields refused wherever it lists the known ones."""
    if isinstance(schema, dict):
        schema = {k: strict(v) for k, v in schema.items()}
        if ("properties" in schema and "additionalProperties" not in schema
                and not schema.get("x-kubernetes-preserve-unknown-fields")):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [strict(v) for v in schema]
    return schema


_SCHEMAS: dict[str, dict[str, Any]] = {}


def crd_schema(crds: Path, kind: str) -> dict[str, Any]:
    if kind not in _SCHEMAS:
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # 1 MB files: C parser if built
        crd = yaml.load((crds / CRD_FILES[kind]).read_text(), Loader=loader)
        (v1,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
        _SCHEMAS[kind] = strict(v1["schema"]["openAPIV3Schema"])
    return _SCHEMAS[kind]


def validate_crd(crds: Path, obj: dict[str, Any]) -> None:
    assert obj["apiVersion"] == "ray.io/v1"
    jsonschema.Draft7Validator(crd_schema(crds, obj["kind"])).validate(obj)


def validate_k8s(obj: dict[str, Any]) -> None:
    import kubernetes_validate

    kubernetes_validate.validate(obj, kubernetes_validate.latest_version(), strict=True)


def pod_templates() -> list[tuple[str, dict[str, Any]]]:
    out = [(f"{where}:{name}", group["template"]) for where, cluster in ray_clusters().items()
           for name, group in groups(cluster)]
    return out


# --------------------------------------------------------------------------- schemas


@pytest.mark.parametrize("name", [n for n in MANIFESTS if manifest(n)["kind"] in CRD_FILES])
def test_kuberay_manifest_validates_against_its_crd(crds, name):
    validate_crd(crds, manifest(name))


def test_rayservice_cluster_config_validates_as_a_raycluster_spec(crds):
    """Also against RayCluster's own spec schema (what KubeRay builds the cluster from)."""
    spec = manifest("rayservice.yaml")["spec"]["rayClusterConfig"]
    schema = crd_schema(crds, "RayCluster")["properties"]["spec"]
    jsonschema.Draft7Validator(schema).validate(spec)


def test_strict_crd_validation_catches_a_misspelt_field(crds):
    broken = copy.deepcopy(manifest("raycluster.yaml"))
    broken["spec"]["workerGroupSpecs"][0]["maxReplica"] = 3
    with pytest.raises(jsonschema.ValidationError, match="maxReplica"):
        validate_crd(crds, broken)


@pytest.mark.parametrize("name", [n for n in MANIFESTS if manifest(n)["kind"] not in CRD_FILES])
def test_core_kubernetes_objects_validate(name):
    validate_k8s(manifest(name))


@pytest.mark.parametrize("where,template", pod_templates(), ids=[w for w, _ in pod_templates()])
def test_pod_templates_validate_as_kubernetes_pods(where, template):
    validate_k8s({"apiVersion": "v1", "kind": "Pod",
                  "metadata": {"name": "x", **template.get("metadata", {})},
                  "spec": template["spec"]})


def test_kustomization_lists_every_long_lived_manifest():
    listed = set(load_yaml(KUBERAY / "kustomization.yaml")["resources"])
    jobs = {n for n in MANIFESTS if manifest(n)["kind"] == "RayJob"}
    assert listed == set(MANIFESTS) - jobs


# --------------------------------------------------------------------------- one source


def test_rendered_rayservice_is_up_to_date():
    from patchray.deploy.kuberay import render_files

    assert (KUBERAY / "rayservice.yaml").read_text() == render_files(REPO), (
        "infra/kuberay/rayservice.yaml is stale: run python -m patchray.deploy.kuberay")


def test_rayservice_serve_config_is_serve_config_yaml():
    from ray.serve.schema import ServeDeploySchema

    inline = manifest("rayservice.yaml")["spec"]["serveConfigV2"]
    assert inline == (REPO / "serve" / "config.yaml").read_text()
    assert yaml.safe_load(inline) == serve_config()
    ServeDeploySchema.model_validate(yaml.safe_load(inline))


# --------------------------------------------------------------------------- consistency


def test_images_are_the_ones_the_makefile_builds():
    images = makefile_images()
    expected = {"raycluster.yaml": {"head": images["TRAIN_IMAGE"],
                                    "xeon-cpu": images["TRAIN_IMAGE"],
                                    "gpu": images["TRAIN_GPU_IMAGE"]},
                "rayservice.yaml": {"head": images["SERVE_IMAGE"],
                                    "xeon-cpu": images["SERVE_IMAGE"]}}
    found = {where: {name: c["image"] for name, g in groups(cluster) for c in containers(g)}
             for where, cluster in ray_clusters().items()}
    assert found == expected


def test_ray_version_is_the_pinned_one():
    for where, cluster in ray_clusters().items():
        assert cluster["rayVersion"] == constraints()["ray"], where


def test_worker_groups_place_on_xeon_and_gpu_nodes():
    train = dict(groups(ray_clusters()["raycluster.yaml"]))
    cpu, gpu = train["xeon-cpu"]["template"]["spec"], train["gpu"]["template"]["spec"]
    assert cpu["nodeSelector"]["feature.node.kubernetes.io/cpu-model.vendor_id"] == "Intel"
    for key in ("requests", "limits"):
        assert gpu["containers"][0]["resources"][key]["nvidia.com/gpu"] >= 1
    assert gpu["nodeSelector"] and any(t["key"] == "nvidia.com/gpu" for t in gpu["tolerations"])
    assert "nvidia.com/gpu" not in str(cpu)
    serving = dict(groups(ray_clusters()["rayservice.yaml"]))
    assert set(serving) == {"head", "xeon-cpu"}, "serving is OpenVINO on Xeon: no GPU group"


def test_ports_agree_with_the_serve_config_and_ray_defaults():
    from patchray.config import ServeConfig, load_config

    metrics = ServeConfig().metrics_port
    assert load_config(REPO / "jobs" / "demo.yaml").serve.metrics_port == metrics
    serve_port = serve_config()["http_options"]["port"]
    assert serve_port == ServeConfig().port
    for where, cluster in ray_clusters().items():
        for name, group in groups(cluster):
            assert group["rayStartParams"]["metrics-export-port"] == str(metrics), (where, name)
            (container,) = containers(group)
            found = ports(container)
            assert found["metrics"] == metrics, (where, name)
            if name == "head":
                assert {k: found[k] for k in RAY_PORTS} == RAY_PORTS, where
            if where == "rayservice.yaml":
                assert found["serve"] == serve_port, (where, name)


def test_ingress_routes_to_the_rayservice_serve_service_with_tls():
    ingress = manifest("ingress.yaml")
    (rule,) = ingress["spec"]["rules"]
    (path,) = rule["http"]["paths"]
    backend = path["backend"]["service"]
    assert backend["name"] == manifest("rayservice.yaml")["metadata"]["name"] + "-serve-svc"
    assert backend["port"]["number"] == serve_config()["http_options"]["port"]
    (tls,) = ingress["spec"]["tls"]
    assert rule["host"] in tls["hosts"] and tls["secretName"]


def test_ingress_limits_leave_the_answers_to_patchray():
    """Body size and read timeout above Serve's, so clients get patchray's JSON 413 / 408."""
    notes = manifest("ingress.yaml")["metadata"]["annotations"]
    body = notes["nginx.ingress.kubernetes.io/proxy-body-size"]
    assert body.endswith("m") and int(body[:-1]) * 2**20 > serve_args()["max_body_bytes"]
    timeout = int(notes["nginx.ingress.kubernetes.io/proxy-read-timeout"])
    assert timeout > serve_config()["http_options"]["request_timeout_s"]


def test_network_policy_keeps_ray_control_ports_inside_the_namespace():
    policy = manifest("networkpolicy.yaml")["spec"]
    assert policy["podSelector"]["matchExpressions"][0]["key"] == "ray.io/cluster"
    outside: set[int] = set()
    for rule in policy["ingress"]:
        peers = rule["from"]
        if peers == [{"podSelector": {}}]:
            continue  # this namespace
        assert rule.get("ports"), f"a rule opens every port to {peers}"
        outside |= {p["port"] for p in rule["ports"]}
    assert outside == {8265, serve_config()["http_options"]["port"], 8080}
    dashboard_rules = [r for r in policy["ingress"] if any(p["port"] == 8265
                                                           for p in r.get("ports", []))]
    (only,) = dashboard_rules  # the KubeRay operator, and nobody else from outside
    assert "kuberay" in str(only["from"])
    assert not outside & {RAY_PORTS["gcs-server"], RAY_PORTS["client"]}


def test_every_pod_mounts_the_shared_volume_where_serve_config_points():
    claim = manifest("storage.yaml")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    for where, template in pod_templates():
        spec = template["spec"]
        volumes = {v["name"]: v for v in spec["volumes"]}
        (container,) = spec["containers"]
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        assert volumes[mounts[MOUNT]]["persistentVolumeClaim"]["claimName"] == \
            claim["metadata"]["name"], where
        assert spec["securityContext"]["fsGroup"] == 1000, where  # the images' `ray` user
    args = serve_args()
    for key in ("registry", "keys", "audit_dir"):
        assert args[key].startswith(MOUNT + "/"), key


# --------------------------------------------------------------------------- RayJobs


def rayjobs() -> list[tuple[str, dict[str, Any]]]:
    return [(n, manifest(n)) for n in MANIFESTS if manifest(n)["kind"] == "RayJob"]


def entrypoint(job: dict[str, Any]) -> list[str]:
    return shlex.split(job["spec"]["entrypoint"])


def test_rayjobs_train_and_tune():
    assert sorted(entrypoint(job)[1] for _, job in rayjobs()) == ["train", "tune"]


@pytest.mark.parametrize("name,job", rayjobs(), ids=[n for n, _ in rayjobs()])
def test_rayjob_entrypoint_parses_with_the_cli_and_its_spec_loads(name, job):
    from patchray.cli import build_parser
    from patchray.config import TrainJobConfig, TuneJobConfig, load_config

    argv = entrypoint(job)
    assert argv[0] == "patchray", "the console script of pyproject [project.scripts]"
    args = build_parser().parse_args(argv[1:])  # SystemExit (fails the test) when unknown
    image_jobs = "/app/jobs/"  # WORKDIR /app + COPY jobs/ jobs/ in train.Dockerfile
    assert args.config.startswith(image_jobs)
    spec = REPO / "jobs" / args.config.removeprefix(image_jobs)
    assert spec.is_file(), f"{name}: {spec} does not exist"
    model = TuneJobConfig if args.command == "tune" else TrainJobConfig
    cfg = load_config(spec, args.overrides, model=model)  # the overrides are real keys
    assert cfg.ray.address == "auto", "without it patchray starts its own Ray on the head"
    assert cfg.runs_root.startswith(MOUNT + "/") and cfg.data.root.startswith(MOUNT + "/")


@pytest.mark.parametrize("name,job", rayjobs(), ids=[n for n, _ in rayjobs()])
def test_rayjob_targets_the_training_cluster(name, job):
    target = job["spec"]["clusterSelector"]["ray.io/cluster"]
    assert target == manifest("raycluster.yaml")["metadata"]["name"]


# --------------------------------------------------------------------------- capacity


def test_serving_workers_hold_serve_config_at_its_maxima():
    from patchray.config import ServeAppArgs

    args = ServeAppArgs.model_validate(serve_args())
    if getattr(args, "topology", "split") == "fused":  # each ingress replica holds the model
        need = args.ingress_max_replicas * args.replica_cpus
    else:  # a Classifier deployment beside the ingress
        need = (args.max_replicas * args.replica_cpus
                + args.ingress_max_replicas * args.ingress_cpus)
    (workers,) = ray_clusters()["rayservice.yaml"]["workerGroupSpecs"]
    (container,) = containers(workers)
    pod_cpus = float(container["resources"]["limits"]["cpu"])
    assert max(args.replica_cpus, args.ingress_cpus) <= pod_cpus
    assert need <= workers["maxReplicas"] * pod_cpus
    assert workers["minReplicas"] >= 1 and args.min_replicas >= 1
