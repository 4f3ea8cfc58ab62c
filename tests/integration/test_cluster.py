"""A real two-node Ray cluster on this machine, driven only through `patchray submit` and
`patchray jobs` (the Ray Jobs API over HTTP).

Each cluster is a head node and one more node, each its own `ray start --block` process with
its own temp dir, ports and custom resource (``head_node`` / ``worker_node``), 2 CPUs each:
one Ray Train worker per node (``train.placement_strategy=STRICT_SPREAD``) and a CPU per node
left for Ray Data. The nodes get the S3 server's endpoint and credentials from the
environment they are started with, as real nodes get theirs from an instance profile:
nothing secret travels with a job. Local disks are treated as unshared: the dataset, the
Ray Train run (checkpoints, each worker's digest with its node id) and the registered model
go to the S3-compatible server.

Teardown stops the nodes by their own process groups, never with `ray stop` (which would
stop every Ray on this machine, the test session's included), and fails if any process of
the cluster (raylet, gcs_server, workers, the job's driver) outlives it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from tests.conftest import REPO
from tests.integration.ray_nodes import clean_env, two_node_cluster

from patchray import storage

pytestmark = pytest.mark.integration


def _patchray(args: list[str], *, timeout_s: float = 300, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "patchray.cli", *args], cwd=REPO,
                          env=clean_env(**env), capture_output=True, text=True,
                          timeout=timeout_s)


def _train_args(s3_server, tmp: Path, name: str) -> list[str]:
    root = s3_server.uri("cluster", name)
    overrides = [
        f"name={name}", f"runs_root={tmp / 'runs'}", f"data.root={root}/data",
        "data.synthetic.num_patients=3", "data.synthetic.patches_per_patient=16",
        "data.synthetic.patch_size=32", "data.augment=false",
        "train.model=tiny", "train.input_size=32", "train.epochs=1", "train.batch_size=8",
        "train.num_workers=2", "train.cpus_per_worker=1",
        "train.placement_strategy=STRICT_SPREAD",  # one worker per node
        f"train.storage={root}/runs", f"registry.root={root}/registry",
        "export.precisions=[f32]",
    ]
    return ["train", "--config", "jobs/train-demo.yaml",
            *[a for o in overrides for a in ("--set", o)]]


@pytest.fixture
def home(tmp_path) -> Path:
    """A HOME without ~/.ray/auth_token: clients have exactly the token a test gives them."""
    (tmp_path / "home").mkdir()
    return tmp_path / "home"


def test_training_job_runs_on_both_nodes_and_writes_to_shared_storage(s3_server, tmp_path,
                                                                       home):
    name = f"cluster-{uuid.uuid4().hex[:8]}"
    with two_node_cluster(tmp_path, RAY_AUTH_MODE="disabled") as cluster:
        run = _patchray(["submit", "--address", cluster.url, *_train_args(s3_server, tmp_path,
                                                                          name)],
                        HOME=str(home))
        print(run.stdout, run.stderr, sep="\n")  # shown with -rP, and on failure
        assert run.returncode == 0, (run.stdout[-4000:], run.stderr[-3000:])
        # The driver joined this cluster (no Ray of its own) and trained on both nodes.
        assert "joining the Ray cluster at auto (this is a submitted job)" in run.stdout
        assert "trained on 2 workers on 2 nodes" in run.stdout
        assert "TEST AUC" in run.stdout

        listed = _patchray(["jobs", "list", "--json", "--address", cluster.url], HOME=str(home))
        assert listed.returncode == 0, listed.stderr
        (job,) = [json.loads(line) for line in listed.stdout.splitlines()]
        assert job["status"] == "SUCCEEDED" and job["command"].startswith("train --config")
        status = _patchray(["jobs", "status", job["id"], "--json"],
                           RAY_ADDRESS=cluster.url, HOME=str(home))  # the address from env
        assert status.returncode == 0, status.stderr
        info = json.loads(status.stdout)
        assert info["driver_node_id"] == cluster.node_ids["head_node"]
        assert info["driver_exit_code"] == 0
        logs = _patchray(["jobs", "logs", job["id"], "--address", cluster.url], HOME=str(home))
        assert "TEST AUC" in logs.stdout
        cluster_nodes = set(cluster.node_ids.values())

    # The run's report (on the driver's node, the head) names both nodes.
    run_dir = tmp_path / "runs" / name
    metrics = json.loads((run_dir / "report" / "metrics.json").read_text())
    workers = metrics["workers"]
    assert [w["rank"] for w in workers] == [0, 1]
    assert {w["node_id"] for w in workers} == cluster_nodes
    # Everything the workers wrote went to the S3 server, nothing to the driver's disk.
    assert not (run_dir / "train").exists()
    train_run = s3_server.uri("cluster", name, "runs", name, "train")
    digests = [storage.read_json(storage.join(train_run, "replicas", f"rank{r}.json"))
               for r in (0, 1)]
    assert {d["node_id"] for d in digests} == cluster_nodes
    assert digests[0]["trainable_weights_sha256"] == digests[1]["trainable_weights_sha256"]
    assert any("/checkpoint_" in f for f in storage.list_files(train_run))
    version = s3_server.uri("cluster", name, "registry", "models", "tiny-synthetic", "1")
    assert storage.exists(storage.join(version, "model.xml"))
    card = storage.read_json(storage.join(version, "card.json"))
    assert {w["node_id"] for w in card["lineage"]["workers"]} == cluster_nodes
    assert card["lineage"]["train_run"] == train_run
    assert storage.exists(s3_server.uri("cluster", name, "data", "manifest.json"))


def test_token_cluster_refuses_submissions_without_the_token(s3_server, tmp_path, home):
    token = tmp_path / "ray-token"
    token.write_text(uuid.uuid4().hex + uuid.uuid4().hex)
    wrong = tmp_path / "wrong-token"
    wrong.write_text("not-the-token")
    data = s3_server.uri("cluster", f"auth-{uuid.uuid4().hex[:8]}")
    from patchray.config import DataConfig
    from patchray.data.ingest import ingest_synthetic

    ingest_synthetic(DataConfig.model_validate(
        {"synthetic": {"num_patients": 3, "patches_per_patient": 10, "patch_size": 16}}), data)
    validate = ["dataset", "validate", data]

    with two_node_cluster(tmp_path, RAY_AUTH_MODE="token",
                          RAY_AUTH_TOKEN_PATH=str(token)) as cluster:
        refused = _patchray(["submit", "--address", cluster.url, "--no-wait", *validate],
                            HOME=str(home))
        assert refused.returncode == 2, (refused.stdout, refused.stderr)
        assert f"the Ray cluster at {cluster.url} refused" in refused.stderr
        assert "RAY_AUTH_TOKEN_PATH" in refused.stderr
        forged = _patchray(["submit", "--address", cluster.url, "--no-wait", *validate],
                           HOME=str(home), RAY_AUTH_TOKEN_PATH=str(wrong))
        assert forged.returncode == 2 and "refused" in forged.stderr, forged.stderr
        listed = _patchray(["jobs", "list", "--address", cluster.url], HOME=str(home))
        assert listed.returncode == 2 and "refused" in listed.stderr

        ok = _patchray(["submit", "--address", cluster.url, *validate], HOME=str(home),
                       RAY_AUTH_TOKEN_PATH=str(token))
        assert ok.returncode == 0, (ok.stdout[-3000:], ok.stderr[-3000:])
        assert f"{data}: ok:" in ok.stdout

        # A job can be stopped: a training job, stopped while it starts.
        started = _patchray(["submit", "--address", cluster.url, "--no-wait",
                             *_train_args(s3_server, tmp_path, "stopped")],
                            HOME=str(home), RAY_AUTH_TOKEN=token.read_text())
        assert started.returncode == 0, started.stderr
        job_id = started.stdout.strip()
        stopped = _patchray(["jobs", "stop", job_id, "--wait", "--address", cluster.url],
                            HOME=str(home), RAY_AUTH_TOKEN_PATH=str(token))
        assert stopped.returncode == 0, stopped.stderr
        print(refused.stderr, forged.stderr, ok.stdout, stopped.stdout, sep="\n")
        assert stopped.stdout.strip() in (f"job {job_id}: STOPPED",
                                          f"job {job_id} had already ended")
        listed = _patchray(["jobs", "list", "--address", cluster.url], HOME=str(home),
                           RAY_AUTH_TOKEN_PATH=str(token))
        assert listed.returncode == 0 and job_id in listed.stdout, listed.stderr
