"""`bench lopo`'s side-by-side table, from fold results (no Ray, no training)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from patchray.benchmarks import lopo as bench
from patchray.benchmarks.__main__ import BENCHMARKS
from patchray.config import LopoConfig
from patchray.evaluation import lopo


def _arm(auc_shift: float) -> SimpleNamespace:
    counts = {"10253": (549, 70), "8975": (103, 51), "synth-p00": (150, 46),
              "synth-p01": (150, 55)}
    g = lopo.make_groups(counts, {p: p for p in counts})
    folds = lopo.plan_folds(g, LopoConfig(hold_out=list(bench.REAL), seeds=[0, 1],
                                          val_candidates=["synth-p00", "synth-p01"]))
    rng = np.random.default_rng(1)
    results, preds = [], {}
    for f in folds:
        n, pos = g[f.held_out].patches, g[f.held_out].positives
        y = np.r_[np.ones(pos, int), np.zeros(n - pos, int)]
        p = np.clip(auc_shift * y + rng.uniform(0, 1 - auc_shift, n), 0, 1)
        results.append(lopo.fold_result(f, g, y_test=y, p_test=p, threshold=0.3, target=0.95,
                                        val_auc=0.9, best_epoch=3, val_n=150))
        preds[f.fold_id] = (y, p)
    return SimpleNamespace(results=results, summary=lopo.aggregate(results, preds))


def test_side_by_side_rows_and_goal_per_real_patient():
    arms = {"plain": _arm(0.1), "stain": _arm(0.6)}
    rows = bench.side_by_side(arms, 0.95)
    assert [r["held_out"] for r in rows] == ["10253", "8975"] and all(r["real"] for r in rows)
    for r in rows:
        assert r["plain_seeds"] == r["stain_seeds"] == 2
        assert r["stain_auc_mean"] > r["plain_auc_mean"]
        assert r["stain_goal_met"] and not r["plain_goal_met"]
        assert r["stain_val"] and "synth-p0" in r["stain_val"][0]
    md = bench.table_md(rows, ["plain", "stain"], seeds=2, epochs=3, model="cnn6",
                        has_real=True, target=0.95)
    assert md.count("| 10253 (real) |") == 1 and "+-" in md
    assert "met (2/2 seeds)" in md and "not met" in md
    assert "NO REAL DATA" in bench.table_md(rows, ["plain"], seeds=2, epochs=3, model="cnn6",
                                            has_real=False, target=0.95)


def test_registered_as_a_benchmark_with_both_arms():
    assert BENCHMARKS["lopo"] is bench.run
    assert bench.ARMS["plain"] == ["data.stain.method=none", "data.stain_augment=0.0"]
    assert any("macenko" in o for o in bench.ARMS["stain"])
