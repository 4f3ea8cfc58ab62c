"""Unlabelled rows for semi-supervised training: y = -1 and w = 0 in a prepared batch, and
the unlabelled split may share (only) train's patients."""

from __future__ import annotations

import numpy as np
import pytest

from patchray.data.splits import check_patient_disjoint
from patchray.data.transforms import prepare_training_batch
from patchray.errors import SplitLeakError


@pytest.mark.parametrize("labels", [[1, None, 0, None], np.array([1.0, np.nan, 0.0, np.nan])])
def test_null_labels_become_minus_one_with_zero_weight(labels) -> None:
    pixels = np.zeros((4, 8, 8, 3), dtype=np.uint8)
    batch = {"image": np.array([p.tobytes() for p in pixels], dtype=object),
             "label": np.array(labels, dtype=object if isinstance(labels, list) else float)}
    out = prepare_training_batch(batch, size=8, augment_patches=False,
                                 weights={0: 0.5, 1: 3.0}, encoding="raw")
    np.testing.assert_array_equal(out["y"], np.array([1, -1, 0, -1], dtype=np.float32))
    np.testing.assert_array_equal(out["w"], np.array([3.0, 0.0, 0.5, 0.0], dtype=np.float32))
    assert out["y"].dtype == np.float32 and out["w"].dtype == np.float32


def test_unlabelled_split_may_share_train_patients_only() -> None:
    check_patient_disjoint({"train": {"p1", "p2"}, "unlabelled": {"p1", "p9"}, "val": {"p3"}})
    with pytest.raises(SplitLeakError, match="'p3' is in both 'unlabelled' and 'val'"):
        check_patient_disjoint({"train": {"p1"}, "unlabelled": {"p3"}, "val": {"p3"}})
    with pytest.raises(SplitLeakError, match="'p1' is in both 'train' and 'val'"):
        check_patient_disjoint({"train": {"p1"}, "unlabelled": {"p1"}, "val": {"p1"}})
    with pytest.raises(SplitLeakError, match="'p4' is in both 'test' and 'unlabelled'"):
        check_patient_disjoint({"test": {"p4"}, "unlabelled": {"p4"}})
