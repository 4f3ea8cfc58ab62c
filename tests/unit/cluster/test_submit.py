"""`patchray submit` / `patchray jobs` without a cluster: the entrypoint, the runtime_env
(no secrets in it), the spec paths, the token, the address, the job tables and exit status."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from patchray import cli
from patchray.cluster import submit as jobs
from patchray.errors import ClusterError, ConfigError
from patchray.runtime import PROCESS_ENV

REPO = Path(__file__).resolve().parents[3]


def test_entrypoint_is_the_local_command_line_quoted():
    entry = jobs.build_entrypoint(["train", "--config", "jobs/a b.yaml", "--set", "name=x;y"])
    assert entry == "python -m patchray.cli train --config 'jobs/a b.yaml' --set 'name=x;y'"
    assert shlex.split(entry)[3:] == ["train", "--config", "jobs/a b.yaml", "--set", "name=x;y"]


def test_job_runs_in_the_project_with_this_package_and_the_process_env():
    request = jobs.prepare_job(["train", "--config", "jobs/train-demo.yaml"],
                               working_dir=REPO, cwd=REPO)
    env = request.runtime_env
    assert env["working_dir"] == str(REPO)
    assert env["py_modules"] == [str(REPO / "platform" / "patchray")]
    assert env["env_vars"] == PROCESS_ENV and env["env_vars"]["TF_USE_LEGACY_KERAS"] == "1"
    assert ".venv" in env["excludes"] and ".git" in env["excludes"]
    assert request.entrypoint.endswith("train --config jobs/train-demo.yaml")
    assert request.metadata["patchray_command"] == "train --config jobs/train-demo.yaml"
    installed = jobs.prepare_job(["models"], working_dir=REPO, cwd=REPO, ship_package=False)
    assert "py_modules" not in installed.runtime_env


def test_upload_excludes_never_hide_a_subpackage_of_the_shipped_package():
    # Ray applies `excludes` to py_modules too: "registry" would drop patchray/registry/.
    from ray._private.runtime_env.packaging import _get_excludes

    package = jobs.package_dir()
    excluded = _get_excludes(package, list(jobs.UPLOAD_EXCLUDES))
    files = list(package.rglob("*.py"))
    assert files and not [f for f in files if excluded(f)]
    assert excluded(package / "__pycache__")


def test_project_root_is_this_checkout():
    assert jobs.project_root() == REPO


def test_no_credentials_reach_the_job_environment(monkeypatch):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.setenv(name, "leak-me")
    request = jobs.prepare_job(["models"], working_dir=REPO, cwd=REPO,
                               env=["PATCHRAY_S3_ENDPOINT=http://minio:9000"])
    dumped = json.dumps(request.runtime_env)
    assert "leak-me" not in dumped and "AWS_" not in dumped
    assert request.runtime_env["env_vars"]["PATCHRAY_S3_ENDPOINT"] == "http://minio:9000"


@pytest.mark.parametrize("name", ["AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID",
                                  "AWS_SESSION_TOKEN", "RAY_AUTH_TOKEN", "db_password",
                                  "HF_API_KEY"])
def test_secret_looking_env_vars_are_refused(name):
    with pytest.raises(ConfigError, match="plain text"):
        jobs.job_env_vars([f"{name}=x"])


def test_env_needs_name_equals_value():
    with pytest.raises(ConfigError, match="NAME=VALUE"):
        jobs.job_env_vars(["JUSTANAME"])


def test_config_path_becomes_relative_to_the_working_dir(tmp_path):
    (tmp_path / "specs").mkdir()
    spec = tmp_path / "specs" / "a.yaml"
    spec.write_text("name: a\n")
    args = ["train", "--set", "x=1", "--config", str(spec)]
    assert jobs.relocate_config(args, working_dir=tmp_path, cwd=REPO) == [
        "train", "--set", "x=1", "--config", "specs/a.yaml"]
    assert jobs.relocate_config(["tune", "--config=specs/a.yaml"], working_dir=tmp_path,
                                cwd=tmp_path) == ["tune", "--config", "specs/a.yaml"]


def test_config_outside_the_working_dir_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="outside the job's working directory"):
        jobs.relocate_config(["train", "--config", str(REPO / "jobs" / "idc.yaml")],
                             working_dir=tmp_path, cwd=tmp_path)


def test_submit_and_jobs_cannot_run_as_jobs():
    for command in (["submit", "models"], ["jobs", "list"]):
        with pytest.raises(ConfigError, match="cannot run as a job"):
            jobs.prepare_job(command, working_dir=REPO, cwd=REPO)
    with pytest.raises(ConfigError, match="needs a patchray command"):
        jobs.prepare_job([], working_dir=REPO, cwd=REPO)


def test_relative_local_paths_are_warned_about():
    from patchray.config import TrainJobConfig, load_config

    cfg = load_config(REPO / "jobs" / "train-demo.yaml", model=TrainJobConfig)
    warned = jobs.cluster_path_warnings(cfg.model_dump(mode="json"))
    assert any(w.startswith("runs_root='runs'") for w in warned)
    assert any(w.startswith("data.root=") for w in warned)
    assert any("train.storage is empty" in w for w in warned)
    shared = load_config(REPO / "jobs" / "train-demo.yaml", model=TrainJobConfig, overrides=[
        "runs_root=/mnt/runs", "data.root=s3://b/data", "registry.root=s3://b/registry",
        "train.storage=s3://b/runs"])
    assert jobs.cluster_path_warnings(shared.model_dump(mode="json")) == []


def test_address_comes_from_the_option_then_the_environment():
    env = {"RAY_ADDRESS": "http://a:8265", "RAY_API_SERVER_ADDRESS": "http://b:8265"}
    assert jobs.api_address("http://c:8265", env) == "http://c:8265"
    assert jobs.api_address(None, env) == "http://b:8265"
    assert jobs.api_address(None, {"RAY_ADDRESS": "http://a:8265"}) == "http://a:8265"
    with pytest.raises(ClusterError, match="--address"):
        jobs.api_address(None, {})


def test_token_is_found_where_ray_looks(tmp_path):
    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text("default-token\n")
    file = tmp_path / "token"
    file.write_text(" file-token \n")
    assert jobs.auth_token({"RAY_AUTH_TOKEN": "env-token",
                            "RAY_AUTH_TOKEN_PATH": str(file)}, home) == "env-token"
    assert jobs.auth_token({"RAY_AUTH_TOKEN_PATH": str(file)}, home) == "file-token"
    assert jobs.auth_token({"RAY_AUTH_MODE": "token"}, home) == "default-token"
    # Without RAY_AUTH_MODE=token the default file is not sent to whatever cluster is asked.
    assert jobs.auth_token({}, home) is None
    assert jobs.auth_headers("t") == {"Authorization": "Bearer t"}
    assert jobs.auth_headers(None) == {}


def test_a_missing_or_empty_token_file_is_an_error(tmp_path):
    with pytest.raises(ClusterError, match="cannot read Ray's auth token"):
        jobs.auth_token({"RAY_AUTH_TOKEN_PATH": str(tmp_path / "nope")}, tmp_path)
    (tmp_path / "empty").write_text("")
    with pytest.raises(ClusterError, match="is empty"):
        jobs.auth_token({"RAY_AUTH_TOKEN_PATH": str(tmp_path / "empty")}, tmp_path)
    with pytest.raises(ClusterError, match="RAY_AUTH_TOKEN_PATH"):
        jobs.auth_token({"RAY_AUTH_MODE": "token"}, tmp_path)


def test_job_rows_and_tables():
    details = {"submission_id": "raysubmit_1", "job_id": "02000000", "status": "SUCCEEDED",
               "entrypoint": "python -m patchray.cli train", "message": "Job finished",
               "start_time": 1_700_000_000_000, "end_time": 1_700_000_125_000,
               "metadata": {"patchray_command": "train --config jobs/x.yaml"},
               "driver_node_id": "abc", "driver_exit_code": 0, "type": "SUBMISSION"}
    row = jobs.job_row(details)
    assert row["id"] == "raysubmit_1" and row["command"] == "train --config jobs/x.yaml"
    table = jobs.format_jobs([row, {**jobs.job_row({"job_id": "01000000", "type": "DRIVER"})}])
    assert "raysubmit_1" in table and "2m05s" in table and "01000000" not in table
    assert jobs.format_jobs([]) == "no jobs submitted to this cluster"
    status = jobs.format_status(row)
    assert status.startswith("raysubmit_1: SUCCEEDED (Job finished)")
    assert "driver on node abc" in status and "exit status 0" in status


def test_ray_job_details_convert_to_rows():
    from ray.job_submission import JobDetails, JobStatus, JobType

    details = JobDetails(type=JobType.SUBMISSION, submission_id="raysubmit_2",
                         entrypoint="echo", status=JobStatus.RUNNING, start_time=1)
    row = jobs.job_row(details)
    assert row["status"] == "RUNNING" and row["id"] == "raysubmit_2" and row["command"] == "echo"


@pytest.mark.parametrize("status,code,expected", [
    ("SUCCEEDED", 0, 0), ("FAILED", 2, 2), ("FAILED", None, 1), ("FAILED", 0, 1),
    ("STOPPED", None, 130), ("RUNNING", None, 0)])
def test_exit_status_follows_the_job(status, code, expected):
    assert jobs.exit_status(status, code) == expected


def test_submit_checks_the_spec_before_sending(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("trian: {epochs: 1}\n")
    # Fails here with the usual config error (exit 2), before any cluster is contacted.
    assert cli.main(["submit", "--address", "http://127.0.0.1:9", "--working-dir",
                     str(tmp_path), "train", "--config", str(bad)]) == 2
    assert "did you mean train" in capsys.readouterr().err


def test_submit_options_after_the_command_are_pointed_out(capsys):
    assert cli.main(["submit", "train", "--config", "jobs/train-demo.yaml", "--address",
                     "http://x:8265"]) == 2
    assert "put it before the command" in capsys.readouterr().err


def test_unreachable_cluster_is_a_clear_error(capsys):
    code = cli.main(["jobs", "list", "--address", "http://127.0.0.1:9"])
    assert code == 2
    assert "cannot reach the Ray cluster at http://127.0.0.1:9" in capsys.readouterr().err


def test_demo_gets_its_default_spec_explicitly():
    command = cli._checked_job_command(["demo", "--set", "train.epochs=1"])
    assert command[:3] == ["demo", "--config", str(cli.DEFAULT_SPEC)]
