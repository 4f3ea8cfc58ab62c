"""Calibration of the served probability: fitting and applying each method, ECE, the
reliability data, JSON round trips, and the threshold chosen on the calibrated scale."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from pydantic import ValidationError

from patchray.config import EvalConfig
from patchray.errors import DataError
from patchray.evaluation.calibration import (
    CALIBRATION_METHODS,
    Calibration,
    expected_calibration_error,
    fit_calibration,
    reliability,
)
from patchray.evaluation.evaluate import calibrate_and_threshold, evaluate_model, served_scores
from patchray.evaluation.metrics import binary_metrics, choose_threshold, roc_auc


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def skewed(n: int = 600, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels and scores of a class-weighted-looking model: it ranks well (AUC ~0.9), but its
    probabilities are shifted up and squeezed (prior moved, as the demo model's 0.006
    threshold showed in reverse)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    z = rng.normal(0.0, 1.0, n) + 2.2 * (y - 0.5)  # the "true" logit, roughly
    return y, _sigmoid(0.5 * z + 2.5).astype(np.float32).astype(np.float64)


@pytest.mark.parametrize("method", ["temperature", "platt", "isotonic"])
def test_each_method_lowers_the_ece_of_miscalibrated_scores(method):
    y, p = skewed()
    cal = fit_calibration(y, p, method)
    q = cal.apply(p)
    before, after = expected_calibration_error(y, p), expected_calibration_error(y, q)
    assert before > 0.25  # badly calibrated to start with
    assert after < before
    if method != "temperature":  # temperature cannot undo the shifted prior (see module doc)
        assert after < 0.06, (method, before, after)
    assert cal.n == len(y) and cal.fitted_on == "val" and cal.method == method


def test_temperature_cannot_move_the_prior_but_platt_can():
    y, p = skewed()
    ece = {m: expected_calibration_error(y, fit_calibration(y, p, m).apply(p))
           for m in ("temperature", "platt")}
    assert ece["platt"] < ece["temperature"] / 2, ece


@pytest.mark.parametrize("method", ["none", "temperature", "platt"])
def test_monotone_methods_keep_the_auc_exactly(method):
    y, p = skewed()
    q = fit_calibration(y, p, method).apply(p)
    assert roc_auc(y, q) == roc_auc(y, p)
    assert np.array_equal(np.argsort(q, kind="stable"), np.argsort(p, kind="stable"))


def test_isotonic_output_is_a_non_decreasing_probability_and_clips_outside_its_knots():
    y, p = skewed()
    cal = fit_calibration(y, p, "isotonic")
    grid = np.linspace(-0.5, 1.5, 2001)  # also outside [0, 1] and outside the knots
    q = cal.apply(grid)
    assert q.min() >= 0.0 and q.max() <= 1.0
    assert np.all(np.diff(q) >= 0)
    assert q[0] == cal.y[0] and q[-1] == cal.y[-1]
    # np.interp on the stored knots is what scikit-learn's predict does
    from sklearn.isotonic import IsotonicRegression

    ref = IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip").fit(p, y.astype(float))
    np.testing.assert_allclose(cal.apply(p), ref.predict(p), atol=1e-12)


def test_temperature_recovers_a_known_temperature():
    rng = np.random.default_rng(1)
    z = rng.normal(0.0, 3.0, 20_000)  # the model's logits
    y = (rng.random(z.size) < _sigmoid(z / 2.5)).astype(int)  # the world is tempered by 2.5
    cal = fit_calibration(y, _sigmoid(z), "temperature")
    assert cal.temperature == pytest.approx(2.5, rel=0.05)


def test_platt_recovers_a_known_slope_and_intercept():
    rng = np.random.default_rng(2)
    z = rng.normal(0.0, 2.0, 20_000)
    y = (rng.random(z.size) < _sigmoid(0.6 * z - 1.5)).astype(int)
    cal = fit_calibration(y, _sigmoid(z), "platt")
    assert cal.a == pytest.approx(0.6, abs=0.05) and cal.b == pytest.approx(-1.5, abs=0.08)


def test_platt_on_perfectly_separated_scores_stays_finite_and_increasing():
    y = np.r_[np.zeros(50, int), np.ones(50, int)]
    p = np.r_[np.linspace(0.001, 0.01, 50), np.linspace(0.02, 0.2, 50)]
    cal = fit_calibration(y, p, "platt")
    assert np.isfinite(cal.a) and np.isfinite(cal.b) and cal.a > 0
    assert roc_auc(y, cal.apply(p)) == 1.0


def test_platt_fits_an_undertrained_model_whose_scores_all_sit_near_one_half():
    """The train-demo's cnn2 after 4 epochs: p in 0.5012..0.5024 for every patch, weakly
    ranked (AUC ~0.6), 28% tumour. Unstandardised, lbfgs stopped with a negative slope."""
    rng = np.random.default_rng(5)
    y = (rng.random(400) < 0.28).astype(int)
    p = (0.5018 + 0.0002 * rng.normal(0, 1, 400) + 0.00015 * y).astype(np.float32)
    cal = fit_calibration(y, p.astype(np.float64), "platt")
    assert cal.method == "platt" and cal.a > 100
    q = cal.apply(p)
    assert roc_auc(y, q) == roc_auc(y, p)
    assert expected_calibration_error(y, q) < 0.06 < 0.15 < expected_calibration_error(y, p)


def test_a_platt_fit_with_no_positive_slope_falls_back_to_the_raw_output():
    rng = np.random.default_rng(3)
    p = rng.random(400)
    y = (p < 0.5).astype(int)  # inverted scores
    cal = fit_calibration(y, p, "platt")
    assert cal.method == "none" and "not applied" in cal.note
    np.testing.assert_array_equal(cal.apply(p), p)


@pytest.mark.parametrize("method", CALIBRATION_METHODS)
def test_every_method_round_trips_through_json_and_applies_the_same(method):
    y, p = skewed(300)
    cal = fit_calibration(y, p, method, fitted_on="val (test)")
    back = Calibration.model_validate_json(cal.model_dump_json())
    assert back == cal
    np.testing.assert_array_equal(back.apply(p), cal.apply(p))
    doc = json.loads(cal.model_dump_json())
    assert doc["method"] == method and all(isinstance(v, float) for v in doc["x"])


def test_bad_calibrations_are_refused_naming_what_is_wrong():
    with pytest.raises(ValidationError, match="'platt' needs finite 'a' and 'b'"):
        Calibration(method="platt", a=1.0)
    with pytest.raises(ValidationError, match="'temperature' needs"):
        Calibration(method="temperature")
    with pytest.raises(ValidationError, match="temperature"):
        Calibration(method="temperature", temperature=-1.0)
    with pytest.raises(ValidationError, match="non-decreasing"):
        Calibration(method="isotonic", x=[0.0, 0.5, 0.4], y=[0.0, 0.5, 1.0])
    with pytest.raises(ValidationError, match="extra"):
        Calibration.model_validate({"method": "none", "slope": 1})
    with pytest.raises(DataError, match="unknown calibration method 'beta'"):
        fit_calibration([0, 1], [0.2, 0.8], "beta")  # type: ignore[arg-type]
    with pytest.raises(DataError, match="needs both classes"):
        fit_calibration([1, 1, 1], [0.2, 0.5, 0.8], "platt")
    with pytest.raises(DataError, match="probabilities in"):
        fit_calibration([0, 1], [0.2, 1.5], "platt")


def test_ece_uses_equal_width_bins_weighted_by_their_share():
    # bin [0, 0.1]: p 0.05 x2, one tumour -> |0.5 - 0.05| = 0.45, weight 2/4
    # bin (0.8, 0.9]: p 0.85 x2, both tumour -> |1 - 0.85| = 0.15, weight 2/4
    y, p = [0, 1, 1, 1], [0.05, 0.05, 0.85, 0.85]
    assert expected_calibration_error(y, p) == pytest.approx(0.5 * 0.45 + 0.5 * 0.15)
    assert expected_calibration_error([0, 1], [0.0, 1.0]) == 0.0
    # one bin: |mean(y) - mean(p)|
    assert expected_calibration_error(y, p, bins=1) == pytest.approx(abs(0.75 - 0.45))


def test_reliability_data_is_sklearns_calibration_curve_with_bin_counts():
    from sklearn.calibration import calibration_curve

    y, p = skewed()
    r = reliability(y, p)
    true, pred = calibration_curve(y, p, n_bins=10, strategy="uniform")
    np.testing.assert_allclose(r["prob_true"], true)
    np.testing.assert_allclose(r["prob_pred"], pred)
    assert sum(r["count"]) == len(y) and len(r["count"]) == len(pred)
    # the ECE is the count-weighted gap of exactly these bins
    gap = np.abs(np.asarray(r["prob_true"]) - np.asarray(r["prob_pred"]))
    assert expected_calibration_error(y, p) == pytest.approx(
        float(np.sum(gap * np.asarray(r["count"])) / len(y)))


def test_applying_is_numpy_only():
    code = textwrap.dedent("""
        import sys
        from patchray.evaluation.calibration import Calibration
        from patchray.registry.card import ModelCard
        Calibration(method="platt", a=1.5, b=-2.0).apply([0.1, 0.9])
        Calibration(method="isotonic", x=[0.0, 1.0], y=[0.1, 0.8]).apply([0.3])
        heavy = [m for m in ("sklearn", "scipy", "tensorflow") if m in sys.modules]
        assert not heavy, heavy
        print("light")
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and "light" in proc.stdout, proc.stderr[-2000:]


