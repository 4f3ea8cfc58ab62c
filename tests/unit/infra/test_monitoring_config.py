"""The monitoring configuration in infra/: Prometheus accepts it (promtool), each alert fires
and stays quiet on synthetic series (promtool test rules), every alert has an operator's
runbook entry, and the dashboards only query metrics that exist.

promtool comes with Debian's `prometheus` (`make test` installs it): without it these skip
locally, and fail in CI (CI=true), where a skip would hide a broken config."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]
PROMETHEUS = REPO / "infra" / "prometheus"
GRAFANA = REPO / "infra" / "grafana"
DASHBOARDS = sorted(GRAFANA.glob("*.json"))
METRIC_SOURCES = [REPO / "platform/patchray/serving/metrics.py",
                  REPO / "platform/patchray/training/metrics.py"]


@pytest.fixture(scope="module")
def promtool() -> str:
    binary = shutil.which("promtool")
    if binary is None:
        if os.environ.get("CI") == "true":
            pytest.fail("promtool missing in CI: install Debian's prometheus (make test-deps)")
        pytest.skip("promtool not installed (Debian package prometheus; make test-deps)")
    return binary


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=PROMETHEUS, capture_output=True, text=True, timeout=60)


def alert_rules() -> list[dict]:
    groups = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_prometheus_config_and_alert_rules_pass_promtool_check(promtool):
    config = _run(promtool, "check", "config", "prometheus.yml")  # loads rule_files too
    assert config.returncode == 0, config.stdout + config.stderr
    assert "1 rule files found" in config.stdout
    rules = _run(promtool, "check", "rules", "alerts.yml")
    assert rules.returncode == 0, rules.stdout + rules.stderr


def test_alert_rules_pass_their_unit_tests(promtool):
    proc = _run(promtool, "test", "rules", "alerts_test.yml")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


def test_every_alert_has_a_unit_test_where_it_fires_and_one_where_it_stays_quiet():
    cases = [case for test in yaml.safe_load((PROMETHEUS / "alerts_test.yml").read_text())["tests"]
             for case in test["alert_rule_test"]]
    for rule in alert_rules():
        mine = [c for c in cases if c["alertname"] == rule["alert"]]
        assert any(c["exp_alerts"] for c in mine), f"{rule['alert']} never fires in a test"
        assert any(not c["exp_alerts"] for c in mine), f"{rule['alert']} is never quiet in a test"


def _github_anchor(heading: str) -> str:
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_alert_is_explained_in_the_alerts_section_of_infra_readme():
    readme = (REPO / "infra" / "README.md").read_text()
    assert "\n## Alerts\n" in readme, "infra/README.md has no '## Alerts' section"
    section = readme.split("\n## Alerts\n", 1)[1].split("\n## ", 1)[0]
    anchors = {_github_anchor(h) for h in re.findall(r"^### (.+)$", section, re.M)}
    names = [rule["alert"] for rule in alert_rules()]
    assert len(names) == len(set(names))
    for rule in alert_rules():
        notes = rule.get("annotations", {})
        assert notes.get("summary") and notes.get("description"), rule["alert"]
        path, _, anchor = notes["runbook_url"].partition("#")
        assert path == "infra/README.md" and anchor in anchors, (rule["alert"], sorted(anchors))
        assert rule["labels"]["severity"] in {"page", "ticket"}


def test_dashboards_are_grafana_json_with_a_prometheus_datasource_variable():
    assert {p.name for p in DASHBOARDS} == {"patchray-serving.json", "patchray-training.json"}
    uids = set()
    for path in DASHBOARDS:
        board = json.loads(path.read_text())
        uids.add(board["uid"])
        variables = {v["name"]: v for v in board["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource"
        assert variables["datasource"]["query"] == "prometheus"
        ids = [p["id"] for p in board["panels"]]
        assert len(ids) == len(set(ids)), path.name
        for panel in board["panels"]:
            assert panel["datasource"]["uid"] == "${datasource}", (path.name, panel["title"])
            assert panel["targets"] and all(t["expr"].strip() for t in panel["targets"])
    assert len(uids) == len(DASHBOARDS)


def _exported_names() -> set[str]:
    """The series names patchray's code exports (``ray_`` is Ray's prefix; a histogram is
    queried through its _bucket, _sum and _count series)."""
    names = set()
    for source in METRIC_SOURCES:
        for name in re.findall(r'"(patchray_[a-z0-9_]+)"', source.read_text()):
            names |= {f"ray_{name}", *(f"ray_{name}_{s}" for s in ("bucket", "sum", "count"))}
    return names


def test_dashboards_and_alerts_only_query_metrics_patchray_exports():
    exported = _exported_names()
    texts = [p.read_text() for p in DASHBOARDS] + [(PROMETHEUS / "alerts.yml").read_text()]
    used = {name for text in texts for name in re.findall(r"\bray_patchray_[a-z0-9_]+", text)}
    assert used and used <= exported, sorted(used - exported)


def test_grafana_provisioning_points_at_the_dashboards_and_a_prometheus():
    provisioning = GRAFANA / "provisioning"
    (source,) = yaml.safe_load((provisioning / "datasources/patchray.yml").read_text())["datasources"]
    assert source["type"] == "prometheus"
    (provider,) = yaml.safe_load((provisioning / "dashboards/patchray.yml").read_text())["providers"]
    assert provider["type"] == "file" and provider["options"]["path"]
