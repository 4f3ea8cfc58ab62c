"""sgan_tiny through Ray Train: 2 workers under MultiWorkerMirroredStrategy on a dataset with
an unlabelled split, then resumed from its checkpoint (generator optimizer included)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from patchray.data.manifest import PatchDataset

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def semi_dataset(tmp_path_factory) -> PatchDataset:
    """3 patients x 32 patches of 16x16 (one per split); 8 of train's 32 keep their label."""
    from patchray.benchmarks.sgan import semi_supervised_dataset
    from patchray.config import DataConfig
    from patchray.data.ingest import ingest_synthetic

    root = tmp_path_factory.mktemp("sgan-data")
    data = DataConfig.model_validate(
        {"synthetic": {"num_patients": 3, "patches_per_patient": 32, "patch_size": 16}})
    ingest_synthetic(data, str(root / "full"))
    return semi_supervised_dataset(PatchDataset.open(str(root / "full")), str(root / "semi"),
                                   fraction=0.25)


def _config(tmp_path: Path, epochs: int):
    from patchray.config import TrainJobConfig, load_config

    return load_config(model=TrainJobConfig, overrides=[
        f"runs_root={tmp_path}", "train.model=sgan_tiny", "train.input_size=16",
        "train.batch_size=4", "data.augment=false", f"train.epochs={epochs}",
    ])


# ~90 s on 2 cores (two Ray Train runs): over the default suite's budget.
@pytest.mark.slow
def test_sgan_trains_on_unlabelled_rows_with_two_workers_and_resumes(
    ray_cluster, semi_dataset, tmp_path
):
    from patchray.models.keras_compat import load_tensorflow
    from patchray.training.trainer import run_training

    assert semi_dataset.rows("train") == 8 and semi_dataset.rows("unlabelled") == 24
    first = run_training(_config(tmp_path, 1), dataset=semi_dataset,
                         storage_root=str(tmp_path), run_name="train", local_dir=str(tmp_path))
    (epoch0,) = first.history
    # 32 rows (8 labelled + 24 unlabelled) in global batches of 2 x 4: the 8 labelled
    # rows alone would make 1 step.
    assert epoch0["optimizer_steps"] >= 3, epoch0
    assert 0.0 <= epoch0["val_auc"] <= 1.0 and epoch0["loss"] == epoch0["loss"]  # not NaN
    reports = [json.loads(p.read_text()) for p in sorted((tmp_path / "train" / "replicas")
                                                         .glob("rank*.json"))]
    assert [r["rank"] for r in reports] == [0, 1]
    assert reports[0]["trainable_weights_sha256"] == reports[1]["trainable_weights_sha256"]

    again = run_training(_config(tmp_path, 2), dataset=semi_dataset,
                         storage_root=str(tmp_path), run_name="train",
                         local_dir=str(tmp_path / "again"))
    assert again.epochs_before == 1 and [h["epoch"] for h in again.history] == [0, 1]
    steps = [h["optimizer_steps"] for h in again.history]
    assert steps[1] > steps[0]  # the optimizer's step count continued from the checkpoint
    # The latest checkpoint holds the generator and both optimizers' state.
    tf = load_tensorflow()
    best = Path(again.best_checkpoint_dir)
    meta = json.loads((best / "meta.json").read_text())
    reader = tf.train.load_checkpoint(str(best / meta["tf_checkpoint"]))
    names = reader.get_variable_to_shape_map()
    g_iter = [n for n in names if n.startswith("generator_optimizer/_iterations")]
    assert g_iter, sorted(names)[:20]
    d_iter = [n for n in names if n.startswith("optimizer/_iterations")]
    assert int(reader.get_tensor(g_iter[0])) == int(reader.get_tensor(d_iter[0])) == \
        next(h for h in again.history if h["epoch"] == meta["epoch"])["optimizer_steps"]
    # Every variable of a fresh sgan_tiny (its generator's too) has its value in there.
    from patchray.models import create_model

    model = create_model("sgan_tiny", input_size=16)
    fresh = [w.numpy().copy() for w in model.generator.weights]
    tf.train.Checkpoint(model=model).read(
        str(best / meta["tf_checkpoint"])).assert_existing_objects_matched()
    assert any((a != w.numpy()).any() for a, w in zip(fresh, model.generator.weights))
