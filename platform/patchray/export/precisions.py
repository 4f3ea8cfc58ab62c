"""Precision is a recorded choice: f32, bf16 and INT8 measured side by side on validation.

Each precision is scored on the same validation and test patients as f32, gets its own
calibration (fitted on its own validation scores) and its own threshold by the same rule, on
the calibrated scale, and passes when its validation AUC is at most ``max_auc_drop``
below f32's. Its speed (images/s at batch 64, interleaved rounds on this machine) is
recorded too, and serving defaults to the fastest precision that passed. A precision that
fails is recorded with its reason and left out of the registered files.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from patchray.config import ExportConfig
from patchray.evaluation.evaluate import Evaluation, Scored
from patchray.registry.card import IR_FILES, PrecisionRecord
from patchray.timing import interleaved_rates

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


def gate(name: str, scored: Scored, f32_auc: float, max_drop: float) -> PrecisionRecord:
    """The record of one precision: AUC against f32's, pass or fail, threshold, metrics.
    The gate compares the RAW outputs' val AUC: calibration is monotone, but rounding a steep
    map's output to float32 ties the top scores, which would move the AUC by itself."""
    val, test = scored.val, scored.test
    auc = raw_val_auc(scored)
    drop = float(f32_auc - auc)
    passed = drop <= max_drop
    reason = ("" if passed else f"val AUC {val['auc']:.4f} is {drop:.4f} below f32's "
              f"{f32_auc:.4f} (> the {max_drop} allowed)")
    candidate = CANDIDATES[name]
    return PrecisionRecord(file=candidate.file, inference_hint=candidate.hint,  # type: ignore[arg-type]
                           val_auc=auc, auc_drop=drop, max_auc_drop=max_drop,
                           passed=passed, reason=reason, threshold=scored.threshold,
                           calibration=scored.calibration, val=val, test=test)


def raw_val_auc(scored: Scored) -> float:
    """Val AUC of the IR's raw output (before calibration)."""
    from patchray.evaluation.metrics import roc_auc

    return roc_auc(scored.y_val, scored.raw_val)


def unavailable(name: str, reason: str) -> PrecisionRecord:
    c = CANDIDATES[name]
    return PrecisionRecord(file=c.file, inference_hint=c.hint,  # type: ignore[arg-type]
                           available=False, passed=False, reason=reason)


def candidates(export: ExportConfig, int8_error: str | None = None
               ) -> tuple[dict[str, Candidate], dict[str, PrecisionRecord]]:
    """The precisions of ``export.precisions`` to score, and those that cannot run here
    (with why: no native bf16, NNCF failed)."""
    run = {"f32": CANDIDATES["f32"]}
    missing = {}
    for name in ("bf16", "int8"):
        if name not in export.precisions:
            continue
        reason = ("this CPU has no native bf16 (AVX512-BF16/AMX)"
                  if name == "bf16" and not cpu_has_bf16() else int8_error if name == "int8"
                  else None)
        if reason:
            missing[name] = unavailable(name, reason)
        else:
            run[name] = CANDIDATES[name]
    return run, missing


def assess_precisions(scored: dict[str, Scored], f32: Evaluation, export: ExportConfig,
                      missing: dict[str, PrecisionRecord]) -> dict[str, PrecisionRecord]:
    """A record per precision: f32's from its evaluation, the others gated against it."""
    f32_auc = raw_val_auc(scored["f32"]) if "f32" in scored else f32.metrics["val"]["auc"]
    records = {"f32": PrecisionRecord(
        file=IR_FILES["f32"], inference_hint="f32", val_auc=f32_auc, auc_drop=0.0,
        max_auc_drop=0.0, passed=True, threshold=f32.threshold,
        calibration=scored["f32"].calibration if "f32" in scored else None,
        val=f32.metrics["val"], test=f32.metrics["test"])}
    limits = {"bf16": export.bf16_max_auc_drop, "int8": export.int8_max_auc_drop}
    for name in ("bf16", "int8"):
        if name in scored:
            records[name] = gate(name, scored[name], f32_auc, limits[name])
        elif name in missing:
            records[name] = missing[name]
    return records


def with_speeds(model_dir: Path, records: dict[str, PrecisionRecord],
                x: Any) -> dict[str, PrecisionRecord]:
    """Add images/s at batch 64 to every available precision (median of interleaved
    rounds, so all of them see the same machine load). ``x``: model input, one array or
    one per input name (a multi-scale model: a tile's two views count as one image)."""
    def fill(a: np.ndarray) -> np.ndarray:
        return np.resize(a, (SPEED_BATCH, *a.shape[1:])).astype(np.float32)

    batch: Any = {k: fill(v) for k, v in x.items()} if isinstance(x, dict) else fill(x)
    compiled = {n: CANDIDATES[n].compile(model_dir) for n, r in records.items() if r.available}
    for model in compiled.values():
        model(batch)  # warm-up: first calls allocate
    rates = interleaved_rates({n: (lambda m=m: m(batch)) for n, m in compiled.items()},
                              SPEED_BATCH, rounds=SPEED_ROUNDS, min_seconds=SPEED_SECONDS)
    return {n: r.model_copy(update={"images_per_s": rates[n]["median"] if n in rates else None})
            for n, r in records.items()}


def fastest_passed(records: dict[str, PrecisionRecord]) -> str:
    passed = [n for n, r in records.items() if r.passed]
    return max(passed, key=lambda n: records[n].images_per_s or 0.0)


def log_precisions(records: dict[str, PrecisionRecord], serving: str) -> None:
    for name, r in records.items():
        if not r.available:
            log.info("precision %-4s  not available: %s", name, r.reason)
            continue
        cal = r.calibration.describe() if r.calibration else "raw output"
        log.info("precision %-4s  val AUC %.4f (drop %+.4f)  threshold %.4f (%s)  %6.0f "
                 "images/s  %s%s", name, r.val_auc, r.auc_drop, r.threshold, cal,
                 r.images_per_s or 0,
                 "pass" if r.passed else "NOT REGISTERED: " + r.reason,
                 "  <- serving default" if name == serving else "")
