"""Training progress metrics: the values rank 0 exports after each epoch (no Ray here)."""

import pytest

from patchray.training import metrics as training_metrics
from patchray.training.metrics import GAUGES, TAG_KEYS, TrainingMetrics, epoch_values, run_labels

EPOCH = {"epoch": 1, "epochs_done": 2, "loss": 0.41, "train_seconds": 4.0, "val_seconds": 1.0,
         "finished_at": 1_800_000_000.0, "optimizer_steps": 30, "val_loss": 0.45,
         "val_auc": 0.91}


def test_epoch_values_count_progress_time_quality_and_throughput():
    values = epoch_values(EPOCH, epochs=6, steps_before=20, global_batch=32)
    assert values == {
        "patchray_train_epochs_completed": 2.0,
        "patchray_train_epochs_planned": 6.0,
        "patchray_train_last_epoch_timestamp_seconds": 1_800_000_000.0,
        "patchray_train_epoch_seconds": 5.0,
        "patchray_train_loss": 0.41,
        "patchray_train_val_loss": 0.45,
        "patchray_train_val_auc": 0.91,
        "patchray_train_patches_per_second": 10 * 32 / 4.0,  # 10 steps of 32 patches in 4 s
    }
    assert set(values) == set(GAUGES)


def test_undefined_validation_metrics_are_left_unset_not_exported_as_nan():
    values = epoch_values({**EPOCH, "val_auc": None, "loss": float("nan")}, epochs=6,
                          steps_before=0, global_batch=8)
    assert "patchray_train_val_auc" not in values and "patchray_train_loss" not in values
    assert values["patchray_train_val_loss"] == 0.45


def test_labels_name_the_run_and_kind_never_the_data():
    assert run_labels("lab-a-cnn6", {"model": "cnn6", "progress_label": ""}, 2) == {
        "run": "lab-a-cnn6", "model": "cnn6", "kind": "train", "attempt": "2"}
    assert run_labels("t", {"model": "cnn6", "progress_label": "trial_3"}, 1)["kind"] == "trial"
    assert TAG_KEYS == ("run", "model", "kind", "attempt")


class FakeGauge:
    def __init__(self, name, description="", tag_keys=()):
        self.name, self.tag_keys, self.values = name, tag_keys, {}

    def set(self, value, tags):
        assert set(tags) == set(self.tag_keys)
        self.values[tuple(sorted(tags.items()))] = value


@pytest.fixture
def gauges(monkeypatch):
    import ray.util.metrics

    monkeypatch.setattr(ray.util.metrics, "Gauge", FakeGauge)
    labels = run_labels("r", {"model": "tiny"}, 1)
    return TrainingMetrics(labels, epochs=3, global_batch=16)


def test_a_started_run_has_a_progress_clock_before_its_first_epoch(gauges, monkeypatch):
    monkeypatch.setattr(training_metrics.time, "time", lambda: 123.0)
    gauges.started(epochs_done=1)  # resumed after one epoch
    (completed,) = gauges.gauges["patchray_train_epochs_completed"].values.values()
    (clock,) = gauges.gauges["patchray_train_last_epoch_timestamp_seconds"].values.values()
    assert (completed, clock) == (1.0, 123.0)
    assert not gauges.gauges["patchray_train_val_auc"].values


def test_epoch_done_sets_every_gauge_with_the_run_labels(gauges):
    gauges.epoch_done({**EPOCH, "epochs_done": 3}, steps_before=25)
    for gauge in gauges.gauges.values():
        ((labels, value),) = gauge.values.items()
        assert dict(labels) == {"run": "r", "model": "tiny", "kind": "train", "attempt": "1"}
    assert gauges.gauges["patchray_train_patches_per_second"].values[labels] == 5 * 16 / 4.0
