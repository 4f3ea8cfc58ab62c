"""What a tuning experiment leaves for people: the trial table (CSV and Markdown), a picture
of every trial's validation AUC against epochs, and the best point as a train job spec.

Each trial's history comes from its Ray Train run's latest checkpoint (``meta.json``): it
spans pauses and resumes, which Tune's own per-trial results restart at.
"""

from __future__ import annotations

import csv
import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from patchray.config import SEARCH_KEYS, TrainJobConfig, TuneJobConfig, dump_config
from patchray.tuning.space import trial_config
from patchray.tuning.trial import METRIC

log = logging.getLogger(__name__)

TABLE_CSV, TABLE_MD, CURVES_PNG, BEST_SPEC = "trials.csv", "trials.md", "trial_curves.png", "best.yaml"


@dataclass(frozen=True)
class TrialRecord:
    trial_id: str
    params: dict[str, Any]
    history: list[dict[str, Any]]  # one entry per trained epoch (Ray Train checkpoint meta)
    resumes: int  # times the trial continued from its own checkpoint (pauses, restarts)
    checkpoint: str  # the trial's best checkpoint (by val AUC)
    error: str = ""

    @property
    def epochs(self) -> int:
        return len(self.history)

    @property
    def best_auc(self) -> float:
        return max((h[METRIC] for h in self.history), default=float("nan"))

    @property
    def best_epoch(self) -> int:
        return 1 + max(range(self.epochs), key=lambda i: self.history[i][METRIC]) if self.history else 0

    def outcome(self, max_t: int) -> str:
        if self.error:
            return "error"
        return "finished" if self.epochs >= max_t else "stopped early"


@dataclass(frozen=True)
class TuneSummary:
    records: list[TrialRecord]
    max_t: int
    scheduler: str

    @property
    def best(self) -> TrialRecord:
        scored = [r for r in self.records if r.history]
        if not scored:
            raise ValueError("no trial trained an epoch")
        return max(scored, key=lambda r: r.best_auc)

    @property
    def total_epochs(self) -> int:
        return sum(r.epochs for r in self.records)


def collect(result_grid: Any, trials_root: Path, max_t: int, scheduler: str) -> TuneSummary:
    """One :class:`TrialRecord` per trial of a finished ``Tuner.fit()``."""
    from patchray.training.trainer import previous_result, read_meta
    from patchray.tuning.trial import trial_run_name

    records = []
    for result in result_grid:
        trial_id = (result.metrics or {}).get("trial_id") or Path(result.path).name
        run = previous_result(str(trials_root), trial_run_name(trial_id))
        meta = read_meta(run.checkpoint) if run is not None else {"history": [], "resumes": []}
        best = run.get_best_checkpoint(metric=METRIC, mode="max") if run is not None else None
        records.append(TrialRecord(
            trial_id=trial_id,
            params={k: v for k, v in (result.config or {}).items() if k in SEARCH_KEYS},
            history=meta["history"],
            resumes=len(meta.get("resumes", [])),
            checkpoint=best.path if best is not None else "",
            error=str(result.error).strip().splitlines()[-1] if result.error else "",
        ))
    records.sort(key=lambda r: r.trial_id)
    return TuneSummary(records, max_t, scheduler)


def table_rows(summary: TuneSummary) -> list[dict[str, Any]]:
    keys = [k for k in SEARCH_KEYS if any(k in r.params for r in summary.records)]
    rows = []
    for r in summary.records:
        row: dict[str, Any] = {"trial": r.trial_id}
        row.update({k: r.params.get(k, "") for k in keys})
        row.update({
            "epochs": r.epochs, "best_val_auc": round(r.best_auc, 4), "best_epoch": r.best_epoch,
            "outcome": r.outcome(summary.max_t), "stopped_early": r.outcome(summary.max_t) == "stopped early",
            "resumed": r.resumes, "checkpoint": r.checkpoint,
        })
        rows.append(row)
    return rows


def to_csv(rows: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]) if rows else ["trial"])
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 0.01 else f"{value:.4g}"
    return str(value)


def to_markdown(rows: list[dict[str, Any]], *, drop: tuple[str, ...] = ()) -> str:
    """A Markdown table (``drop``: columns to leave out, e.g. long paths on a terminal)."""
    if not rows:
        return "(no trials)\n"
    cols = [c for c in rows[0] if c not in drop]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_cell(row[c]) for c in cols) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def plot_curves(summary: TuneSummary, path: Path, *, title: str = "") -> None:
    """Every trial's val AUC per epoch; x marks where the scheduler stopped a trial, the best
    trial is drawn thick, dotted lines are Hyperband's rungs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=120)
    draw_curves(ax, summary, title=title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def draw_curves(ax: Any, summary: TuneSummary, *, title: str = "") -> None:
    """:func:`plot_curves` onto matplotlib axes ``ax`` (benchmarks put two side by side)."""
    best = summary.best.trial_id if any(r.history for r in summary.records) else None
    for r in summary.records:
        if not r.history:
            continue
        xs = [h["epoch"] + 1 for h in r.history]
        ys = [h[METRIC] for h in r.history]
        thick = r.trial_id == best
        line, = ax.plot(xs, ys, lw=2.6 if thick else 1.1, alpha=1.0 if thick else 0.75,
                        label=f"{r.trial_id} (best {r.best_auc:.3f})" if thick else None)
        stopped = r.outcome(summary.max_t) != "finished"
        ax.plot(xs[-1], ys[-1], "x" if stopped else "o", color=line.get_color(), ms=7)
    for rung in rungs(summary):
        ax.axvline(rung, ls=":", color="grey", lw=0.8)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation AUC")
    ax.set_xlim(0.5, summary.max_t + 0.5)
    ax.set_title(title or f"{summary.scheduler}: {len(summary.records)} trials, "
                          f"{summary.total_epochs} epochs (x: stopped early)")
    if best:
        ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)


def rungs(summary: TuneSummary) -> list[int]:
    """Epochs at which trials were stopped or paused (the rungs the scheduler used)."""
    return sorted({r.epochs for r in summary.records if r.epochs and r.epochs < summary.max_t})


def best_spec(cfg: TuneJobConfig, summary: TuneSummary) -> TrainJobConfig:
    """The best trial's point as a ``patchray train`` job: the full budget, the job's own
    worker count, a new run name."""
    best = summary.best
    train_cfg = trial_config(cfg, best.params, epochs=cfg.tune.then_train_epochs or cfg.tune.max_t,
                             num_workers=cfg.train.num_workers)
    return train_cfg.model_copy(update={"name": f"{cfg.name}-best"})


def write_results(cfg: TuneJobConfig, summary: TuneSummary, out: Path) -> TrainJobConfig:
    """Write the table, the picture and the best spec under ``out``; return the best spec."""
    out.mkdir(parents=True, exist_ok=True)
    rows = table_rows(summary)
    (out / TABLE_CSV).write_text(to_csv(rows))
    (out / TABLE_MD).write_text(to_markdown(rows))
    plot_curves(summary, out / CURVES_PNG)
    spec = best_spec(cfg, summary)
    best = summary.best
    header = (f"# Best of tuning job {cfg.name!r}: trial {best.trial_id}, val AUC "
              f"{best.best_auc:.4f} at epoch {best.best_epoch} of {best.epochs}.\n"
              f"#   patchray train --config {out / BEST_SPEC}\n")
    (out / BEST_SPEC).write_text(header + dump_config(spec))
    return spec
