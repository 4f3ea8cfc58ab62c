"""``patchray bench infer``: Keras against OpenVINO f32, bf16 and INT8 on the same model and
cores, at batch 1 and batch 64, each precision's validation AUC beside its speed.

Per case (CNN-6L at 50x50, MobileNetV2 at 96x96) the model is trained from scratch on
synthetic patches (no weights can be downloaded), converted to IR, quantised with NNCF on
training patches exactly as ``patchray train`` does, and scored on the validation patients.
Every variant then runs in turn, round after round, so all of them see the same machine load
(this machine is shared): the ratios are the figures to quote, not the absolute rates.

Keras is measured two ways: ``model(x)`` (eager, how most Keras code calls a model) and the
same model under ``tf.function`` (a compiled graph: the stronger baseline; ratios use it).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from patchray.benchmarks.common import (
    BenchOptions,
    Log,
    bar_chart,
    finish,
    format_table,
    interleaved_rates,
    say,
    synthetic_dataset,
)
from patchray.benchmarks.training import decoded_split
from patchray.registry.card import IR_FILES

NAME = "infer"
CASES = (("cnn6", 50), ("mobilenet_v2", 96))
BATCHES = (1, 64)
GATE = 0.005  # export.int8_max_auc_drop's default
KERAS = "keras (tf.function)"
VARIANTS = ("keras (eager)", KERAS, "openvino f32", "openvino bf16", "openvino int8")


def _train(name: str, size: int, dataset: Any, epochs: int) -> tuple[Any, np.ndarray]:
    from patchray.models import create_model

    x, y, w = decoded_split(dataset, "train", size)
    model = create_model(name, input_size=size)
    for layer in model.submodules:
        # From scratch on a few hundred patches, keras.applications' BatchNorm momentum
        # (0.999 in MobileNetV2) leaves the moving statistics near their initial values and
        # the model predicts a constant; 0.9 lets them settle within the run.
        if type(layer).__name__ == "BatchNormalization":
            layer.momentum = min(layer.momentum, 0.9)
    model.compile(optimizer="adam", loss="binary_crossentropy")
    model.fit(x, y, sample_weight=w, epochs=epochs, batch_size=64, verbose=0)
    return model, x


def _auc(y: np.ndarray, p: np.ndarray) -> float:
    from patchray.evaluation.metrics import roc_auc

    return float(roc_auc(y, p))


def run_case(name: str, size: int, dataset: Any, work: Path, *, epochs: int, rounds: int,
             min_seconds: float, threads: int, log: Log) -> list[dict[str, Any]]:
    from patchray.export.openvino_export import convert_keras
    from patchray.export.precisions import CANDIDATES, cpu_has_bf16
    from patchray.export.quantize import quantize_int8
    from patchray.models.keras_compat import load_tensorflow

    tf = load_tensorflow()
    model, x_train = _train(name, size, dataset, epochs)
    xml = convert_keras(model, size, work / name / "model.xml")
    quantize_int8(xml, x_train[:300], xml.parent / IR_FILES["int8"])

    def openvino(precision: str) -> Any:  # as export times and serves each precision
        compiled = CANDIDATES[precision].compile(xml.parent, num_threads=threads)
        return lambda x: compiled(x)[0]

    graph = tf.function(lambda t: model(t, training=False))
    runners = {"keras (eager)": lambda x: np.asarray(model(x, training=False)),
               KERAS: lambda x: np.asarray(graph(tf.constant(x))),
               "openvino f32": openvino("f32"), "openvino int8": openvino("int8")}
    if cpu_has_bf16():
        runners["openvino bf16"] = openvino("bf16")
    else:
        log("  this CPU has no native bf16: bf16 left out")
    x_val, y_val, _ = decoded_split(dataset, "val", size)
    aucs = {}
    for variant, fn in runners.items():
        p = np.concatenate([np.asarray(fn(x_val[i : i + 256])).reshape(-1)
                            for i in range(0, len(x_val), 256)])
        aucs[variant] = _auc(y_val, p)
    log(f"  {name} {size}px val AUC: " + ", ".join(f"{k} {v:.4f}" for k, v in aucs.items()))

    rows = []
    for batch in BATCHES:
        xb = np.ascontiguousarray(np.resize(x_val, (batch, size, size, 3)), dtype=np.float32)
        calls = {v: (lambda fn=fn, xb=xb: fn(xb)) for v, fn in runners.items()}
        rates = interleaved_rates(calls, batch, rounds=rounds, min_seconds=min_seconds)
        for variant, r in rates.items():
            rows.append({"model": name, "size": size, "batch": batch, "variant": variant,
                         "images_per_s": r["median"], "best_images_per_s": r["best"],
                         "val_auc": aucs[variant],
                         "auc_drop_vs_f32": aucs["openvino f32"] - aucs[variant],
                         "vs_keras": r["median"] / rates[KERAS]["median"],
                         "vs_f32": r["median"] / rates["openvino f32"]["median"]})
        log(f"  {name} batch {batch}: " + ", ".join(
            f"{v} {r['median']:,.0f}/s" for v, r in rates.items()))
    return rows


def summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The goals: OpenVINO f32 >= 3x Keras at batch 1; INT8 >= 1.5x f32 at batch 64 inside
    the AUC gate."""
    def pick(model: str, batch: int, variant: str) -> dict[str, Any] | None:
        return next((r for r in rows if (r["model"], r["batch"], r["variant"]) ==
                     (model, batch, variant)), None)

    out = []
    for model in dict.fromkeys(r["model"] for r in rows):
        f32_b1 = pick(model, 1, "openvino f32")
        int8_b64 = pick(model, 64, "openvino int8")
        bf16_b64 = pick(model, 64, "openvino bf16")
        if f32_b1 is None or int8_b64 is None:
            continue
        out.append({
            "model": model,
            "f32_vs_keras_b1": f32_b1["vs_keras"],
            "f32_vs_keras_eager_b1": f32_b1["images_per_s"]
            / pick(model, 1, "keras (eager)")["images_per_s"],
            "int8_vs_f32_b64": int8_b64["vs_f32"],
            "bf16_vs_f32_b64": bf16_b64["vs_f32"] if bf16_b64 else None,
            "int8_auc_drop": int8_b64["auc_drop_vs_f32"],
            "bf16_auc_drop": bf16_b64["auc_drop_vs_f32"] if bf16_b64 else None,
            "goal_f32_3x_keras": f32_b1["vs_keras"] >= 3.0,
            "goal_int8_1.5x_f32_in_gate": int8_b64["vs_f32"] >= 1.5
            and int8_b64["auc_drop_vs_f32"] <= GATE,
        })
    return out


