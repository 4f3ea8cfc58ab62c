"""Audit from ingress replicas on two Ray nodes: `serve deploy` of serve/config.yaml (its
paths pointed at this test's folders) onto a real two-node cluster, one ingress replica per
node, then every request has exactly one audit record, written by the node that served it.

The audit folder is shared by both nodes, as a production volume would be (here both nodes
are on this machine). The proxy runs on the head only: two proxies on one machine would
want the same port."""

from __future__ import annotations

import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
import yaml
from tests.conftest import REPO, free_port
from tests.integration.serving.conftest import encode, tissue
from tests.integration.ray_nodes import VENV_BIN, clean_env, two_node_cluster

pytestmark = pytest.mark.integration

REQUESTS = 60


def _serve_config(demo_run, tmp_path, port: int) -> dict:
    config = yaml.safe_load((REPO / "serve" / "config.yaml").read_text())
    config["proxy_location"] = "HeadOnly"
    config["http_options"].update(host="127.0.0.1", port=port)
    (app,) = config["applications"]
    app["args"].update(
        model=str(demo_run.model_dir), registry=str(tmp_path / "registry"),
        keys=str(tmp_path / "keys.json"), audit_dir=str(tmp_path / "audit"), auth="none",
        topology="fused", ingress_min_replicas=2, ingress_max_replicas=2,
        max_replicas_per_node=1, replica_cpus=0.5, ingress_cpus=0.5)
    return config


def _running_replicas(url: str) -> list[dict]:
    r = requests.get(f"{url}/api/serve/applications/", timeout=10)
    r.raise_for_status()
    app = r.json().get("applications", {}).get("patchray") or {}
    ingress = app.get("deployments", {}).get("Ingress", {})
    return [x for x in ingress.get("replicas", []) if x.get("state") == "RUNNING"]


def test_ingress_replicas_on_two_nodes_each_audit_what_they_served(demo_run, tmp_path):
    from patchray.serving.audit import query_audit

    port = free_port()
    config_path = tmp_path / "serve.yaml"
    config_path.write_text(yaml.safe_dump(_serve_config(demo_run, tmp_path, port)))
    # Replicas import serve.app from the repository, as the images do (infra/docker). The
    # head's proxy would send everything to the head's own replica (Serve prefers the local
    # node); with a proxy on every node (production) each node's replica serves its own.
    with two_node_cluster(tmp_path, RAY_AUTH_MODE="disabled", PYTHONPATH=str(REPO),
                          RAY_SERVE_PROXY_PREFER_LOCAL_NODE_ROUTING="0") as cluster:
        deploy = subprocess.run([str(VENV_BIN / "serve"), "deploy", str(config_path),
                                 "--address", cluster.url], cwd=REPO, env=clean_env(),
                                capture_output=True, text=True, timeout=120)
        assert deploy.returncode == 0, deploy.stdout + deploy.stderr
        deadline, replicas = time.monotonic() + 180, []
        while time.monotonic() < deadline and len(replicas) < 2:
            time.sleep(1)
            replicas = _running_replicas(cluster.url)
        assert len(replicas) == 2, f"ingress replicas running: {replicas}"
        nodes = {r["node_id"] for r in replicas}
        assert nodes == set(cluster.node_ids.values()), (nodes, cluster.node_ids)

        base = f"http://127.0.0.1:{port}"
        bodies = [encode(tissue(seed=k)) for k in range(REQUESTS)]

        def classify(body: bytes) -> requests.Response:
            return requests.post(f"{base}/v1/classify", data=body, timeout=60,
                                 headers={"Content-Type": "image/png"})

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(classify, bodies))
        assert [a.status_code for a in answers] == [200] * REQUESTS, \
            [a.text for a in answers if a.status_code != 200][:3]
        ids = {a.json()["request_id"] for a in answers}
        time.sleep(1)  # the writers fsync every 0.2 s; a record is written before the answer

    records = list(query_audit(tmp_path / "audit"))
    mine = [r for r in records if r.route == "/v1/classify"]
    assert {r.request_id for r in mine} == ids and len(mine) == REQUESTS
    assert all(r.outcome == "ok" and r.status == 200 for r in mine)
    by_writer: dict[str, int] = {}
    for r in mine:
        by_writer[r.writer] = by_writer.get(r.writer, 0) + 1
    # writer id: <node_id8>-<replica>-<pid>; one file per writer under the day's folder
    assert {w.split("-")[0] for w in by_writer} == {n[:8] for n in nodes}, by_writer
    assert len(list((tmp_path / "audit").rglob("*.jsonl"))) == len(by_writer) == 2
