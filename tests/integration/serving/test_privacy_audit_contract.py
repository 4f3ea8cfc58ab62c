"""No patient identifier leaks into logs or metrics; every request leaves an audit record;
the served OpenAPI is the committed one and survives a property-based fuzzer."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from tests.conftest import REPO
from tests.integration.serving.conftest import encode, tissue

pytestmark = pytest.mark.integration
CANARY = "CANARYPATIENT0xf3a9"  # looks like nothing a log line would hold by chance


def _ray_log_dir() -> Path:
    import ray

    return Path(ray._private.worker._global_node.get_session_dir_path()) / "logs"


def test_canary_identifiers_never_reach_logs_or_metrics(service, demo_run, metrics_port):
    h = service.headers()
    sent = [
        requests.get(f"{service.url}/v2/models/{CANARY}", headers=h, timeout=30),
        requests.post(f"{service.url}/v2/models/{CANARY}/infer", json={"inputs": []},
                      headers=h, timeout=30),
        requests.post(f"{service.url}/v1/classify/{CANARY}", headers=h, timeout=30),
        requests.post(f"{service.url}/v1/classify", params={"patient": CANARY},
                      data=encode(tissue()), timeout=30, headers={
                          **h, "Content-Type": "image/png", "X-Patient-Id": CANARY,
                          "X-Request-ID": CANARY, "User-Agent": CANARY}),
        requests.post(f"{service.url}/v1/classify", headers=h, timeout=30, files=[
            (CANARY, (f"{CANARY}.png", encode(tissue()), "image/png"))]),
        requests.post(f"{service.url}/v1/classify", headers=h, timeout=30, json={
            "instances": [{"image_b64": base64.b64encode(encode(tissue())).decode(),
                           "patient_id": CANARY}]}),
        requests.post(f"{service.url}/v1/classify", timeout=30,
                      headers={"Authorization": f"Bearer {CANARY}"}),
        requests.get(f"{service.url}/healthz", params={"mrn": CANARY}, timeout=30),
    ]
    assert [r.status_code for r in sent] == [404, 404, 404, 200, 200, 422, 401, 200]
    time.sleep(12)  # Ray flushes logs within seconds and exports metrics every ~10 s
    roots = [_ray_log_dir(), Path(service.args.audit_dir), demo_run.run_dir]
    hits = []
    for root in roots:
        for path in root.rglob("*"):
            if path.is_file() and CANARY.encode() in path.read_bytes():
                hits.append(str(path))
    assert not hits, f"canary found in {hits}"
    metrics = requests.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=30).text
    assert "patchray_requests_total" in metrics  # the search looked at the real thing
    assert CANARY not in metrics


def _records(audit_dir: str, **filters):
    from patchray.serving.audit import query_audit

    return query_audit(audit_dir, since=None, until=None, client=filters.get("client"),
                       model_version=filters.get("model_version"), model=None, outcome=None,
                       limit=None)


def test_every_request_leaves_an_audit_record(service):
    png = encode(tissue(seed=3))
    answer = service.classify(png).json()
    refused = service.classify(png, "text/plain")
    assert refused.status_code == 415
    unauthorised = requests.post(f"{service.url}/v1/classify", data=png, timeout=30)
    assert unauthorised.status_code == 401
    deadline = time.time() + 10
    while time.time() < deadline:
        records = {r.request_id: r for r in _records(service.args.audit_dir)}
        if answer["request_id"] in records and refused.json()["request_id"] in records:
            break
        time.sleep(0.5)
    ok = records[answer["request_id"]]
    assert ok.client == "demo" and ok.status == 200 and ok.outcome == "ok"
    assert ok.route == "/v1/classify"
    assert ok.model == service.model and ok.model_version == answer["model"]["version"]
    assert ok.model_sha256 == answer["model"]["sha256"]
    assert ok.input_sha256 == [hashlib.sha256(png).hexdigest()] and ok.n_patches == 1
    assert ok.latency_ms > 0
    bad = records[refused.json()["request_id"]]
    assert bad.status == 415 and bad.client == "demo" and bad.outcome != "ok"
    denied = records[unauthorised.json()["request_id"]]
    assert denied.status == 401 and denied.client is None
    # The CLI reads the same records.
    proc = subprocess.run(
        [sys.executable, "-m", "patchray.cli", "audit", "--dir", service.args.audit_dir,
         "--client", "demo", "--since", "1h", "--json"],
        capture_output=True, text=True, timeout=120, env={**os.environ})
    assert proc.returncode == 0, proc.stderr
    ids = {json.loads(line)["request_id"] for line in proc.stdout.splitlines() if line.strip()}
    assert answer["request_id"] in ids and unauthorised.json()["request_id"] not in ids


def test_served_openapi_is_the_committed_contract(service):
    served = requests.get(f"{service.url}/openapi.json", headers=service.headers(),
                          timeout=30).json()
    committed = json.loads((REPO / "serve" / "openapi.json").read_text())
    assert served == committed
    assert {"/v1/classify", "/v2/models/{name}/infer", "/healthz"} <= set(served["paths"])


def test_property_based_fuzzing_finds_no_server_error(service, tmp_path):
    """schemathesis generates requests from the committed OpenAPI description and sends
    them to the live service: no answer may be a 5xx."""
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "schemathesis"), "run",
         str(REPO / "serve" / "openapi.json"), "--url", service.url,
         "-H", f"Authorization: Bearer {service.key}", "--checks", "not_a_server_error",
         "--max-examples", "25", "--seed", "1", "--request-timeout", "30",
         "--report", "junit", "--report-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=900, cwd=tmp_path)
    tail = proc.stdout[-4000:]
    assert proc.returncode == 0, tail
    assert "passed" in tail.lower() or "no issues found" in tail.lower(), tail
