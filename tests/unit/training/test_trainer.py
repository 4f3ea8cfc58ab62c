"""Training configuration without a cluster: GPU/precision settings, the ScalingConfig they
produce, the job specs in jobs/, and the checkpoint bookkeeping that makes resuming visible."""

from pathlib import Path

import pytest

from patchray.config import load_config
from patchray.errors import ConfigError
from patchray.training.loop import ARCHITECTURE_KEYS, Progress, architecture_mismatch
from patchray.training.trainer import loop_config, scaling_config

REPO = Path(__file__).resolve().parents[3]


def test_cpu_scaling_config_reserves_cpus_only():
    sc = scaling_config(load_config(overrides=["train.num_workers=3", "train.cpus_per_worker=2"]))
    assert sc.num_workers == 3 and sc.use_gpu is False
    assert sc.resources_per_worker == {"CPU": 2}


def test_use_gpu_reserves_a_gpu_share_per_worker():
    cfg = load_config(overrides=["train.use_gpu=true", "train.gpus_per_worker=0.5"])
    sc = scaling_config(cfg)
    assert sc.use_gpu is True and sc.num_workers == 2
    assert sc.resources_per_worker == {"CPU": 1, "GPU": 0.5}
    assert sc.num_gpus_per_worker == 0.5


def test_use_gpu_without_a_gpu_share_is_rejected():
    # Ray 2.60's ScalingConfig accepts it and silently reserves 1 GPU per worker instead.
    with pytest.raises(ConfigError, match="gpus_per_worker is 0"):
        load_config(overrides=["train.use_gpu=true", "train.gpus_per_worker=0"])


def test_mixed_precision_needs_a_gpu_and_reaches_the_workers():
    with pytest.raises(ConfigError, match="mixed_precision needs train.use_gpu"):
        load_config(overrides=["train.mixed_precision=true"])
    cfg = load_config(overrides=["train.use_gpu=true", "train.mixed_precision=true"])
    assert loop_config(cfg)["mixed_precision"] is True
    assert loop_config(load_config())["mixed_precision"] is False


def test_job_specs_describe_their_datasets():
    idc = load_config(REPO / "jobs" / "idc.yaml")
    assert (idc.train.model, idc.train.input_size, idc.train.num_workers) == ("cnn6", 50, 2)
    assert idc.data.class_weighting == "balanced" and idc.data.augment
    assert idc.train.epochs >= 20 and idc.data.root
    pcam = load_config(REPO / "jobs" / "pcam.yaml")
    assert (pcam.train.model, pcam.train.input_size) == ("cnn6", 96)
    demo = load_config(REPO / "jobs" / "train-demo.yaml")
    assert demo.dataset == "synthetic" and demo.data.root and demo.train.epochs <= 6
    for cfg in (idc, pcam, demo):
        assert cfg.name and not cfg.train.use_gpu  # GPU is an explicit --set


def test_resumed_progress_keeps_history_and_counts_attempts():
    config = loop_config(load_config(overrides=["train.epochs=4"]))
    first = Progress()
    first.history += [{"epoch": 0, "attempt": 1}, {"epoch": 1, "attempt": 1}]
    meta = first.meta(1, "ckpt", config, "a" * 64)
    assert meta["attempt"] == 1 and meta["resumed_from_epoch"] is None and meta["epochs"] == 4

    second = Progress.from_meta(meta)
    assert second.start_epoch == 2 and second.attempt == 2
    assert second.history == meta["history"] and second.history is not meta["history"]
    meta2 = second.meta(3, "ckpt", config, "b" * 64)
    assert meta2["resumed_from_epoch"] == 1
    assert meta2["resumes"] == [{"attempt": 2, "from_epoch": 1}]
    third = Progress.from_meta(meta2)
    assert third.attempt == 3 and [r["from_epoch"] for r in third.resumes] == [1, 3]


def test_checkpoint_resumes_only_into_the_same_network():
    config = loop_config(load_config(overrides=["train.model=cnn6"]))
    meta = Progress().meta(0, "ckpt", config, "c" * 64)
    assert set(ARCHITECTURE_KEYS) <= set(meta)
    assert architecture_mismatch(meta, config) == []
    # Batch size, learning rate and worker count may change between attempts...
    assert architecture_mismatch(meta, {**config, "batch_size": 7, "learning_rate": 1.0}) == []
    # ...the network may not.
    changed = {**config, "model_args": {"dropout": 0.1}, "input_size": 96}
    assert [m.split(":")[0] for m in architecture_mismatch(meta, changed)] == [
        "model_args", "input_size"]
    older = {k: v for k, v in meta.items() if k != "mixed_precision"}  # before the flag existed
    assert architecture_mismatch(older, config) == []


def test_previous_result_uses_ray_trains_public_restore_and_its_contract_holds(tmp_path):
    """patchray detects a resumable run with ``ray.train.Result.from_path`` alone. It relies on
    from_path raising RuntimeError for a run folder without a checkpoint snapshot: if Ray
    changes that, this test fails (instead of resume silently breaking)."""
    from ray.train import Result

    from patchray.training.trainer import previous_result

    assert previous_result(str(tmp_path), "never-ran") is None
    (tmp_path / "started").mkdir()  # a run killed before its first checkpoint
    with pytest.raises(RuntimeError):
        Result.from_path(str(tmp_path / "started"))
    assert previous_result(str(tmp_path), "started") is None


def test_unknown_model_fails_at_config_load_time_with_close_matches():
    from patchray.errors import ConfigError

    with pytest.raises(ConfigError, match=r"train\.model: .*unknown model 'cnn66'.*did you mean"):
        load_config(overrides=["train.model=cnn66"])


def test_train_job_config_has_no_serve_section_and_the_demo_has():
    from patchray.config import DemoConfig, TrainJobConfig
    from patchray.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown key 'serve'"):
        load_config(overrides=["serve.port=9000"], model=TrainJobConfig)
    assert load_config(overrides=["serve.port=9000"], model=DemoConfig).serve.port == 9000


def test_a_failed_fit_becomes_an_error_that_names_the_run_or_the_dataset():
    """How trainer.fit() failures reach the user (raised, as Ray Train V2 does, or returned
    in result.error): a corrupted page names the dataset, anything else the run."""
    from types import SimpleNamespace

    from patchray.errors import DataError, TrainingError
    from patchray.training.trainer import fit

    class Raising:
        def __init__(self, error):
            self.error = error

        def fit(self):
            raise self.error

    crc = OSError("worker died\nCRC checksum verification failed for page 3")
    with pytest.raises(DataError, match=r"s3://b/ds: a Parquet page failed its checksum"):
        fit(Raising(crc), "s3://b/ds", "runs/x/train")
    with pytest.raises(TrainingError, match=r"training run runs/x/train failed: CUDA out of "
                                            r"memory \(the workers' tracebacks are in the run"):
        fit(Raising(RuntimeError("Traceback ...\nCUDA out of memory")), "d", "runs/x/train")
    returned = SimpleNamespace(fit=lambda: SimpleNamespace(error=ValueError("bad shape")))
    with pytest.raises(TrainingError, match="failed: bad shape") as e:
        fit(returned, "d", "runs/x/train")
    assert isinstance(e.value.__cause__, ValueError)
    ok = SimpleNamespace(error=None)
    assert fit(SimpleNamespace(fit=lambda: ok), "d", "r") is ok
