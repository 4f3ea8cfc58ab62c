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
