"""The benchmarks' cores run on tiny inputs and return sane structures (no timing asserts)."""

import json

import numpy as np
import pytest

from patchray.benchmarks import augment as augment_bench
from patchray.benchmarks import decode as decode_bench
from patchray.benchmarks import ingest as ingest_bench
from patchray.benchmarks.common import BenchOptions, format_table, interleaved_rates
from patchray.benchmarks.memory import MemorySampler, memory_chart
from patchray.benchmarks.reference import apply_augment_hsv
from patchray.benchmarks.training import epoch_rates, steady_rate
from patchray.data.transforms import apply_augment, draw_augment_params, normalise


def test_interleaved_rates_runs_every_variant_every_round():
    calls = {"a": 0, "b": 0}

    def count(name):
        calls[name] += 1

    rates = interleaved_rates({k: (lambda k=k: count(k)) for k in calls}, 10, rounds=3,
                              min_seconds=0.0)
    assert calls == {"a": 3, "b": 3}
    assert all(r["rounds"] == 3 and r["best"] >= r["median"] > 0 for r in rates.values())


def test_decode_core_reports_every_layout():
    rows = decode_bench.measure_decode(24, n=4, rounds=1, min_seconds=0.0)
    assert [r["layout"] for r in rows] == ["png", "raw", "raw-zstd", "png+augment",
                                           "raw+augment"]
    png = rows[0]
    assert png["vs_png"] == 1.0 and png["cores_per_gpu"] > 0
    assert all(r["patches_per_s_core"] > 0 for r in rows)
    assert next(r for r in rows if r["layout"] == "raw")["bytes_per_patch"] == 24 * 24 * 3


def test_augment_core_reports_before_and_after():
    row = augment_bench.measure_augment(24, n=4, rounds=1, min_seconds=0.0)
    assert row["before_per_s"] > 0 and row["after_per_s"] > 0 and row["speedup"] > 0
    assert 0 < row["after_share"] < 1
    assert row["vs_exact_hsv_mean_abs"] < 0.02


def test_fast_augment_is_the_hsv_reference_except_for_the_hue_approximation():
    rng = np.random.default_rng(0)
    x = normalise(rng.integers(0, 256, (16, 12, 12, 3), dtype=np.uint8))
    params = draw_augment_params(16, np.random.default_rng(1))
    # Geometry, brightness, contrast and saturation are exact...
    no_hue = type(params)(**{**params.__dict__, "hue": np.zeros(16, np.float32)})
    np.testing.assert_allclose(apply_augment(x, no_hue), apply_augment_hsv(x, no_hue),
                               atol=1e-5)
    # ... and the hue rotation lands close to the exact HSV round trip.
    assert np.abs(apply_augment(x, params) - apply_augment_hsv(x, params)).mean() < 0.02


def test_training_epoch_rates_use_the_steps_of_each_epoch():
    history = [
        {"epoch": 0, "train_seconds": 10.0, "optimizer_steps": 5},
        {"epoch": 1, "train_seconds": 2.0, "optimizer_steps": 10},
        {"epoch": 2, "train_seconds": 3.0, "optimizer_steps": 15},
    ]
    rates = epoch_rates(history, images_per_epoch=600, global_batch=128)
    assert [r["steps"] for r in rates] == [5, 5, 5]
    assert rates[1]["images"] == 600 and rates[1]["images_per_s"] == 300.0
    assert steady_rate(rates) == pytest.approx(1200 / 5.0)  # epoch 1 is left out


def test_memory_sampler_sees_this_process_and_draws_a_chart(tmp_path):
    with MemorySampler(interval=0.05) as sampler:
        _ = np.ones(2_000_000)
    assert len(sampler.samples) >= 2
    assert all(s["pss_mb"] > 0 and s["rss_mb"] >= s["pss_mb"] * 0.5 for s in sampler.samples)
    result = {"samples": sampler.samples, "baseline_pss_mb": sampler.samples[0]["pss_mb"],
              "object_store_mb": 200, "epoch_window_s": [0.0, sampler.mark()],
              "decoded_mb": 1.0, "size": 8}
    assert memory_chart(tmp_path / "memory.png", result).stat().st_size > 0


def test_benchmark_run_writes_json_and_chart(tmp_path, capsys):
    opts = BenchOptions(out=tmp_path, sizes=(20,), quick=True)
    payload = augment_bench.run(opts, log=lambda _: None)
    saved = json.loads((tmp_path / "augment.json").read_text())
    assert saved["rows"][0]["size"] == 20 == payload["rows"][0]["size"]
    assert (tmp_path / "augment.png").stat().st_size > 0
    assert "speedup" in capsys.readouterr().out


def test_ingest_core_compares_ingest_with_copying_the_files(tmp_path):
    src = tmp_path / "src"
    files = ingest_bench.make_idc_tree(src, 50, patients=3, per_patient=8)
    assert files == 24
    row = ingest_bench.measure_ingest(src, tmp_path / "work", files, rounds=1)
    assert row["patches"] == 24 and row["copy_per_s"] > 0 and row["ingest_per_s"] > 0
    assert row["ratio"] == pytest.approx(row["ingest_per_s"] / row["copy_per_s"])
    assert row["parallel_per_s"] > 0 and row["processes"] >= 1
    # Both ingests wrote the same dataset, whatever the number of processes.
    for name in ("manifest.json", "train/part-00000.parquet"):
        assert ((tmp_path / "work/dataset" / name).read_bytes()
                == (tmp_path / "work/dataset-parallel" / name).read_bytes())
    manifest = json.loads((tmp_path / "work" / "dataset" / "manifest.json").read_text())
    assert sum(split["rows"] for split in manifest["splits"].values()) == 24


def test_format_table_aligns_columns():
    text = format_table([{"a": 1, "b": 1234.5}, {"a": 22, "b": 0.01234}], ["a", "b"])
    lines = text.splitlines()
    assert len(lines) == 4 and len({len(line) for line in lines}) == 1
    assert "1,234" in text and "0.0123" in text


def test_consumer_and_keras_baseline_cores_train_a_tiny_model():
    from patchray.benchmarks.reader import train_step_rate
    from patchray.benchmarks.training import keras_fit_rate

    step = train_step_rate("tiny", 16, batch=4, min_seconds=0.0, warmup=1, threads=None)
    assert step["steps"] >= 3 and step["images_per_s"] == pytest.approx(4 * step["steps_per_s"])
    rng = np.random.default_rng(0)
    x = rng.random((12, 16, 16, 3), dtype=np.float32)
    y = (rng.random(12) < 0.5).astype(np.float32)
    fit = keras_fit_rate(x, y, np.ones(12, np.float32), model="tiny", size=16, global_batch=4,
                         epochs=2, threads=None)
    assert [e["epoch"] for e in fit["epochs"]] == [1, 2]
    assert fit["images_per_s"] == pytest.approx(fit["epochs"][1]["images_per_s"])


def test_tune_benchmark_counts_epochs_until_the_best_report_across_trials():
    from patchray.benchmarks.tune import epochs_until_best
    from patchray.tuning.results import TrialRecord

    def rec(tid, pairs):
        return TrialRecord(tid, {}, [{"epoch": i, "val_auc": a, "finished_at": t}
                                     for i, (a, t) in enumerate(pairs)], 0, "")
    records = [rec("a", [(0.7, 1.0), (0.9, 4.0), (0.8, 6.0)]), rec("b", [(0.6, 2.0), (0.9, 5.0)])]
    # The first report of the best AUC (0.9, at t=4) came after 3 epochs in all.
    assert epochs_until_best(records) == 3
    assert epochs_until_best([]) == 0
