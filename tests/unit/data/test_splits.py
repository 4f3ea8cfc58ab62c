"""Patient-level splits: sizes, determinism, stratification, the leak check."""

import numpy as np
import pytest

from patchray.data.splits import assign_patient_splits, check_patient_disjoint
from patchray.errors import DataError, SplitLeakError


def _counts(n: int) -> dict[str, tuple[int, int]]:
    rng = np.random.default_rng(1)
    return {f"p{i:02d}": (100, int(rng.integers(0, 100))) for i in range(n)}


def test_split_sizes_follow_fractions_and_cover_every_patient():
    split = assign_patient_splits(_counts(20), train=0.6, val=0.2, seed=3)
    assert sorted(split) == sorted(_counts(20))
    sizes = {s: list(split.values()).count(s) for s in ("train", "val", "test")}
    assert sizes == {"train": 12, "val": 4, "test": 4}


def test_split_is_deterministic_per_seed():
    assert assign_patient_splits(_counts(12), seed=5) == assign_patient_splits(_counts(12), seed=5)


def test_split_is_stratified_by_tumour_fraction():
    counts = {f"p{i:02d}": (100, i * 5) for i in range(20)}  # fractions 0 .. 0.95
    split = assign_patient_splits(counts, seed=0)
    for s in ("val", "test"):
        fractions = [counts[p][1] / 100 for p, sp in split.items() if sp == s]
        assert min(fractions) < 0.3 and max(fractions) > 0.6, (s, fractions)


def test_too_few_patients_is_an_error():
    with pytest.raises(DataError, match="at least 3 patients"):
        assign_patient_splits(_counts(2))


def test_leak_check_names_the_patient():
    with pytest.raises(SplitLeakError, match="patient 'p7' is in both 'test' and 'train'"):
        check_patient_disjoint({"train": {"p1", "p7"}, "val": {"p2"}, "test": {"p7"}})
