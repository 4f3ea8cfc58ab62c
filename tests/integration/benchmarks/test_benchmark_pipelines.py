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
