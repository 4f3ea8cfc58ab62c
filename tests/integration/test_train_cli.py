"""`patchray train` survives its own death: the driver (and the local Ray cluster it started)
is SIGKILLed after the first checkpoint, and the same command resumes from that checkpoint.

The driver runs as a subprocess in its own session with RAY_ADDRESS removed, so it starts its
own Ray cluster (init_ray uses address="local") instead of joining the test session's one.
Every process it spawned is tracked and must be gone after each run.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from tests.integration.ray_nodes import kill_described

pytestmark = pytest.mark.integration

EPOCHS = 3


def _spawn(args: list[str], log: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONUNBUFFERED"] = "1"
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "patchray.cli", *args], env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _watch(proc: subprocess.Popen, seen: set[int], until, timeout_s: float) -> None:
    """Poll until ``until()`` or the process exits, recording every descendant's pid."""
    deadline = time.monotonic() + timeout_s
    while proc.poll() is None and not until() and time.monotonic() < deadline:
        try:
            seen.update(p.pid for p in psutil.Process(proc.pid).children(recursive=True))
        except psutil.NoSuchProcess:
            break
        time.sleep(0.2)


def _survivors(seen: set[int], grace_s: float = 30) -> list[str]:
    """Processes from ``seen`` still alive after ``grace_s``; they are killed (by pid)."""
    deadline = time.monotonic() + grace_s
    alive: list[psutil.Process] = []
    while True:
        alive = []
        for pid in seen:
            try:
                p = psutil.Process(pid)
                if p.status() != psutil.STATUS_ZOMBIE:
                    alive.append(p)
            except psutil.NoSuchProcess:
                pass
        if not alive or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    return kill_described(alive)


def test_killed_driver_resumes_from_its_last_checkpoint_when_rerun(tiny_dataset, tmp_path):
    args = ["train", "--set", f"runs_root={tmp_path / 'runs'}", "--set", "name=resume",
            "--set", f"data.root={tiny_dataset}", "--set", "train.model=tiny",
            "--set", "train.input_size=32", "--set", f"train.epochs={EPOCHS}",
            "--set", "train.batch_size=8", "--set", "data.augment=false",
            "--set", "ray.num_cpus=4", "--set", "ray.object_store_memory_mb=256"]
    run_dir = tmp_path / "runs" / "resume"
    snapshot = run_dir / "train" / "checkpoint_manager_snapshot.json"

    first_log, seen_first = tmp_path / "first.log", set()
    first = _spawn(args, first_log)
    try:
        _watch(first, seen_first, until=snapshot.exists, timeout_s=600)
        assert snapshot.exists(), first_log.read_text()[-3000:]
        assert first.poll() is None, "the first run ended before it could be killed"
        os.killpg(first.pid, signal.SIGKILL)  # the driver and its whole session, at once
        first.wait(timeout=60)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    assert len(seen_first) > 3  # gcs, raylet, workers... were seen and tracked
    leaked = _survivors(seen_first)
    assert not leaked, f"processes of the killed run outlived it: {leaked}"
    checkpointed = sum(p.is_dir() for p in (run_dir / "train").glob("checkpoint_2*"))
    assert checkpointed >= 1

    second_log, seen_second = tmp_path / "second.log", set()
    second = _spawn(args, second_log)
    try:
        _watch(second, seen_second, until=lambda: False, timeout_s=900)
        assert second.wait(timeout=5) == 0, second_log.read_text()[-4000:]
    finally:
        if second.poll() is None:
            os.killpg(second.pid, signal.SIGKILL)
    leaked = _survivors(seen_second)
    assert not leaked, f"processes of the finished run outlived it: {leaked}"

    out = second_log.read_text()
    match = re.search(rf"resuming from epoch (\d+)/{EPOCHS} checkpoint", out)
    assert match, out[-4000:]
    # Quiet terminal: patchray's lines only (epoch lines from the workers included), the
    # rest (Ray, Ray Data, TensorFlow) in the run's log file.
    lines = out.splitlines()
    assert lines and all(line.startswith("[patchray] ") for line in lines), out[-4000:]
    assert len(lines) < 40, out
    assert any(re.match(rf"\[patchray\] epoch {EPOCHS}/{EPOCHS} ", line) for line in lines), out
    logged = (run_dir / "logs" / "patchray.log").read_text()
    assert "RayTrainWorker" in logged and "TEST AUC" in logged
    resumed_after = int(match.group(1))  # epochs already done when the second run started
    assert 1 <= resumed_after < EPOCHS

    metrics = json.loads((run_dir / "report" / "metrics.json").read_text())
    history = metrics["history"]
    assert [h["epoch"] for h in history] == list(range(EPOCHS))  # continuous, no repeats
    assert [h["attempt"] for h in history] == [
        1 if h["epoch"] < resumed_after else 2 for h in history]
    # The exported checkpoint is a best one by val AUC (ties allowed), whichever attempt made it.
    assert history[metrics["best_epoch"]]["val_auc"] == max(h["val_auc"] for h in history)
    registry = tmp_path / "registry"  # beside runs_root by default
    pointer = json.loads((run_dir / "model.json").read_text())
    assert pointer["ref"] == "tiny-synthetic@1" and pointer["registry"] == str(registry)
    assert (registry / "models" / "tiny-synthetic" / "1" / "model.xml").is_file()

    # Submitting the finished job again trains nothing and registers no duplicate version.
    third_log = tmp_path / "third.log"
    third = _spawn(args, third_log)
    try:
        assert third.wait(timeout=600) == 0, third_log.read_text()[-4000:]
    finally:
        if third.poll() is None:
            os.killpg(third.pid, signal.SIGKILL)
    assert "already registered tiny-synthetic@1 from the same weights" in third_log.read_text()
    assert sorted(p.name for p in (registry / "models" / "tiny-synthetic").iterdir()) == ["1"]
    digests = [json.loads(p.read_text())["trainable_weights_sha256"]
               for p in sorted((run_dir / "train" / "replicas").glob("rank*.json"))]
    assert len(digests) == 2 and digests[0] == digests[1]
