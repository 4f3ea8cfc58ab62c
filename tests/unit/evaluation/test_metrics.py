"""Unit tests for patchray.evaluation.metrics (pure numpy, no sklearn)."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest

from patchray.errors import DataError
from patchray.evaluation.metrics import (
    BinaryMetrics,
    average_precision,
    binary_metrics,
    choose_threshold,
    precision_recall_curve,
    roc_auc,
    roc_curve,
)


def brute_force_auc(y, s) -> float:
    """P(score_pos > score_neg) + 0.5 P(tie), over all positive-negative pairs."""
    y = np.asarray(y)
    s = np.asarray(s, dtype=float)
    pos = s[y == 1][:, None]
    neg = s[y == 0][None, :]
    return float(((pos > neg) + 0.5 * (pos == neg)).mean())


def sensitivity_at(y, s, t) -> float:
    y = np.asarray(y)
    s = np.asarray(s, dtype=float)
    return float(np.mean(s[y == 1] >= t))


# --------------------------------------------------------------------------- roc_auc


@pytest.mark.parametrize("seed", range(5))
def test_roc_auc_matches_brute_force_pairwise_count_with_ties(seed):
    rng = np.random.default_rng(seed)
    n = 300
    y = rng.integers(0, 2, n)
    # one decimal: many ties, both within and across classes
    s = np.round(np.clip(rng.normal(0.4 + 0.2 * y, 0.25), 0, 1), 1)
    assert len(np.unique(s)) < 15
    assert roc_auc(y, s) == pytest.approx(brute_force_auc(y, s), abs=1e-12)


def test_roc_auc_is_one_for_perfect_and_zero_for_inverted_classifier():
    y = [0, 0, 0, 1, 1]
    s = [0.1, 0.2, 0.3, 0.8, 0.9]
    assert roc_auc(y, s) == 1.0
    assert roc_auc(y, [1 - v for v in s]) == 0.0


def test_roc_auc_is_half_when_all_scores_tie():
    assert roc_auc([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]) == 0.5


def test_roc_auc_accepts_lists_bools_float_labels_and_column_vectors():
    expected = roc_auc([0, 1, 1, 0], [0.2, 0.7, 0.4, 0.5])
    assert roc_auc([False, True, True, False], np.array([0.2, 0.7, 0.4, 0.5])) == expected
    assert roc_auc(np.array([0.0, 1.0, 1.0, 0.0]), [[0.2], [0.7], [0.4], [0.5]]) == expected
    assert expected == pytest.approx(0.75)


def test_roc_auc_equals_trapezoidal_area_under_roc_curve():
    rng = np.random.default_rng(7)
    y = rng.integers(0, 2, 500)
    s = np.round(rng.random(500) * 0.5 + 0.3 * y, 2)
    fpr, tpr, _ = roc_curve(y, s)
    area = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
    assert roc_auc(y, s) == pytest.approx(area, abs=1e-12)


# --------------------------------------------------------------------------- curves


def test_roc_curve_starts_at_infinite_threshold_and_descends_to_full_recall():
    y = [0, 0, 1, 1]
    s = [0.1, 0.4, 0.35, 0.8]
    fpr, tpr, thr = roc_curve(y, s)
    assert thr[0] == np.inf
    np.testing.assert_array_equal(thr[1:], [0.8, 0.4, 0.35, 0.1])
    np.testing.assert_allclose(fpr, [0.0, 0.0, 0.5, 0.5, 1.0])
    np.testing.assert_allclose(tpr, [0.0, 0.5, 0.5, 1.0, 1.0])


def test_roc_curve_has_one_point_per_distinct_score():
    fpr, tpr, thr = roc_curve([0, 1, 0, 1, 1], [0.3, 0.3, 0.3, 0.9, 0.9])
    np.testing.assert_array_equal(thr, [np.inf, 0.9, 0.3])
    np.testing.assert_allclose(tpr, [0.0, 2 / 3, 1.0])
    np.testing.assert_allclose(fpr, [0.0, 0.0, 1.0])


def test_precision_recall_curve_thresholds_ascend_and_end_at_precision_one_recall_zero():
    y = [0, 0, 1, 1]
    s = [0.1, 0.4, 0.35, 0.8]
    precision, recall, thr = precision_recall_curve(y, s)
    np.testing.assert_array_equal(thr, [0.1, 0.35, 0.4, 0.8])
    np.testing.assert_allclose(precision, [0.5, 2 / 3, 0.5, 1.0, 1.0])
    np.testing.assert_allclose(recall, [1.0, 1.0, 0.5, 0.5, 0.0])


def test_average_precision_hand_example_and_extremes():
    # ranks: 0.8 (pos) -> P=1 R=.5 ; 0.4 (neg) ; 0.35 (pos) -> P=2/3 R=1
    assert average_precision([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(
        0.5 * 1 + 0.5 * 2 / 3
    )
    assert average_precision([0, 1, 1], [0.1, 0.8, 0.9]) == pytest.approx(1.0)
    # constant scores: AP equals prevalence
    assert average_precision([0, 1, 0, 0], [0.5] * 4) == pytest.approx(0.25)


def test_curves_and_threshold_handle_300k_scores_quickly():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300_000)
    s = np.clip(rng.normal(0.35 + 0.3 * y, 0.2), 0, 1)
    start = time.perf_counter()
    auc = roc_auc(y, s)
    roc_curve(y, s)
    average_precision(y, s)
    binary_metrics(y, s, 0.5)
    t = choose_threshold(y, s)
    elapsed = time.perf_counter() - start
    assert 0.8 < auc < 0.95
    assert sensitivity_at(y, s, t) >= 0.95
    assert elapsed < 5.0  # ~0.3 s on a shared 2-core machine


# --------------------------------------------------------------------------- binary_metrics


def test_binary_metrics_counts_and_ratios_on_hand_example():
    #        tumour tumour tumour benign benign benign benign
    y = [1, 1, 1, 0, 0, 0, 0]
    s = [0.9, 0.5, 0.2, 0.6, 0.5, 0.1, 0.0]
    m = binary_metrics(y, s, threshold=0.5)  # score >= 0.5 is tumour: ties count as positive
    assert isinstance(m, BinaryMetrics)
    assert (m.n, m.positives, m.tp, m.fn, m.fp, m.tn) == (7, 3, 2, 1, 2, 2)
    assert m.negatives == 4
    assert m.sensitivity == pytest.approx(2 / 3)
    assert m.specificity == pytest.approx(2 / 4)
    assert m.precision == pytest.approx(2 / 4)
    assert m.f1 == pytest.approx(2 * (2 / 4) * (2 / 3) / ((2 / 4) + (2 / 3)))
    assert m.accuracy == pytest.approx(4 / 7)
    assert m.balanced_accuracy == pytest.approx((2 / 3 + 2 / 4) / 2)
    assert m.auc == pytest.approx(brute_force_auc(y, s))
    p = np.clip(np.array(s), 1e-7, 1 - 1e-7)
    yy = np.array(y)
    expected_loss = -np.mean(yy * np.log(p) + (1 - yy) * np.log(1 - p))
    assert m.loss == pytest.approx(expected_loss)


def test_binary_metrics_loss_is_clipped_for_confidently_wrong_scores():
    m = binary_metrics([1, 0], [0.0, 1.0], 0.5)
    assert m.loss == pytest.approx(-math.log(1e-7), rel=1e-6)


def test_to_dict_is_json_safe_with_none_for_undefined_values():
    # nothing predicted tumour and no tumour labels: precision, sensitivity, f1, auc undefined
    m = binary_metrics([0, 0, 0], [0.1, 0.2, 0.3], 0.9)
    d = m.to_dict()
    assert math.isnan(m.precision) and math.isnan(m.auc)
    assert d["precision"] is None
    assert d["sensitivity"] is None
    assert d["f1"] is None
    assert d["balanced_accuracy"] is None
    assert d["auc"] is None
    assert d["specificity"] == 1.0 and d["accuracy"] == 1.0
    assert type(d["tp"]) is int and type(d["threshold"]) is float and type(d["loss"]) is float
    assert json.loads(json.dumps(d, allow_nan=False)) == d


def test_binary_metrics_loss_is_undefined_when_scores_are_not_probabilities():
    m = binary_metrics([0, 1], [-2.0, 3.0], 0.0)  # logits
    assert (m.tp, m.tn) == (1, 1)
    assert m.to_dict()["loss"] is None


# --------------------------------------------------------------------------- choose_threshold


@pytest.mark.parametrize("seed", range(5))
def test_sensitivity_rule_picks_highest_threshold_meeting_target(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 400)
    s = np.round(np.clip(rng.normal(0.35 + 0.3 * y, 0.2), 0, 1), 3)
    t = choose_threshold(y, s, rule="sensitivity", min_sensitivity=0.95)
    assert isinstance(t, float) and 0.0 <= t <= 1.0
    assert t in set(s.tolist())
    assert sensitivity_at(y, s, t) >= 0.95
    assert binary_metrics(y, s, t).sensitivity >= 0.95
    higher = np.unique(s[s > t])
    assert higher.size > 0
    assert sensitivity_at(y, s, higher[0]) < 0.95  # the next higher observed score breaks it


def test_sensitivity_rule_hand_example():
    y = [1, 1, 1, 1, 0, 0, 0, 0]
    s = [0.9, 0.8, 0.7, 0.3, 0.6, 0.5, 0.2, 0.1]
    assert choose_threshold(y, s, min_sensitivity=0.75) == 0.7
    assert choose_threshold(y, s, min_sensitivity=0.76) == 0.3
    assert choose_threshold(y, s, min_sensitivity=1.0) == 0.3
    assert choose_threshold(y, s) == 0.3  # default target 0.95


def test_sensitivity_rule_target_equal_to_achievable_fraction_is_met():
    # 19 of 20 tumours above 0.5 -> sensitivity exactly 0.95 at 0.6
    y = [1] * 20 + [0] * 5
    s = [0.6] * 19 + [0.1] + [0.5] * 5
    assert choose_threshold(y, s, min_sensitivity=0.95) == 0.6


def test_youden_rule_hand_example():
    y = [0, 0, 0, 1, 0, 1, 1, 1]
    s = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
    # J at t=0.6: tpr 3/4, fpr 0 -> 0.75 ; t=0.4: tpr 1, fpr 1/4 -> 0.75 ; tie -> higher
    assert choose_threshold(y, s, rule="youden") == 0.6
    y2 = [0, 0, 1, 0, 1, 1]
    s2 = [0.1, 0.2, 0.3, 0.4, 0.5, 0.9]
    # t=0.5: 2/3 - 0 = .667 ; t=0.3: 1 - 1/3 = .667 -> tie -> 0.5 ; t=0.9: 1/3
    assert choose_threshold(y2, s2, rule="youden") == 0.5
    y3 = [0, 1, 0, 1, 1]
    s3 = [0.1, 0.2, 0.3, 0.6, 0.9]
    # t=0.6: 2/3 ; t=0.2: 1 - 1/2 = 0.5 -> 0.6
    assert choose_threshold(y3, s3, rule="youden") == 0.6


def test_youden_threshold_is_finite_even_for_inverted_classifier():
    t = choose_threshold([1, 1, 0, 0], [0.1, 0.2, 0.8, 0.9], rule="youden")
    assert math.isfinite(t) and 0.0 <= t <= 1.0


# --------------------------------------------------------------------------- errors


def test_one_class_input_raises_data_error_naming_the_missing_class():
    with pytest.raises(DataError, match=r"both classes.*all 3 labels are benign \(0\)"):
        roc_auc([0, 0, 0], [0.1, 0.2, 0.3])
    with pytest.raises(DataError, match=r"all 2 labels are tumour \(1\)"):
        roc_curve([1, 1], [0.1, 0.2])
    with pytest.raises(DataError, match=r"youden.*both classes"):
        choose_threshold([1, 1], [0.1, 0.2], rule="youden")


def test_sensitivity_rule_without_positives_raises():
    with pytest.raises(DataError, match=r"at least one tumour \(1\) label"):
        choose_threshold([0, 0, 0], [0.1, 0.2, 0.3])


def test_bad_labels_raise_data_error_naming_offending_values():
    with pytest.raises(DataError, match=r"only 0 \(benign\) and 1 \(tumour\).*2 other value\(s\): -1, 2"):
        roc_auc([0, 1, 2, -1], [0.1, 0.2, 0.3, 0.4])
    with pytest.raises(DataError, match=r"'tumour'"):
        binary_metrics(["tumour", 0], [0.9, 0.1], 0.5)
    with pytest.raises(DataError, match=r"nan"):
        choose_threshold([0.0, 1.0, float("nan")], [0.1, 0.2, 0.3])


def test_length_mismatch_and_non_finite_scores_raise():
    with pytest.raises(DataError, match=r"same length, got 3 labels and 2 scores"):
        roc_auc([0, 1, 0], [0.1, 0.2])
    with pytest.raises(DataError, match=r"finite.*first at index 1: nan"):
        roc_auc([0, 1], [0.1, float("nan")])
    with pytest.raises(DataError, match=r"empty"):
        binary_metrics([], [], 0.5)


def test_unknown_rule_message_lists_valid_rules():
    with pytest.raises(DataError, match=r"unknown threshold rule 'f1'.*'sensitivity', 'youden'"):
        choose_threshold([0, 1], [0.1, 0.9], rule="f1")  # type: ignore[arg-type]


def test_min_sensitivity_out_of_range_raises():
    with pytest.raises(DataError, match=r"min_sensitivity must be in \[0, 1\], got 95"):
        choose_threshold([0, 1], [0.1, 0.9], min_sensitivity=95)
