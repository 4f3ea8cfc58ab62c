"""`patchray tune` on the session's Ray cluster: Hyperband's pauses resume from each trial's
own checkpoint, a killed driver's experiment is restored by running the same command, and
the results (table, curves, best spec, --then-train model) are written.

The CLI runs as a subprocess that joins the session cluster (``ray.address``): killing it
is what a driver crash is on a real cluster, where the cluster outlives the driver. (A
second local Ray instance on this host would also confuse Ray Train's placement-group
cleaner, which looks the cluster up.)
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from patchray.registry.store import ModelRegistry

pytestmark = pytest.mark.integration

MAX_T = 3


def tune_overrides(runs: Path, data_root: str, name: str) -> list[str]:
    """3 trials of the tiny model, up to 3 epochs: Hyperband (eta 3) runs all 3 for one
    epoch and the best one to epoch 3."""
    return [
        f"name={name}", f"runs_root={runs}", f"data.root={data_root}",
        "train.model=tiny", "train.input_size=32", "train.batch_size=16",
        "train.keep_checkpoints=3", "data.augment=false",
        "tune.num_samples=3", f"tune.max_t={MAX_T}", "tune.reduction_factor=3",
        "tune.space.learning_rate={loguniform: [1.0e-3, 3.0e-2]}",
        "tune.space.width={choice: [1.0, 2.0]}",
    ]


def _spawn(args: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "patchray.cli", *args], env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _trial_statuses(exp: Path) -> dict[str, str]:
    """Trial id -> status, from the experiment state Tune saved (public ExperimentAnalysis)."""
    from ray.tune import ExperimentAnalysis

    try:
        return {t.trial_id: t.status for t in ExperimentAnalysis(str(exp)).trials}
    except Exception:  # not written yet, or being rewritten
        return {}


def _snapshot(run: Path) -> bytes:
    return (run / "checkpoint_manager_snapshot.json").read_bytes()


def _rows(results: Path) -> list[dict[str, str]]:
    return list(csv.DictReader((results / "trials.csv").open()))


def test_killed_driver_is_restored_by_the_same_command_then_trains_the_best(
        ray_cluster, tiny_dataset, tmp_path):
    from patchray.config import TrainJobConfig, load_config

    address = ray_cluster.get_runtime_context().gcs_address
    runs = tmp_path / "runs"
    args = ["tune", *sum((["--set", o] for o in tune_overrides(runs, tiny_dataset, "search")), []),
            "--set", f"ray.address={address}"]
    exp = runs / "search"
    first_log, second_log = tmp_path / "first.out", tmp_path / "second.out"

    proc = _spawn(args, first_log)
    deadline = time.monotonic() + 420
    finished: list[str] = []
    while proc.poll() is None and time.monotonic() < deadline:
        statuses = _trial_statuses(exp / "tune")
        finished = [t for t, s in statuses.items() if s == "TERMINATED"]
        if finished:
            break
        time.sleep(1.0)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert finished, "no trial finished in time:\n" + first_log.read_text()
    # Every trial that ended, by Tune's saved state or by patchray's record of the decision
    # (Tune saves its state every 2 s, patchray each decision as it is made).
    ended = {p.parent.name.removeprefix("trial-") for p in (exp / "trials").glob("*/outcome.json")}
    assert set(finished) <= ended
    snapshots = {t: _snapshot(exp / "trials" / f"trial-{t}") for t in ended}

    second = _spawn([*args, "--then-train"], second_log)
    try:
        assert second.wait(timeout=600) == 0, second_log.read_text()
    finally:
        if second.poll() is None:
            os.killpg(second.pid, signal.SIGKILL)
    out = second_log.read_text()
    assert "restoring the experiment" in out
    for t in finished:  # finished trials are not run again...
        assert f"trial {t} started" not in out
    for t in ended:  # ...nor trained again
        assert _snapshot(exp / "trials" / f"trial-{t}") == snapshots[t]

    rows = _rows(exp / "results")
    assert len(rows) == 3
    outcomes = sorted((r["outcome"], int(r["epochs"])) for r in rows)
    # Hyperband's one bracket: every trial trains one epoch, the best trains on to max_t.
    assert outcomes == [("finished", MAX_T), ("stopped early", 1), ("stopped early", 1)], rows
    best_row = next(r for r in rows if r["outcome"] == "finished")
    assert Path(best_row["checkpoint"]).is_dir()
    assert (exp / "results" / "trial_curves.png").read_bytes()[:4] == b"\x89PNG"
    assert (exp / "results" / "trials.md").read_text().count("\n") == 2 + 3

    best = load_config(exp / "results" / "best.yaml", model=TrainJobConfig)
    assert best.name == "search-best" and best.train.epochs == MAX_T
    assert best.train.learning_rate == pytest.approx(float(best_row["learning_rate"]))
    # --then-train: trained, exported, evaluated and registered like `patchray train`.
    pointer = json.loads((runs / "search-best" / "model.json").read_text())
    registry = ModelRegistry(pointer["registry"])
    card = registry.card(pointer["name"], pointer["version"])
    assert card.lineage["run_dir"] == str(runs / "search-best")
    assert card.training_config["train"]["learning_rate"] == best.train.learning_rate
    registry.verify(card.name, card.version)
    metrics = json.loads((runs / "search-best" / "report" / "metrics.json").read_text())
    assert 0.0 <= metrics["test"]["auc"] <= 1.0

    # The terminal: patchray's decisions, not Ray's logs.
    lines = [ln for ln in (first_log.read_text() + out).splitlines() if ln.strip()]
    assert all(ln.startswith(("[patchray]", "patchray:")) for ln in lines), lines
    stopped = {ln.split()[2] for ln in lines if ln.endswith("stopped early")}
    assert len(stopped) == 2, lines
    assert any("finished the full budget" in ln for ln in lines)


class PauseOnceAt:
    """A real Tune scheduler (FIFO) that pauses every trial once, after epoch ``epoch``:
    the pause Hyperband makes between rungs, for every trial and deterministically."""

    def __new__(cls, epoch: int):
        from ray.tune.schedulers import FIFOScheduler, TrialScheduler

        class _PauseOnce(FIFOScheduler):
            def __init__(self) -> None:
                super().__init__()
                self.paused: set[str] = set()

            def on_trial_result(self, tune_controller, trial, result):
                if result.get("epochs_done") == epoch and trial.trial_id not in self.paused:
                    self.paused.add(trial.trial_id)
                    return TrialScheduler.PAUSE
                return TrialScheduler.CONTINUE

        return _PauseOnce()


def test_paused_trials_resume_from_their_own_checkpoint(ray_cluster, tiny_dataset, tmp_path,
                                                        caplog):
    from patchray.config import TuneJobConfig, load_config
    from patchray.models import create_model
    from patchray.models.keras_compat import load_tensorflow
    from patchray.training.loop import weights_digest
    from patchray.training.trainer import previous_result, read_meta
    from patchray.tuning.trial import trial_run_name
    from patchray.workflows.tune import run_tune_job

    cfg = load_config(model=TuneJobConfig, overrides=[
        *tune_overrides(tmp_path / "runs", tiny_dataset, "paused"),
        "tune.num_samples=2", "tune.scheduler=random"])
    caplog.set_level("INFO", logger="patchray.tune")
    result = run_tune_job(cfg, scheduler=PauseOnceAt(1), shutdown=False)

    assert len(result.summary.records) == 2
    tf = load_tensorflow()
    for rec in result.summary.records:
        assert not rec.error
        # The epoch counter continues across the pause: 0, 1, 2 (not 0, 0, 1, ...).
        assert [h["epoch"] for h in rec.history] == [0, 1, 2]
        assert [h["attempt"] for h in rec.history] == [1, 2, 2]
        run = previous_result(str(result.paths.trials), trial_run_name(rec.trial_id))
        (resume,) = read_meta(run.checkpoint)["resumes"]
        assert resume["from_epoch"] == 0
        # The weights after resuming are the epoch-1 checkpoint's, bit for bit: the digest
        # the resumed workers took right after restoring equals the checkpoint's own...
        first = next(c for c, m in run.best_checkpoints if m["epoch"] == 0)
        first_meta = read_meta(first)
        assert resume["restored_weights_sha256"] == first_meta["weights_sha256"]
        # ...and a model loaded here from that checkpoint's files.
        model = create_model("tiny", input_size=32, width=rec.params["width"])
        with first.as_directory() as d:
            tf.train.Checkpoint(model=model).restore(
                os.path.join(d, first_meta["tf_checkpoint"])).expect_partial()
        assert weights_digest(model.get_weights()) == first_meta["weights_sha256"]
    said = caplog.text
    assert said.count("paused at its rung") == 2 and said.count("resumed from its own checkpoint") == 2
