"""A real Prometheus server (Debian package `prometheus`) runs the operators' configuration
from infra/ against this session's Ray cluster: it finds the node through Ray's own
service-discovery file, scrapes Serve's and patchray's metrics (serving and training), and
evaluates the alert rules; every PromQL expression of the Grafana dashboards and of the
alerts then runs on that live data."""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import requests
import yaml
from tests.conftest import REPO, free_port

pytestmark = pytest.mark.integration

INFRA = REPO / "infra"
DASHBOARDS = sorted((INFRA / "grafana").glob("*.json"))
ALERTS = INFRA / "prometheus" / "alerts.yml"
# Grafana's template variables, as "All" would fill them in.
GRAFANA_VARIABLES = {"$run": ".*", "$__rate_interval": "1m", "$__interval": "10s"}


def session_service_discovery_file() -> Path:
    """The file Ray's head writes for Prometheus in this session's folder (Ray keeps a link
    to it in /tmp/ray only for the newest session on the machine)."""
    import ray

    node = ray._private.worker.global_worker.node  # no public API names the session folder
    return Path(node.get_session_dir_path()) / "prom_metrics_service_discovery.json"


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory, ray_cluster):
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus not installed: `make test` installs the Debian package")
    work = tmp_path_factory.mktemp("prometheus")
    # The operators' config from infra/ as it is, but for this session's discovery file,
    # faster scrapes and evaluations, and the rule file's absolute path.
    config = yaml.safe_load((INFRA / "prometheus/prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "ray"
    sd = session_service_discovery_file()
    deadline = time.time() + 30  # Ray writes it every 5 s
    while not sd.is_file() and time.time() < deadline:
        time.sleep(0.5)
    assert sd.is_file(), f"Ray wrote no service-discovery file at {sd}"
    job["file_sd_configs"] = [{"files": [str(sd)], "refresh_interval": "5s"}]
    config["rule_files"] = [str(INFRA / "prometheus" / f) for f in config["rule_files"]]
    (work / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = work / "prometheus.log"
    proc = subprocess.Popen(
        [binary, f"--config.file={work / 'prometheus.yml'}",
         f"--storage.tsdb.path={work / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=open(log, "w"),
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                if requests.get(f"{url}/-/ready", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            time.sleep(0.5)
        else:
            pytest.fail(f"prometheus did not become ready: {log.read_text()[-2000:]}")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def _query(url: str, promql: str) -> list[dict]:
    r = requests.get(f"{url}/api/v1/query", params={"query": promql}, timeout=10)
    r.raise_for_status()
    return r.json()["data"]["result"]


def _query_range(url: str, promql: str, start: float, end: float) -> list[dict]:
    """What a Grafana panel shows for ``[start, end]``; raises on a PromQL error."""
    r = requests.get(f"{url}/api/v1/query_range", timeout=30,
                     params={"query": promql, "start": start, "end": end, "step": "2s"})
    if r.status_code != 200:
        raise AssertionError(f"{promql}\n-> {r.status_code} {r.text[:500]}")
    return r.json()["data"]["result"]


def _wait_for(url: str, promql: str, timeout_s: float = 90) -> list[dict]:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        result = _query(url, promql)
        if result:
            return result
        time.sleep(3)
    raise AssertionError(f"no series for {promql}")


def test_prometheus_scrapes_prediction_metrics(demo_run, prometheus):
    deadline = time.time() + 120  # Ray exports every ~10 s; Prometheus scrapes every second
    result: list[dict] = []
    while time.time() < deadline:
        result = _query(prometheus, "sum by (label) (ray_patchray_predictions_total)")
        if result and sum(float(r["value"][1]) for r in result) >= 8:
            break
        time.sleep(3)
    labels = {r["metric"].get("label") for r in result}
    assert labels <= {"benign", "tumour"} and labels, result
    assert sum(float(r["value"][1]) for r in result) >= len(demo_run.predictions)
    targets = requests.get(f"{prometheus}/api/v1/targets", timeout=10).json()["data"]
    assert targets["activeTargets"], "Ray's service-discovery file listed no target"
    assert all(t["health"] == "up" for t in targets["activeTargets"]), targets


def test_batch_size_histogram_is_queryable(demo_run, prometheus):
    _wait_for(prometheus, "ray_patchray_inference_batch_size_count", 60)
    (series, *_) = _query(prometheus, "sum(ray_patchray_inference_batch_size_count)")
    assert float(series["value"][1]) >= 1


def test_service_metrics_are_scraped_and_queryable(demo_run, prometheus):
    """patchray's own series beside Ray Serve's: requests by route template and status, a
    latency histogram, the predicted-positive and review rates, the score histogram, and
    which model version each classifier replica serves."""
    requests.post(f"{demo_run.service_url}/v1/classify", data=b"x", timeout=30,
                  headers={"Authorization": f"Bearer {demo_run.key}",
                           "Content-Type": "text/plain"})  # one 415, so a status shows
    by_route = _wait_for(prometheus, 'sum by (route, status) (ray_patchray_requests_total)')
    pairs = {(r["metric"]["route"], r["metric"]["status"]) for r in by_route}
    assert ("/v1/classify", "200") in pairs
    assert all(not route.startswith("/v2/models/") or "{name}" in route for route, _ in pairs)
    _wait_for(prometheus, "sum(ray_patchray_request_latency_ms_bucket)")
    (p50,) = _wait_for(prometheus, "histogram_quantile(0.5, sum by (le) "
                       "(ray_patchray_request_latency_ms_bucket))")
    assert float(p50["value"][1]) > 0
    (positive,) = _wait_for(prometheus, 'sum(ray_patchray_predictions_total{label="tumour"}) '
                            "/ sum(ray_patchray_predictions_total)")
    assert 0.0 <= float(positive["value"][1]) <= 1.0
    _wait_for(prometheus, "sum(ray_patchray_tumour_probability_bucket)")
    # The served version as a gauge (re-set every few seconds: Ray drops stale gauges).
    version = requests.get(f"{demo_run.service_url}/healthz", timeout=30).json()["model_version"]
    served = _wait_for(prometheus, "max by (model_version) (ray_patchray_model_info) == 1")
    assert version in {r["metric"]["model_version"] for r in served}, served
    _wait_for(prometheus, "ray_serve_num_http_requests_total")  # Serve's own, beside ours


# ------------------------------------------------ dashboards and alerts on live data


@dataclass(frozen=True)
class Window:
    start: float  # before the training run and the traffic


def _png(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def _send_traffic(demo_run, n: int = 12) -> None:
    """A little of everything the dashboards show: classified patches, a refused body
    (415), an unauthenticated request (401), health probes."""
    auth = {"Authorization": f"Bearer {demo_run.key}"}
    size = requests.get(f"{demo_run.service_url}/v1/model", headers=auth,
                        timeout=30).json()["input"]["size"]
    rng = np.random.default_rng(7)
    for i in range(n):
        body = _png(rng.integers(60 + 10 * (i % 8), 230, (size, size, 3), dtype=np.uint8))
        r = requests.post(f"{demo_run.service_url}/v1/classify", data=body, timeout=60,
                          headers={**auth, "Content-Type": "image/png"})
        assert r.status_code == 200, r.text
    requests.post(f"{demo_run.service_url}/v1/classify", data=b"x", timeout=30,
                  headers={**auth, "Content-Type": "text/plain"})
    requests.post(f"{demo_run.service_url}/v1/classify", data=b"x", timeout=30)
    requests.get(f"{demo_run.service_url}/healthz", timeout=30)


@pytest.fixture(scope="module")
def live_window(demo_run, prometheus, ray_cluster, tiny_dataset, tmp_path_factory) -> Window:
    """One short training run (tiny model, 1 worker, 3 epochs: ~1 min) while Prometheus
    scrapes it, then a little traffic to the demo's service.

    The demo run's own training ended before this module's Prometheus started, and Ray
    drops a gauge seconds after the worker that set it is gone, so the training panels need
    a run that Prometheus watched; it is the smallest one patchray can train."""
    from patchray.config import TrainJobConfig, load_config
    from patchray.data.manifest import PatchDataset
    from patchray.training.trainer import run_training

    start = time.time()
    _wait_for(prometheus, "up", 30)
    root = tmp_path_factory.mktemp("monitored-train")
    cfg = load_config(model=TrainJobConfig, overrides=[
        f"runs_root={root}", "train.model=tiny", "train.input_size=32", "train.batch_size=8",
        "train.num_workers=1", "train.epochs=3", "data.augment=false"])
    run_training(cfg, dataset=PatchDataset.open(tiny_dataset), storage_root=str(root),
                 run_name="monitored", local_dir=str(root))
    _send_traffic(demo_run)
    # Ray's workers report every 10 s; wait until the last epoch and the traffic are in.
    deadline = time.time() + 90
    while time.time() < deadline:
        epochs = _query_range(prometheus, 'max(ray_patchray_train_epochs_completed{run="monitored"})',
                              start, time.time())
        served = _query(prometheus, 'sum(ray_patchray_requests_total{status="415"})')
        controller = _query_range(  # Ray Train's controller reports on its own schedule
            prometheus, 'ray_train_controller_state{ray_train_run_name="monitored"} == 1',
            start, time.time())
        if (epochs and max(float(v) for _, v in epochs[0]["values"]) >= 3 and served
                and float(served[0]["value"][1]) >= 2 and controller):
            break
        time.sleep(2)
    return Window(start)


def dashboard_expressions() -> list[tuple[str, str]]:
    """(where, PromQL) of every target of every panel, Grafana variables filled in."""
    found = []
    for path in DASHBOARDS:
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel.get("targets", []):
                expr = target["expr"]
                for name, value in GRAFANA_VARIABLES.items():
                    expr = expr.replace(name, value)
                assert "$" not in expr, f"{path.name}: unknown Grafana variable in {expr}"
                found.append((f"{path.name}: {panel['title']} [{target['refId']}]", expr))
    return found


def alert_rules() -> list[dict]:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"]
            for rule in group["rules"]]


_SET_OPERATOR = re.compile(r"\b(and|or|unless)\b(\s+on\s*\([^)]*\))?")
_COMPARISON = re.compile(r"(==|!=|>=|<=|>|<)(\s+bool)?")
# Selectors on one value of Ray Train's controller state are widened to every state: on a
# healthy run ERRORED never happens, and FINISHED (the stall alert's exclusion) is the
# controller's last state, held for less than Ray's 10 s report interval before the actor
# exits, so a scrape catches it only sometimes. The widened operand still proves that the
# series and its labels exist as the rule names them.
_CONDITION_SELECTORS = {'{ray_train_controller_state="ERRORED"}': "",
                        '{ray_train_controller_state="FINISHED"}': ""}


def _top_level_split(expr: str, pattern: re.Pattern) -> list[str]:
    """``expr`` split where ``pattern`` matches outside parentheses, braces and strings."""
    parts, depth, last, i, quoted = [], 0, 0, 0, False
    while i < len(expr):
        c = expr[i]
        if c == '"' and (i == 0 or expr[i - 1] != "\\"):
            quoted = not quoted
        elif not quoted and c in "([{":
            depth += 1
        elif not quoted and c in ")]}":
            depth -= 1
        elif not quoted and depth == 0:
            m = pattern.match(expr, i)
            # "=~" and "!~" are label matchers (inside braces), "=" alone is not an operator
            if m and not (m.group(1) in (">", "<") and expr[i + 1:i + 2] == "="):
                parts.append(expr[last:i])
                i = last = m.end()
                continue
        i += 1
    parts.append(expr[last:])
    return [p.strip() for p in parts if p.strip()]


def alert_operands(expr: str) -> list[str]:
    """The vector expressions an alert compares, without its thresholds: every operand of
    its top-level ``and``/``or``/``unless`` and comparisons, number literals dropped. An
    alert condition is empty on a healthy system; its operands must not be."""
    for selector, widened in _CONDITION_SELECTORS.items():
        expr = expr.replace(selector, widened)
    operands = []
    for part in _top_level_split(expr, _SET_OPERATOR):
        for side in _top_level_split(part, _COMPARISON):
            try:
                float(side)
            except ValueError:
                operands.append(side)
    return operands


def test_alert_operands_are_the_expressions_without_thresholds():
    assert alert_operands("a > 0.01") == ["a"]
    assert alert_operands('(x{s=~"5.."} or y * 0) / y > 0.01 and z >= 20') == [
        '(x{s=~"5.."} or y * 0) / y', "z"]
    assert alert_operands("t - max by (r) (m) > (c or d * 0 + 1800) and on (r) e < f") == [
        "t - max by (r) (m)", "(c or d * 0 + 1800)", "e", "f"]
    assert alert_operands('max(s{ray_train_controller_state="ERRORED"}) > 0') == ["max(s)"]
    assert alert_operands('a unless on (r) f(s{ray_train_controller_state="FINISHED"} == 1)') == [
        "a", "f(s == 1)"]


def test_every_dashboard_and_alert_expression_returns_live_data(prometheus, live_window):
    """Every panel target of both dashboards and every operand of every alert returns data
    over the window of the monitored training run and the traffic; every alert expression
    itself runs without an error (it may be empty: the system is healthy)."""
    end = time.time()
    checks = dashboard_expressions()
    assert len(checks) >= 20, checks
    for rule in alert_rules():
        _query_range(prometheus, rule["expr"], live_window.start, end)  # raises on an error
        checks += [(f"alert {rule['alert']} operand", op) for op in alert_operands(rule["expr"])]
    empty = [f"{where}: {expr}" for where, expr in checks
             if not _query_range(prometheus, expr, live_window.start, end)]
    assert not empty, "no data for:\n" + "\n".join(empty)


def test_prometheus_loaded_and_evaluates_every_alert_rule(prometheus, live_window):
    groups = requests.get(f"{prometheus}/api/v1/rules", timeout=10).json()["data"]["groups"]
    rules = {r["name"]: r for g in groups for r in g["rules"]}
    assert set(rules) == {r["alert"] for r in alert_rules()}
    assert all(r["health"] == "ok" and not r.get("lastError") for r in rules.values()), rules
    firing = requests.get(f"{prometheus}/api/v1/alerts", timeout=10).json()["data"]["alerts"]
    # Healthy service, finished training: nothing is pending or firing.
    assert not firing, firing


def test_training_metrics_describe_the_run(prometheus, live_window):
    """The monitored run's gauges: 3 of 3 epochs, labels without anything about patients."""
    end = time.time()
    (done,) = _query_range(prometheus, 'ray_patchray_train_epochs_completed{run="monitored"}',
                           live_window.start, end)
    assert max(float(v) for _, v in done["values"]) == 3
    assert {"run", "model", "kind", "attempt"} <= set(done["metric"])
    assert done["metric"]["kind"] == "train" and done["metric"]["model"] == "tiny"
    (auc,) = _query_range(prometheus, 'ray_patchray_train_val_auc{run="monitored"}',
                          live_window.start, end)
    assert all(0.0 <= float(v) <= 1.0 for _, v in auc["values"])
    (rate,) = _query_range(prometheus, "max(ray_patchray_model_validation_positive_rate)",
                           live_window.start, end)
    assert all(0.0 <= float(v) <= 1.0 for _, v in rate["values"])
