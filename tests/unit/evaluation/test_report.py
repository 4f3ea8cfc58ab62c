"""Unit tests for patchray.evaluation.report (matplotlib Agg, PNG output)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from patchray.errors import DataError
from patchray.evaluation.metrics import binary_metrics
from patchray.evaluation.report import (
    plot_confusion_matrix,
    plot_learning_curves,
    plot_precision_recall,
    plot_roc,
    write_report,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

HISTORY = [
    {"epoch": 1, "loss": 0.69, "val_loss": 0.62, "auc": 0.71, "val_auc": 0.74},
    {"epoch": 2, "loss": 0.51, "val_loss": 0.49, "auc": 0.83, "val_auc": 0.85},
    {"epoch": 3, "loss": 0.42, "val_loss": 0.45, "auc": 0.88, "val_auc": 0.87},
]


@pytest.fixture(scope="module")
def scores():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 2000)
    s = np.clip(rng.normal(0.35 + 0.3 * y, 0.18), 0, 1)
    return y, s


def assert_png(path: str | Path) -> tuple[int, int]:
    p = Path(path)
    assert p.is_file()
    data = p.read_bytes()
    assert len(data) > 1000
    assert data[:8] == PNG_MAGIC
    with Image.open(p) as img:
        assert img.format == "PNG"
        width, height = img.size
    assert width > 100 and height > 100
    return width, height


def test_write_report_writes_non_empty_pngs_and_returns_their_paths(tmp_path, scores):
    y, s = scores
    out_dir = tmp_path / "reports" / "run1"  # does not exist yet
    paths = write_report(out_dir, y_true=y, y_score=s, threshold=0.4)
    assert set(paths) == {"roc", "pr", "confusion"}
    assert Path(paths["roc"]) == out_dir / "test_roc.png"
    assert Path(paths["pr"]) == out_dir / "test_pr.png"
    assert Path(paths["confusion"]) == out_dir / "test_confusion.png"
    for p in paths.values():
        assert isinstance(p, str)
        assert_png(p)
    assert not (out_dir / "learning_curves.png").exists()


def test_write_report_with_3_epoch_history_adds_learning_curves(tmp_path, scores):
    y, s = scores
    paths = write_report(
        tmp_path, y_true=y.tolist(), y_score=s.tolist(), threshold=0.5, history=HISTORY,
        prefix="val",
    )
    assert set(paths) == {"roc", "pr", "confusion", "learning_curves"}
    assert Path(paths["roc"]).name == "val_roc.png"
    assert Path(paths["learning_curves"]) == tmp_path / "learning_curves.png"
    for p in paths.values():
        assert_png(p)


def test_learning_curves_skip_absent_keys_and_plot_only_losses(tmp_path):
    history = [{"epoch": i, "loss": 1.0 / i} for i in range(1, 4)]
    path = plot_learning_curves(history, tmp_path / "lc.png", keys=("loss", "val_loss", "val_auc"))
    assert_png(path)


def test_learning_curves_reject_history_without_any_requested_key(tmp_path):
    with pytest.raises(DataError, match=r"none of the keys.*available keys: \['acc'\]"):
        plot_learning_curves([{"epoch": 1, "acc": 0.5}], tmp_path / "lc.png")
    with pytest.raises(DataError, match=r"non-empty history"):
        plot_learning_curves([], tmp_path / "lc.png")


def test_individual_plots_create_parent_dirs_and_return_path(tmp_path, scores):
    y, s = scores
    roc = plot_roc(y, s, tmp_path / "a" / "roc.png", threshold=0.45, title="ROC (val)")
    pr = plot_precision_recall(y, s, tmp_path / "b" / "pr.png")
    cm = plot_confusion_matrix(binary_metrics(y, s, 0.45), tmp_path / "c" / "cm.png")
    for p in (roc, pr, cm):
        assert isinstance(p, Path)
        assert_png(p)


def test_precision_recall_plot_with_threshold_above_all_scores_still_draws(tmp_path, scores):
    y, s = scores
    assert_png(plot_precision_recall(y, s, tmp_path / "pr.png", threshold=1.5))


def test_write_report_rejects_one_class_labels(tmp_path):
    with pytest.raises(DataError, match=r"both classes"):
        write_report(tmp_path, y_true=[0, 0, 0], y_score=[0.1, 0.2, 0.3], threshold=0.5)


def test_importing_report_does_not_import_matplotlib():
    code = (
        "import sys, patchray.evaluation.report, patchray.evaluation.metrics; "
        "assert 'matplotlib' not in sys.modules, 'matplotlib imported at module import'"
    )
    import patchray

    src = str(Path(patchray.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)
