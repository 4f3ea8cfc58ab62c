"""patchray.deploy.kuberay: the RayService renderer, on small inputs."""

from __future__ import annotations

import pytest
import yaml

from patchray.deploy.kuberay import main, render_rayservice
from patchray.errors import ConfigError

from .conftest import REPO

TEMPLATE = """\
apiVersion: ray.io/v1
kind: RayService
metadata: {name: t}
spec:
  serveConfigV2: ""
  rayClusterConfig: {headGroupSpec: {template: {spec: {containers: []}}}}
"""
SERVE = """\
# a comment that must survive
applications:
  - name: patchray
    import_path: serve.app:build
    args: {model: m@production, max_replicas: 3}
"""


def test_serve_config_is_inlined_verbatim_as_a_block():
    rendered = render_rayservice(TEMPLATE, SERVE)
    assert rendered.startswith("# GENERATED")
    doc = yaml.safe_load(rendered)
    assert doc["spec"]["serveConfigV2"] == SERVE
    assert "serveConfigV2: |" in rendered and "&id" not in rendered
    assert doc["spec"]["rayClusterConfig"] == yaml.safe_load(TEMPLATE)["spec"]["rayClusterConfig"]


def test_bad_serve_args_fail_at_render_time():
    with pytest.raises(ConfigError, match="max_replica"):
        render_rayservice(TEMPLATE, SERVE.replace("max_replicas", "max_replica"))


def test_template_without_the_serve_config_slot_is_refused():
    with pytest.raises(ConfigError, match="serveConfigV2"):
        render_rayservice(TEMPLATE.replace('  serveConfigV2: ""\n', ""), SERVE)


def test_check_mode_reports_a_stale_file(tmp_path, capsys):
    for rel in ("infra/kuberay/rayservice.template.yaml", "serve/config.yaml"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text((REPO / rel).read_text())
    assert main(["--root", str(tmp_path), "--check"]) == 1
    assert main(["--root", str(tmp_path)]) == 0
    assert main(["--root", str(tmp_path), "--check"]) == 0
    assert "up to date" in capsys.readouterr().out