# ----------------------------------------------------------------- the evaluation stage


def _val_test(seed: int = 4):
    y_val, p_val = skewed(500, seed)
    y_test, p_test = skewed(500, seed + 1)
    return y_val, p_val, y_test, p_test


def test_the_threshold_is_chosen_on_the_calibrated_val_scores():
    rules = EvalConfig(min_sensitivity=0.95)
    assert rules.calibration == "platt"  # the default
    y_val, p_val, y_test, p_test = _val_test()
    s = calibrate_and_threshold(y_val, p_val, y_test, p_test, rules)
    assert s.calibration is not None and s.calibration.method == "platt"
    np.testing.assert_array_equal(s.p_val, served_scores(s.calibration, p_val))
    np.testing.assert_array_equal(s.raw_val, p_val)
    assert s.threshold == choose_threshold(y_val, s.p_val, min_sensitivity=0.95)
    assert binary_metrics(y_val, s.p_val, s.threshold).sensitivity >= 0.95
    raw_threshold = choose_threshold(y_val, p_val, min_sensitivity=0.95)
    assert raw_threshold > 0.5 and s.threshold < raw_threshold  # the skew is undone
    # same patches called tumour on either scale (monotone map, threshold an observed score)
    assert s.val["tp"] == binary_metrics(y_val, p_val, raw_threshold).tp
    assert s.rule["scale"] == "calibrated probability (platt)"
    ece = s.calibration.ece
    assert ece["val"].after < ece["val"].before and ece["test"].after < ece["test"].before
    assert ece["val"].n == 500


