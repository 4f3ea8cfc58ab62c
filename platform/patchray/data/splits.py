"""Patient-level train/val/test splits.

Most published IDC results split patches at random, so patches of one patient land in both
training and test and the test score measures memory of a patient's stain, not skill. Here a
split is a property of the patient: :func:`assign_patient_splits` never separates a
patient's patches, and :func:`check_patient_disjoint` refuses any dataset that does.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from patchray.data.records import SPLITS
from patchray.errors import ConfigError, DataError, SplitLeakError


def _split_sizes(n: int, train: float, val: float) -> dict[str, int]:
    if n < 3:
        raise DataError(f"need at least 3 patients for a train/val/test split, got {n}")
    n_val = max(1, round(val * n))
    n_test = max(1, round((1.0 - train - val) * n))
    n_train = n - n_val - n_test
    if n_train < 1:
        raise DataError(f"{n} patients leave none for training with val={val}")
    return {"train": n_train, "val": n_val, "test": n_test}


def count_patients(labels: Iterable[tuple[str, int | None]]) -> dict[str, tuple[int, int]]:
    """(patient, label) pairs -> patient -> (patches, tumour patches), what splitting needs."""
    counts: dict[str, tuple[int, int]] = {}
    for patient, label in labels:
        n, pos = counts.get(patient, (0, 0))
        counts[patient] = (n + 1, pos + int(label == 1))
    return counts


def assign_patient_splits(
    patient_counts: Mapping[str, tuple[int, int]],
    *,
    train: float = 0.6,
    val: float = 0.2,
    seed: int = 0,
) -> dict[str, str]:
    """Map each patient to a split, stratified by the patient's tumour fraction.

    ``patient_counts`` maps patient id -> (patches, tumour patches). Patients are ordered by
    tumour fraction (ties broken by a seeded shuffle) and each split takes evenly spaced
    positions along that order, so every split sees low- and high-tumour patients.
    """
    patients = sorted(patient_counts)
    sizes = _split_sizes(len(patients), train, val)
    rng = np.random.default_rng(seed)
    shuffled = [patients[i] for i in rng.permutation(len(patients))]
    fraction = {p: patient_counts[p][1] / max(1, patient_counts[p][0]) for p in patients}
    ordered = sorted(shuffled, key=lambda p: fraction[p])  # stable: keeps shuffle among ties

    # Evenly spaced slots: split s claims positions (k + 0.5) / n_s along the unit interval.
    slots = [((k + 0.5) / n, s) for s, n in sizes.items() for k in range(n)]
    slots.sort(key=lambda t: (t[0], SPLITS.index(t[1])))
    return {patient: split for patient, (_, split) in zip(ordered, slots, strict=True)}


def check_patient_disjoint(patients_by_split: Mapping[str, set[str]]) -> None:
    """Raise :class:`SplitLeakError` naming every patient found in more than one split.

    The ``unlabelled`` split may share patients with ``train`` (the unannotated rest of
    training patients' patches, for semi-supervised models), never with val or test."""
    seen: dict[str, str] = {}
    leaks: list[str] = []
    for split in sorted(patients_by_split):
        for patient in sorted(patients_by_split[split]):
            if {seen.get(patient), split} == {"train", "unlabelled"}:
                continue
            if patient in seen:
                leaks.append(f"patient {patient!r} is in both {seen[patient]!r} and {split!r}")
            else:
                seen[patient] = split
    if leaks:
        raise SplitLeakError(
            "splits are not patient-disjoint; results would leak patients into test:\n  "
            + "\n  ".join(leaks)
        )


def parse_split_map(text: str | None) -> dict[str, str]:
    """``10253=train,8975=val`` -> {"10253": "train", "8975": "val"} (``--split-map``)."""
    if not text:
        return {}
    mapping: dict[str, str] = {}
    for item in text.split(","):
        patient, sep, split = (part.strip() for part in item.partition("="))
        if not sep or not patient or split not in SPLITS:
            raise ConfigError(
                f"--split-map item {item!r}: expected PATIENT=train|val|test "
                "(e.g. --split-map 10253=train,8975=val)"
            )
        mapping[patient] = split
    return mapping


def check_split_map(split_map: Mapping[str, str], patients: set[str]) -> None:
    """An explicit split map must name every patient of the source, and only those."""
    unmapped = sorted(patients - set(split_map))
    unknown = sorted(set(split_map) - patients)
    problems = []
    if unmapped:
        problems.append(f"patients without a split: {', '.join(unmapped[:20])}"
                        + (f" (+{len(unmapped) - 20} more)" if len(unmapped) > 20 else ""))
    if unknown:
        problems.append(f"patients not in the source: {', '.join(unknown)}")
    if problems:
        raise ConfigError("--split-map must assign every patient of the source exactly: "
                          + "; ".join(problems))
