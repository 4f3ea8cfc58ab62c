"""The reader and memory benchmarks' cores stream the real training pipeline on Ray."""

import pytest

pytestmark = pytest.mark.integration


def test_reader_and_memory_cores_stream_the_training_pipeline(ray_cluster, tmp_path):
    from patchray.benchmarks.common import synthetic_dataset
    from patchray.benchmarks.memory import measure_memory
    from patchray.benchmarks.reader import measure_reader

    dataset = synthetic_dataset(tmp_path, 24, patients=3, per_patient=20, log=lambda _: None)
    train_rows = dataset.rows("train")
    for reader in ("v2", "v1"):
        out = measure_reader(dataset, 24, epochs=2, reader=reader)
        assert [e["rows"] for e in out["epochs"]] == [train_rows - train_rows % 2] * 2
        assert out["per_worker_images_per_s"] > 0 and out["first_batch_seconds"] >= 0
    mem = measure_memory(dataset, 24, images_per_s=1e6, object_store_mb=768)
    assert mem["rows"] == train_rows and mem["decoded_mb"] > 0
    assert mem["peak_pss_mb"] >= mem["baseline_pss_mb"] > 0 and len(mem["samples"]) >= 3


def test_inference_benchmark_core_measures_every_variant_side_by_side(tmp_path):
    """`patchray bench infer`'s core, bounded: a tiny model, one short round per batch."""
    from patchray.benchmarks.common import synthetic_dataset
    from patchray.benchmarks.infer import VARIANTS, run_case, summary

    dataset = synthetic_dataset(tmp_path, 24, patients=4, per_patient=30, log=lambda _: None)
    rows = run_case("cnn2", 24, dataset, tmp_path / "models", epochs=1, rounds=1,
                    min_seconds=0.05, threads=2, log=lambda _: None)
    assert {(r["batch"], r["variant"]) for r in rows} >= {
        (b, v) for b in (1, 64) for v in VARIANTS if v != "openvino bf16"}
    for r in rows:
        assert r["images_per_s"] > 0 and 0.0 <= r["val_auc"] <= 1.0
    keras = next(r for r in rows if r["variant"] == "keras (tf.function)" and r["batch"] == 1)
    assert keras["vs_keras"] == 1.0
    (ratios,) = summary(rows)
    f32_b1 = next(r for r in rows if r["variant"] == "openvino f32" and r["batch"] == 1)
    assert ratios["f32_vs_keras_b1"] == pytest.approx(f32_b1["images_per_s"]
                                                     / keras["images_per_s"])
    assert (tmp_path / "models" / "cnn2" / "model-int8.xml").is_file()


def test_serve_benchmark_smoke_loads_every_target_with_wrk(tmp_path):
    """`patchray bench serve --smoke`, whole: a tiny model trained and registered, then wrk
    at concurrency 1 and 4 (2 s each) against no-op, plain and patchray Serve applications,
    the 64-patch case and a 3 s overload check. In its own process: the benchmark starts
    (and stops) its own local Ray and Serve, which the session's cluster must not share."""
    import json
    import shutil
    import subprocess
    import sys

    from patchray.benchmarks.serve import GOALS, TARGETS, X64

    if shutil.which("wrk") is None:
        pytest.skip("wrk is not installed")
    out = tmp_path / "bench"
    proc = subprocess.run([sys.executable, "-m", "patchray.benchmarks", "serve", "--smoke",
                           "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((out / "serve.json").read_text())
    assert result["errors"] == {}, result["errors"]
    assert result["mode"] == "smoke" and result["auth"].startswith("none")
    rows = result["rows"]
    for target in (*TARGETS, X64):
        mine = [r for r in rows if r["target"] == target]
        assert mine, f"no rows for {target}"
        for r in mine:
            assert r["req_s"] > 0 and r["p50_ms"] > 0 and r["s2xx"] > 0, r
            assert r["s5xx"] == 0, r
    assert {r["concurrency"] for r in rows if r["target"] == "noop"} == {1, 4}
    ratios = {r["ratio"]: r for r in result["ratios"]}
    assert set(ratios) == set(GOALS)
    assert all(r["value"] is not None and r["met"] in (True, False) for r in ratios.values())
    assert result["breakdown"]["noop_p50_ms"] > 0
    assert result["breakdown"]["raw_decode_ms_per_patch"] > 0
    assert {r["batch"] for r in result["raw"]} == {1, 64}
    overload = result["overload"]
    assert overload["concurrency"] >= 96 and overload["s2xx"] > 0
    assert overload["other_5xx"] == 0 and overload["after_status"] == 200
    assert overload["rss_mb_before"]["processes"], "no Serve replica processes found"
    assert (out / "serve.png").is_file()