def test_no_calibration_keeps_todays_raw_threshold():
    y_val, p_val, y_test, p_test = _val_test()
    s = calibrate_and_threshold(y_val, p_val, y_test, p_test, EvalConfig(calibration="none"))
    assert s.calibration is not None and s.calibration.identity
    assert s.threshold == choose_threshold(y_val, p_val, min_sensitivity=0.95)
    np.testing.assert_array_equal(s.p_test, p_test)
    assert s.rule["scale"] == "raw model output"


def test_the_precision_record_threshold_meets_the_rule_on_calibrated_val_scores():
    from patchray.export.precisions import gate

    rules = EvalConfig(min_sensitivity=0.9)
    y_val, p_val, y_test, p_test = _val_test(7)
    s = calibrate_and_threshold(y_val, p_val, y_test, p_test, rules)
    record = gate("int8", s, f32_auc=s.val["auc"], max_drop=0.005)
    assert record.calibration == s.calibration and record.threshold == s.threshold
    # what the predictor will serve for these raw outputs, at the stored threshold
    served = record.calibration.apply(np.asarray(p_val, np.float32)).astype(np.float32)
    assert binary_metrics(y_val, served, record.threshold).sensitivity >= rules.min_sensitivity
    assert record.val["sensitivity"] >= rules.min_sensitivity
    assert record.val_auc == pytest.approx(roc_auc(y_val, p_val), abs=1e-12)


def test_the_report_has_a_reliability_diagram_and_metrics_json_the_calibration(tmp_path):
    y_val, p_val, y_test, p_test = _val_test()
    rules = EvalConfig()
    s = calibrate_and_threshold(y_val, p_val, y_test, p_test, rules)
    ev = evaluate_model(s, rules, report_dir=tmp_path, history=[], best_epoch=1)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["pictures"]["reliability"] == "test_reliability.png"
    assert metrics["pictures"]["val_reliability"] == "val_reliability.png"
    assert metrics["pictures"]["roc"] == "test_roc.png"  # beside the ROC
    assert (tmp_path / "test_reliability.png").stat().st_size > 1000
    assert (tmp_path / "val_reliability.png").stat().st_size > 1000
    cal = metrics["calibration"]
    assert cal["method"] == "platt" and cal["a"] == s.calibration.a
    assert cal["ece"]["test"]["after"] < cal["ece"]["test"]["before"]
    assert metrics["threshold"]["scale"] == "calibrated probability (platt)"
    assert ev.threshold == s.threshold
