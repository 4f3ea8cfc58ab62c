"""A run with Macenko stain normalisation and HED stain augmentation trains on the real stack;
its checkpoint carries the fitted stain, and the exported model's predictor applies it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from patchray.data.manifest import PatchDataset

pytestmark = pytest.mark.integration


# 37-44 s on the shared 2-core machine (1 epoch of tiny + export): over the default suite's
# per-test budget, so --run-slow; the pipeline pieces are unit-tested without Ray
# (tests/unit/inference/test_stain_contract.py).
@pytest.mark.slow
def test_a_stain_normalised_run_carries_its_stain_into_checkpoint_export_and_predictor(
        ray_cluster, tiny_dataset, tmp_path):
    from patchray.config import TrainJobConfig, load_config
    from patchray.data.transforms import normalise
    from patchray.export.openvino_export import export_openvino
    from patchray.inference.predictor import PatchPredictor
    from patchray.inference.preprocess import StainNormalisation
    from patchray.training.trainer import run_training

    cfg = load_config(model=TrainJobConfig, overrides=[
        f"runs_root={tmp_path}", "train.input_size=32", "train.batch_size=8",
        "train.model=tiny", "train.epochs=1", "train.num_workers=1",
        "data.augment=true", "data.stain.method=macenko", "data.stain.reference_patches=16",
        "data.stain_augment=0.5"])
    dataset = PatchDataset.open(tiny_dataset)
    outcome = run_training(cfg, dataset=dataset, storage_root=str(tmp_path), run_name="train",
                           local_dir=str(tmp_path))
    meta = json.loads(Path(outcome.best_checkpoint_dir, "meta.json").read_text())
    stain = StainNormalisation.model_validate(meta["preprocess"]["stain"])
    assert stain.method == "macenko" and "16 patches sampled" in stain.fitted_on
    assert 0.0 <= outcome.best_metrics["val_auc"] <= 1.0

    rows = dataset.sample_rows("val", 8)
    from patchray.inference.preprocess import Preprocess

    contract = Preprocess.model_validate(meta["preprocess"])
    pixels = contract.rows(rows, encoding=dataset.encoding)
    exported = export_openvino(outcome.best_checkpoint_dir, tmp_path / "ir", pixels,
                               parity_atol=1e-4)
    assert exported.preprocess.stain == stain
    predictor = PatchPredictor(exported.model_xml, exported.preprocess,
                               inference_precision="f32")
    stained = normalise(stain.apply(pixels))
    assert not np.array_equal(stained, normalise(pixels))
    np.testing.assert_array_equal(predictor.preprocess.inputs(pixels), stained)
    np.testing.assert_allclose(predictor.predict_pixels(pixels),
                               predictor.predict_arrays(stained), atol=1e-6)
