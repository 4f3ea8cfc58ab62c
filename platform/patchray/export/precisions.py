"""Precision is a recorded choice: f32, bf16 and INT8 measured side by side on validation.

Each precision is scored on the same validation and test patients as f32, gets its own
threshold by the same rule, and passes when its validation AUC is at most ``max_auc_drop``
below f32's. Its speed (images/s at batch 64, interleaved rounds on this machine) is
recorded too, and serving defaults to the fastest precision that passed. A precision that
fails is recorded with its reason and left out of the registered files.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from patchray.config import EvalConfig, ExportConfig
from patchray.data.manifest import PatchDataset
from patchray.evaluation.evaluate import Evaluation, Scored, score_and_threshold
from patchray.inference.preprocess import Preprocess
from patchray.registry.card import IR_FILES, PrecisionRecord

log = logging.getLogger(__name__)
SPEED_BATCH = 64
SPEED_ROUNDS = 3
SPEED_SECONDS = 0.5  # per precision per round


@dataclass(frozen=True)
class Candidate:
    name: str  # f32 | bf16 | int8
    file: str  # IR xml in the model folder
    hint: str  # OpenVINO INFERENCE_PRECISION_HINT

    def compile(self, model_dir: Path, num_threads: int | None = None) -> Any:
        import openvino as ov

        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": self.hint}
        if num_threads:
            config["INFERENCE_NUM_THREADS"] = num_threads
        return ov.Core().compile_model(model_dir / self.file, "CPU", config)


CANDIDATES = {
    "f32": Candidate("f32", IR_FILES["f32"], "f32"),
    # bf16 runs the f32 IR: the hint makes OpenVINO compute in bf16 where the CPU can.
    "bf16": Candidate("bf16", IR_FILES["f32"], "bf16"),
    # INT8 layers are integer; the few layers NNCF leaves in float run in f32.
    "int8": Candidate("int8", IR_FILES["int8"], "f32"),
}


def cpu_has_bf16() -> bool:
    """Whether OpenVINO's CPU plugin computes bf16 natively here (AVX512-BF16 or AMX)."""
    import openvino as ov

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def images_per_s(compiled: dict[str, Any], x: np.ndarray, *, rounds: int = SPEED_ROUNDS,
                 seconds: float = SPEED_SECONDS) -> dict[str, float]:
    """Median images/s of each compiled model on ``x``, run in turn every round so all of
    them see the same machine load (this machine is shared)."""
    seen: dict[str, list[float]] = {name: [] for name in compiled}
    for model in compiled.values():
        model(x)  # warm-up: first calls allocate
    for _ in range(rounds):
        for name, model in compiled.items():
            calls, t0 = 0, time.perf_counter()
            while (elapsed := time.perf_counter() - t0) < seconds or calls == 0:
                model(x)
                calls += 1
            seen[name].append(calls * len(x) / elapsed)
    return {name: float(np.median(rates)) for name, rates in seen.items()}


def gate(name: str, scored: Scored, f32_auc: float, max_drop: float) -> PrecisionRecord:
    """The record of one precision: AUC against f32's, pass or fail, threshold, metrics."""
    val, test = scored.val, scored.test
    drop = float(f32_auc - val["auc"])
    passed = drop <= max_drop
    reason = ("" if passed else f"val AUC {val['auc']:.4f} is {drop:.4f} below f32's "
              f"{f32_auc:.4f} (> the {max_drop} allowed)")
    candidate = CANDIDATES[name]
    return PrecisionRecord(file=candidate.file, inference_hint=candidate.hint,  # type: ignore[arg-type]
                           val_auc=val["auc"], auc_drop=drop, max_auc_drop=max_drop,
                           passed=passed, reason=reason, threshold=scored.threshold,
                           val=val, test=test)


def unavailable(name: str, reason: str) -> PrecisionRecord:
    c = CANDIDATES[name]
    return PrecisionRecord(file=c.file, inference_hint=c.hint,  # type: ignore[arg-type]
                           available=False, passed=False, reason=reason)


def assess_precisions(
    model_dir: Path, preprocess: Preprocess, dataset: PatchDataset, rules: EvalConfig,
    export: ExportConfig, f32: Evaluation, *, val_holdout: float = 0.0,
    int8_error: str | None = None,
    score: Callable[..., Scored] = score_and_threshold,
) -> dict[str, PrecisionRecord]:
    """A record per precision in ``export.precisions`` (f32's from its evaluation)."""
    f32_auc = f32.metrics["val"]["auc"]
    records = {"f32": PrecisionRecord(
        file=IR_FILES["f32"], inference_hint="f32", val_auc=f32_auc, auc_drop=0.0,
        max_auc_drop=0.0, passed=True, threshold=f32.threshold, val=f32.metrics["val"],
        test=f32.metrics["test"])}
    limits = {"bf16": export.bf16_max_auc_drop, "int8": export.int8_max_auc_drop}
    for name in ("bf16", "int8"):
        if name not in export.precisions:
            continue
        if name == "bf16" and not cpu_has_bf16():
            records[name] = unavailable(name, "this CPU has no native bf16 (AVX512-BF16/AMX)")
            continue
        if name == "int8" and int8_error:
            records[name] = unavailable(name, int8_error)
            continue
        scored = score(model_dir / CANDIDATES[name].file, preprocess, dataset, rules,
                       val_holdout=val_holdout, inference_precision=CANDIDATES[name].hint)
        records[name] = gate(name, scored, f32_auc, limits[name])
    return records


def with_speeds(model_dir: Path, records: dict[str, PrecisionRecord],
                x: np.ndarray) -> dict[str, PrecisionRecord]:
    """Add images/s at batch 64 to every available precision."""
    names = [n for n, r in records.items() if r.available]
    batch = np.resize(x, (SPEED_BATCH, *x.shape[1:])).astype(np.float32)
    rates = images_per_s({n: CANDIDATES[n].compile(model_dir) for n in names}, batch)
    return {n: r.model_copy(update={"images_per_s": rates.get(n)}) for n, r in records.items()}


def fastest_passed(records: dict[str, PrecisionRecord]) -> str:
    passed = [n for n, r in records.items() if r.passed]
    return max(passed, key=lambda n: records[n].images_per_s or 0.0)


def log_precisions(records: dict[str, PrecisionRecord], serving: str) -> None:
    for name, r in records.items():
        if not r.available:
            log.info("precision %-4s  not available: %s", name, r.reason)
            continue
        log.info("precision %-4s  val AUC %.4f (drop %+.4f)  threshold %.4f  %6.0f images/s  "
                 "%s%s", name, r.val_auc, r.auc_drop, r.threshold, r.images_per_s or 0,
                 "pass" if r.passed else "NOT REGISTERED: " + r.reason,
                 "  <- serving default" if name == serving else "")
