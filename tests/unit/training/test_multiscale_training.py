"""The training side of multi-scale models without a cluster: the contract a run trains
with comes from the dataset, and a batch becomes the model's two named inputs."""

from __future__ import annotations

import numpy as np
import pytest

from patchray.config import load_config
from patchray.data.manifest import Manifest, PatchDataset
from patchray.errors import ConfigError
from patchray.inference.preprocess import Preprocess
from patchray.training.loop import batch_inputs
from patchray.training.trainer import loop_config, training_contract


def _dataset(**extra) -> PatchDataset:
    manifest = Manifest.model_validate({"schema_version": 1, "splits": {}, **extra})
    return PatchDataset("/nowhere", manifest)


def test_contract_takes_context_scale_and_mpp_from_a_multiscale_dataset():
    cfg = load_config(overrides=["train.model=multiscale_cnn6", "train.input_size=32"])
    ds = _dataset(views=["context_image"], context_scale=4.0,
                  source={"kind": "multiscale-slides", "microns_per_pixel": 0.5})
    contract = training_contract(cfg, ds)
    assert contract == Preprocess(size=32, context_scale=4.0, microns_per_pixel=0.5)
    assert loop_config(cfg, preprocess=contract)["preprocess"]["context_scale"] == 4.0
    # the default loop config (run_training's architecture check) stays the config's own
    assert loop_config(cfg)["preprocess"]["context_scale"] is None


def test_a_multiscale_model_refuses_a_single_view_dataset():
    cfg = load_config(overrides=["train.model=multiscale_cnn6"])
    with pytest.raises(ConfigError, match="takes two views .*write_multiscale_dataset"):
        training_contract(cfg, _dataset())


def test_a_single_scale_model_on_a_multiscale_dataset_stays_single_input():
    cfg = load_config(overrides=["train.model=cnn6", "train.input_size=32"])
    ds = _dataset(views=["context_image"], context_scale=4.0)
    assert training_contract(cfg, ds) == Preprocess(size=32)
    assert training_contract(cfg, _dataset()) == Preprocess(size=32)


def test_batches_become_named_inputs():
    pixels = np.full((2, 4, 4, 3), 255, np.uint8)
    batch = {"x": pixels, "context": pixels // 3, "y": np.zeros(2), "w": np.ones(2)}
    multi = batch_inputs(batch, Preprocess(size=4, context_scale=2.0))
    assert sorted(multi) == ["context", "patch"]
    np.testing.assert_allclose(multi["patch"], 1.0)
    np.testing.assert_allclose(multi["context"], 85 / 255, rtol=1e-6)
    single = batch_inputs(batch, Preprocess(size=4))  # a context column is ignored
    assert isinstance(single, np.ndarray) and single.shape == (2, 4, 4, 3)
    with pytest.raises(ValueError, match="needs the context view"):
        batch_inputs({"x": pixels}, Preprocess(size=4, context_scale=2.0))
