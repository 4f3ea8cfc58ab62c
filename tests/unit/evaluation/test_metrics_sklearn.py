"""patchray's metrics equal scikit-learn's on the same inputs (ties, imbalance, edge cases).

patchray keeps its own numpy metrics (no scikit-learn in the runtime image: the serving and
evaluation path stay small); this test pins them to the reference implementation."""

import numpy as np
import pytest
from sklearn import metrics as sk

from patchray.evaluation.metrics import (
    average_precision,
    binary_metrics,
    precision_recall_curve,
    roc_auc,
    roc_curve,
)


def _cases():
    rng = np.random.default_rng(11)
    for n, pos, ties in [(50, 0.5, False), (400, 0.1, False), (300, 0.3, True), (7, 0.4, True)]:
        y = (rng.random(n) < pos).astype(int)
        y[:2] = [0, 1]  # both classes, always
        s = rng.random(n)
        if ties:
            s = np.round(s, 1)  # many equal scores: where hand-written ROC code goes wrong
        yield y, s


@pytest.mark.parametrize("y,s", list(_cases()))
def test_threshold_free_metrics_match_sklearn(y, s):
    assert roc_auc(y, s) == pytest.approx(sk.roc_auc_score(y, s), abs=1e-12)
    assert average_precision(y, s) == pytest.approx(sk.average_precision_score(y, s), abs=1e-12)
    fpr, tpr, thr = roc_curve(y, s)
    sk_fpr, sk_tpr, sk_thr = sk.roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(np.trapezoid(tpr, fpr), np.trapezoid(sk_tpr, sk_fpr), atol=1e-12)
    assert set(np.round(thr[np.isfinite(thr)], 12)) <= set(np.round(sk_thr, 12)) | {np.inf}
    precision, recall, _ = precision_recall_curve(y, s)
    sk_p, sk_r, _ = sk.precision_recall_curve(y, s)
    # Same operating points (as (recall, precision) pairs), whatever the order or endpoints.
    ours = {(round(r, 12), round(p, 12)) for p, r in zip(precision, recall)}
    theirs = {(round(r, 12), round(p, 12)) for p, r in zip(sk_p, sk_r)}
    assert ours <= theirs | {(0.0, 1.0)}


@pytest.mark.parametrize("y,s", list(_cases()))
@pytest.mark.parametrize("threshold", [0.05, 0.3, 0.5, 0.9])
def test_thresholded_metrics_match_sklearn(y, s, threshold):
    m = binary_metrics(y, s, threshold)
    pred = (s >= threshold).astype(int)
    tn, fp, fn, tp = sk.confusion_matrix(y, pred, labels=[0, 1]).ravel()
    assert (m.tp, m.fp, m.tn, m.fn) == (tp, fp, tn, fn)
    assert m.sensitivity == pytest.approx(sk.recall_score(y, pred, zero_division=np.nan),
                                          nan_ok=True)
    assert m.specificity == pytest.approx(
        sk.recall_score(1 - y, 1 - pred, zero_division=np.nan), nan_ok=True)
    assert m.precision == pytest.approx(sk.precision_score(y, pred, zero_division=np.nan),
                                        nan_ok=True)
    assert m.f1 == pytest.approx(sk.f1_score(y, pred, zero_division=np.nan), nan_ok=True)
    assert m.accuracy == pytest.approx(sk.accuracy_score(y, pred))
    assert m.balanced_accuracy == pytest.approx(sk.balanced_accuracy_score(y, pred))
    clipped = np.clip(s, 1e-7, 1 - 1e-7)
    assert m.loss == pytest.approx(sk.log_loss(y, clipped, labels=[0, 1]), rel=1e-9)
