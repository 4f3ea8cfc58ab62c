"""The trial table, the trial-curve picture and the best spec, from trial histories."""

import csv
import io

from patchray.config import TrainJobConfig, TuneJobConfig, load_config
from patchray.tuning.progress import decision
from patchray.tuning.results import (
    TrialRecord,
    TuneSummary,
    rungs,
    table_rows,
    to_csv,
    to_markdown,
    write_results,
)


def record(trial_id: str, aucs: list[float], **kw) -> TrialRecord:
    history = [{"epoch": i, "val_auc": a} for i, a in enumerate(aucs)]
    return TrialRecord(trial_id=trial_id, params=kw.pop("params", {"learning_rate": 1e-3}),
                       history=history, resumes=kw.pop("resumes", 0),
                       checkpoint=f"/runs/x/trials/trial-{trial_id}/checkpoint_1", **kw)


def summary() -> TuneSummary:
    return TuneSummary([
        record("t0", [0.6], params={"learning_rate": 3e-2}),
        record("t1", [0.7, 0.8, 0.85], params={"learning_rate": 1e-3}, resumes=1),
        record("t2", [0.65], params={"learning_rate": 1e-4}),
        record("t3", [], params={"learning_rate": 5e-2}, error="ValueError: nan loss"),
    ], max_t=3, scheduler="hyperband")


def test_table_has_config_epochs_best_auc_outcome_and_checkpoint():
    rows = table_rows(summary())
    assert [r["outcome"] for r in rows] == ["stopped early", "finished", "stopped early", "error"]
    t1 = rows[1]
    assert (t1["learning_rate"], t1["epochs"], t1["best_val_auc"], t1["best_epoch"]) == (1e-3, 3, 0.85, 3)
    assert t1["resumed"] == 1 and t1["checkpoint"].endswith("checkpoint_1")
    parsed = list(csv.DictReader(io.StringIO(to_csv(rows))))
    assert [p["trial"] for p in parsed] == ["t0", "t1", "t2", "t3"]
    assert parsed[0]["stopped_early"] == "True"
    md = to_markdown(rows, drop=("checkpoint",)).splitlines()
    assert md[0].startswith("| trial | learning_rate | epochs") and "checkpoint" not in md[0]
    assert len(md) == 2 + 4
    assert summary().total_epochs == 5 and rungs(summary()) == [1]


def test_results_are_written_with_the_best_point_as_a_train_spec(tmp_path):
    cfg = load_config(model=TuneJobConfig, overrides=["name=search", "data.root=/data/x",
                                                      "tune.max_t=3", "train.num_workers=2"])
    spec = write_results(cfg, summary(), tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {"trials.csv", "trials.md",
                                                   "trial_curves.png", "best.yaml"}
    assert (tmp_path / "trial_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    again = load_config(tmp_path / "best.yaml", model=TrainJobConfig)  # ready for `patchray train`
    assert again == spec
    assert (again.name, again.train.learning_rate, again.train.epochs) == ("search-best", 1e-3, 3)
    assert again.train.num_workers == 2 and again.data.root == "/data/x"
    assert "trial t1, val AUC 0.8500" in (tmp_path / "best.yaml").read_text()


def test_decisions_are_worded_from_status_changes():
    assert decision(None, "RUNNING", 0, 9) == "started"
    assert decision("RUNNING", "PAUSED", 1, 9).startswith("paused at its rung")
    assert decision("PAUSED", "RUNNING", 1, 9, was_paused=True).startswith("resumed from its own")
    assert decision("PAUSED", "TERMINATED", 1, 9) == "stopped early"
    assert decision("RUNNING", "TERMINATED", 9, 9) == "finished the full budget"
    assert decision("RUNNING", "ERROR", 2, 9).startswith("failed")
    assert decision("RUNNING", "RUNNING", 2, 9) is None
