"""Training progress as Prometheus metrics, for the dashboards and alerts in ``infra/``.

Rank 0 sets them at the end of every epoch (from the Keras callback that reports to Ray
Train); Ray's metrics agent exports them as ``ray_patchray_train_*``. Labels are the run
name, the architecture, ``kind`` (``train`` or a tuning ``trial``) and the attempt; never
anything about patients or patches. ``attempt`` keeps a resumed worker's series apart from
the dead one's while Ray still holds the old values (Ray drops a gauge a few seconds after
its worker stops refreshing it, so the series end with the run; alerts use
``max_over_time``).

The values are computed by plain functions (:func:`run_labels`, :func:`epoch_values`),
tested without Ray; :class:`TrainingMetrics` only hands them to ``ray.util.metrics``.
"""

from __future__ import annotations

import math
import time
from typing import Any

#: name (without Ray's ``ray_`` prefix) -> description; every one is a Gauge.
GAUGES = {
    "patchray_train_epochs_completed": "Epochs the run has finished (continues across resumes)",
    "patchray_train_epochs_planned": "Epochs the run is configured to train (train.epochs)",
    "patchray_train_last_epoch_timestamp_seconds":
        "Unix time the last epoch ended (or this attempt started, before its first epoch)",
    "patchray_train_epoch_seconds": "Wall time of the last epoch, training plus validation",
    "patchray_train_loss": "Training loss of the last epoch",
    "patchray_train_val_loss": "Validation loss of the last epoch",
    "patchray_train_val_auc": "Validation ROC AUC of the last epoch",
    "patchray_train_patches_per_second": "Training throughput of the last epoch, all workers",
}
TAG_KEYS = ("run", "model", "kind", "attempt")


def run_labels(run_name: str, config: dict[str, Any], attempt: int) -> dict[str, str]:
    """The labels of one training attempt: a tuning trial is ``kind="trial"``."""
    return {"run": run_name, "model": str(config["model"]),
            "kind": "trial" if config.get("progress_label") else "train",
            "attempt": str(attempt)}


def epoch_values(metrics: dict[str, Any], *, epochs: int, steps_before: int,
                 global_batch: int) -> dict[str, float]:
    """Gauge values after an epoch, from the dict rank 0 reports to Ray Train.

    ``steps_before``: the optimizer's step count when the epoch began; every step consumes
    ``global_batch`` patches (world size x train.batch_size), so throughput counts full
    batches (the last, partial batch of an epoch is counted as full).
    """
    steps = max(int(metrics["optimizer_steps"]) - steps_before, 0)
    train_s = float(metrics["train_seconds"])
    values = {
        "patchray_train_epochs_completed": float(metrics["epochs_done"]),
        "patchray_train_epochs_planned": float(epochs),
        "patchray_train_last_epoch_timestamp_seconds": float(metrics["finished_at"]),
        "patchray_train_epoch_seconds": train_s + float(metrics.get("val_seconds", 0.0)),
        "patchray_train_loss": float(metrics["loss"]),
        "patchray_train_val_loss": _number(metrics.get("val_loss")),
        "patchray_train_val_auc": _number(metrics.get("val_auc")),
        "patchray_train_patches_per_second": steps * global_batch / train_s if train_s > 0 else 0.0,
    }
    # A gauge cannot hold "undefined" (val AUC with one class): leave it unset instead.
    return {k: v for k, v in values.items() if math.isfinite(v)}


def _number(value: Any) -> float:
    return float("nan") if value is None else float(value)


class TrainingMetrics:
    """The run's gauges on rank 0. :meth:`started` once, :meth:`epoch_done` per epoch."""

    def __init__(self, labels: dict[str, str], *, epochs: int, global_batch: int) -> None:
        from ray.util.metrics import Gauge

        self.labels, self.epochs, self.global_batch = labels, epochs, global_batch
        self.gauges = {name: Gauge(name, description=text, tag_keys=TAG_KEYS)
                       for name, text in GAUGES.items()}

    @classmethod
    def for_worker(cls, config: dict[str, Any], attempt: int) -> TrainingMetrics:
        """Labels and batch size from Ray Train's context (run name, world size)."""
        import ray.train

        ctx = ray.train.get_context()
        return cls(run_labels(ctx.get_experiment_name(), config, attempt),
                   epochs=config["epochs"], global_batch=config["batch_size"] * ctx.get_world_size())

    def _set(self, values: dict[str, float]) -> None:
        for name, value in values.items():
            self.gauges[name].set(value, tags=self.labels)

    def started(self, epochs_done: int) -> None:
        """Progress before the first epoch of this attempt: the stall alert's clock starts."""
        self._set({"patchray_train_epochs_completed": float(epochs_done),
                   "patchray_train_epochs_planned": float(self.epochs),
                   "patchray_train_last_epoch_timestamp_seconds": time.time()})

    def epoch_done(self, metrics: dict[str, Any], steps_before: int) -> None:
        self._set(epoch_values(metrics, epochs=self.epochs, steps_before=steps_before,
                               global_batch=self.global_batch))
