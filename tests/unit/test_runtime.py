"""Starting or joining Ray (patchray.runtime) without starting it: which address, which
runtime_env, and that a submitted job's driver joins its cluster instead of starting one."""

from __future__ import annotations

import json

import pytest

from patchray import runtime
from patchray.config import RayConfig

JOB_ENV = {runtime.RAY_JOB_CONFIG_ENV: json.dumps(
    {"runtime_env": {"env_vars": {"TF_USE_LEGACY_KERAS": "1"}, "working_dir": "gcs://x"},
     "metadata": {}})}


def test_a_spec_address_wins():
    assert runtime.cluster_address("ray://head:10001", JOB_ENV) == "ray://head:10001"


def test_a_submitted_job_joins_its_cluster():
    assert runtime.cluster_address("", JOB_ENV) == "auto"


def test_a_bare_ray_address_does_not_make_a_process_join():
    # Test sessions and other jobs export RAY_ADDRESS to their children.
    assert runtime.cluster_address("", {"RAY_ADDRESS": "127.0.0.1:6379"}) is None
    assert runtime.cluster_address("", {}) is None


def test_joined_env_has_no_credentials_and_skips_the_jobs_variables():
    environ = {**JOB_ENV, "PATCHRAY_S3_ENDPOINT": "http://s3:9000", "AWS_DEFAULT_REGION": "eu",
               "AWS_ACCESS_KEY_ID": "id", "AWS_SECRET_ACCESS_KEY": "secret",
               "AWS_SESSION_TOKEN": "token"}
    env = runtime.joined_env(environ)
    assert env["PATCHRAY_S3_ENDPOINT"] == "http://s3:9000" and env["AWS_DEFAULT_REGION"] == "eu"
    assert not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"} & set(env)
    # Ray refuses to merge a ray.init runtime_env repeating a variable of the job's own.
    assert "TF_USE_LEGACY_KERAS" not in env
    assert env["TF_CPP_MIN_LOG_LEVEL"] == "2"


def test_submitted_job_env_vars_outside_a_job_is_empty():
    assert runtime.submitted_job_env_vars({}) == {}
    assert runtime.submitted_job_env_vars({runtime.RAY_JOB_CONFIG_ENV: "not json"}) == {}


@pytest.fixture
def fake_ray(monkeypatch):
    import ray

    calls: list[dict] = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: calls.append(kw))
    monkeypatch.setattr(ray, "shutdown", lambda: None)
    yield calls
    runtime._joined[0] = False


def test_init_ray_inside_a_submitted_job_connects_with_auto(fake_ray, monkeypatch):
    monkeypatch.setenv(runtime.RAY_JOB_CONFIG_ENV, JOB_ENV[runtime.RAY_JOB_CONFIG_ENV])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "id")
    runtime.init_ray(RayConfig(num_cpus=4, resources={"x": 1.0}), resources={"slot": 1.0})
    (kwargs,) = fake_ray
    assert kwargs["address"] == "auto"
    # Nothing that only a new local cluster takes (Ray raises on them when joining).
    assert not {"num_cpus", "resources", "object_store_memory"} & set(kwargs)
    assert "secret" not in json.dumps(kwargs.get("runtime_env"))
    # Workers' runtime_env (Ray Train's worker_runtime_env) stays credential-free too.
    assert "AWS_SECRET_ACCESS_KEY" not in runtime.runtime_env()["env_vars"]
    runtime.shutdown()
    assert runtime._joined[0] is False


def test_init_ray_without_a_cluster_starts_a_local_one(fake_ray, monkeypatch):
    monkeypatch.delenv(runtime.RAY_JOB_CONFIG_ENV, raising=False)
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")
    runtime.init_ray(RayConfig(num_cpus=3, object_store_memory_mb=100))
    (kwargs,) = fake_ray
    assert kwargs["address"] == "local" and kwargs["num_cpus"] == 3
    assert kwargs["runtime_env"]["env_vars"]["TF_USE_LEGACY_KERAS"] == "1"