def run(opts: BenchOptions, log: Log = say) -> dict[str, Any]:
    from patchray.models.keras_compat import load_tensorflow

    threads = os.cpu_count() or 1
    tf = load_tensorflow()
    tf.config.threading.set_intra_op_parallelism_threads(threads)  # as OpenVINO gets
    tf.config.threading.set_inter_op_parallelism_threads(1)
    patients, per_patient, epochs = (6, 150, 3) if opts.quick else (10, 300, 6)
    rounds, min_seconds = (3, 0.3) if opts.quick else (5, 1.0)
    rows: list[dict[str, Any]] = []
    cases = CASES[:1] if opts.extra.get("cnn6_only") else CASES
    for name, size in cases:
        dataset = synthetic_dataset(opts.out / "data", size, patients=patients,
                                    per_patient=per_patient, log=log)
        log(f"{name} {size}x{size}: training {epochs} epochs on {dataset.rows('train')} "
            f"patches, then IR, INT8, and {len(VARIANTS)} variants x batch {BATCHES}")
        rows += run_case(name, size, dataset, opts.out / "infer-models", epochs=epochs,
                         rounds=rounds, min_seconds=min_seconds, threads=threads, log=log)
    print(format_table(rows, ["model", "size", "batch", "variant", "images_per_s", "val_auc",
                              "vs_keras", "vs_f32"]), flush=True)
    ratios = summary(rows)
    print(format_table(ratios, ["model", "f32_vs_keras_b1", "int8_vs_f32_b64",
                                "bf16_vs_f32_b64", "int8_auc_drop", "goal_f32_3x_keras",
                                "goal_int8_1.5x_f32_in_gate"]), flush=True)
    chart = bar_chart(
        opts.out / f"{NAME}.png",
        {f"{m} b{b}": {r["variant"]: r["images_per_s"] for r in rows
                       if (r["model"], r["batch"]) == (m, b)}
         for m, b in dict.fromkeys((r["model"], r["batch"]) for r in rows)},
        title=f"inference images/s on {threads} cores (same model, same cores)",
        ylabel="images/s (log)", log_scale=True)
    return finish(opts, NAME, rows, chart, log, threads=threads, summary=ratios)
