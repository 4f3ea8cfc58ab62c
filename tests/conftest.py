"""Shared fixtures: one real local Ray cluster per test session, with fixed resources.

Integration tests share the cluster (starting Ray costs ~10 s on 2 cores) and a single tiny
end-to-end pipeline run, whose outputs several tests inspect from different sides.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_IDC = REPO.parent / "shared" / "data" / "idc-sample" / "IDC_regular_ps50_idx5"

# Before anything imports TensorFlow in this process (export runs in the test process).
from patchray.runtime import prepare_process  # noqa: E402

prepare_process()


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true",
                     help="also run tests marked slow (big models on Ray Train, minutes each)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --run-slow (make test PYTEST_ARGS=--run-slow)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def metrics_port() -> int:
    return free_port()


@pytest.fixture(scope="session")
def ray_cluster(metrics_port):
    """A real local Ray cluster: 4 logical CPUs on 2 cores leaves room for Ray Data; one
    trial slot, which `patchray tune` jobs joining it share (patchray.tuning.plan.SLOT)."""
    import ray

    from patchray.config import RayConfig
    from patchray.runtime import init_ray
    from patchray.tuning.plan import SLOT

    init_ray(RayConfig(num_cpus=4, object_store_memory_mb=768, resources={SLOT: 1.0}),
             metrics_port=metrics_port)
    yield ray
    from ray import serve

    serve.shutdown()
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> str:
    """An ingested synthetic dataset, 3 patients x 16 patches of 32x32: one patient per split."""
    from patchray.config import DataConfig
    from patchray.data.ingest import ingest_synthetic

    root = str(tmp_path_factory.mktemp("tiny-data"))
    data = DataConfig.model_validate(
        {"synthetic": {"num_patients": 3, "patches_per_patient": 16, "patch_size": 32}}
    )
    ingest_synthetic(data, root)
    return root


@pytest.fixture(scope="session")
def shared_idc() -> Path:
    if not SHARED_IDC.is_dir():
        pytest.skip(f"real IDC sample not present at {SHARED_IDC}")
    return SHARED_IDC


@pytest.fixture(scope="session")
def demo_run(ray_cluster, tmp_path_factory, metrics_port):
    """One tiny end-to-end run (2 train workers, 3 epochs), left serving for the tests."""
    from patchray.config import DemoConfig, load_config
    from patchray.workflows.demo import run_demo

    runs = tmp_path_factory.mktemp("runs")
    cfg = load_config(
        model=DemoConfig,
        overrides=[
            f"runs_root={runs}",
            "data.synthetic.num_patients=6",
            "data.synthetic.patches_per_patient=120",
            "train.epochs=3",
            "train.batch_size=16",
            f"serve.port={free_port()}",
            f"serve.metrics_port={metrics_port}",
            "serve.demo_requests=8",
            # Quick to follow promotions and revocations, so the tests that do both are short.
            "serve.reload_interval_s=1",
            "serve.keys_refresh_s=1",
            "registry.alias=staging",  # served as NAME@staging, as make demo does
            # Raw uint8 layout end to end (train, export sample, scoring, HTTP demo); the
            # PNG layout runs end to end in test_train_cli and `make demo`.
            "data.encoding=raw",
        ]
    )
    return run_demo(cfg, shutdown=False)
