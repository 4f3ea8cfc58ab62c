"""Every spec and config file in the repository validates (they are user-facing examples)."""

from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("spec", sorted((REPO / "jobs").glob("*.yaml")), ids=lambda p: p.name)
def test_job_specs_validate_as_the_config_of_their_job(spec):
    from patchray.config import (
        DemoConfig, SlidePredictJobConfig, SlideTileJobConfig, TrainJobConfig, TuneJobConfig,
        load_config,
    )

    # See jobs/README.md: demo.yaml is `patchray demo`'s, tune-*.yaml `patchray tune`'s,
    # slide-tile.yaml / slide-predict.yaml `patchray slide tile` / `slide predict`'s.
    if spec.name == "demo.yaml":
        job = DemoConfig
    elif spec.name.startswith("tune-"):
        job = TuneJobConfig
    elif spec.name.startswith("lopo"):  # `patchray evaluate lopo`'s
        from patchray.config import LopoJobConfig

        job = LopoJobConfig
    elif spec.name == "slide-tile.yaml":
        job = SlideTileJobConfig
    elif spec.name == "slide-predict.yaml":
        job = SlidePredictJobConfig
    else:
        job = TrainJobConfig
    assert isinstance(load_config(spec, model=job), job)


def test_serve_config_matches_ray_schema_and_app_args():
    import importlib.util

    from ray.serve.schema import ServeDeploySchema

    config = yaml.safe_load((REPO / "serve" / "config.yaml").read_text())
    ServeDeploySchema.model_validate(config)
    spec = importlib.util.spec_from_file_location("serve_app", REPO / "serve" / "app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    (app,) = config["applications"]
    assert app["import_path"] == "serve.app:build"
    from patchray.config import ServeAppArgs

    ServeAppArgs.model_validate(app["args"])
    with pytest.raises(Exception, match="max_batch"):
        module.build({**app["args"], "max_batch": 3})
    # Serve's own timeout is set on purpose (its default is none).
    assert config["http_options"]["request_timeout_s"] > 0


def test_prometheus_config_is_valid_yaml_with_scrape_jobs():
    config = yaml.safe_load((REPO / "infra" / "prometheus" / "prometheus.yml").read_text())
    # One job, through Ray's service-discovery file: a second, static job for the same node
    # would scrape every series twice (tests/unit/infra/test_monitoring_config.py: promtool).
    assert [job["job_name"] for job in config["scrape_configs"]] == ["ray"]
    assert config["scrape_configs"][0]["file_sd_configs"]


def test_grafana_dashboard_queries_only_exported_metrics():
    import json
    import re

    source = (REPO / "platform/patchray/serving/metrics.py").read_text()
    exported = set(re.findall(r'"(patchray_[a-z_]+)"', source))
    dashboard = json.loads((REPO / "infra/grafana/patchray-serving.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {re.sub(r"_(bucket|sum|count)$", "", m) for e in exprs
            for m in re.findall(r"ray_(patchray_[a-z_]+)", e)}
    assert used and used <= exported, used - exported
