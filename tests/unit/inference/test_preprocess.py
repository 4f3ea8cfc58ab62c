"""The executable input contract: one Preprocess, stored with the model, applied the same way
by training (Ray Data + worker), evaluation and serving."""

import io

import numpy as np
import pytest
from PIL import Image

from patchray.config import load_config
from patchray.data.records import encode_pixels
from patchray.data.transforms import prepare_training_batch
from patchray.errors import DataError
from patchray.inference.preprocess import Preprocess


def _edge_patch() -> np.ndarray:
    return np.random.default_rng(3).integers(0, 256, (32, 50, 3), dtype=np.uint8)


def test_contract_comes_from_the_training_config_and_round_trips_as_json():
    p = load_config(overrides=["train.input_size=64"]).train.preprocess()
    assert (p.size, p.scale, p.pad_value, p.channels) == (64, 1 / 255, 255, "RGB")
    assert Preprocess.model_validate_json(p.model_dump_json()) == p
    with pytest.raises(ValueError, match="Extra inputs"):
        Preprocess.model_validate({"size": 50, "normalize": "imagenet"})


def test_training_evaluation_and_serving_produce_the_same_input():
    """One edge patch (32x50, padded to 50x50) through the three paths, bit for bit."""
    p = Preprocess(size=50)
    pixels = _edge_patch()
    png, raw = encode_pixels(pixels, "png"), encode_pixels(pixels, "raw")
    # training: Ray Data decodes and pads (uint8), the worker scales
    batch = prepare_training_batch({"image": np.array([raw], object), "label": np.array([1]),
                                    "height": np.array([32]), "width": np.array([50])},
                                   size=p.size, augment_patches=False, weights={0: 1, 1: 1},
                                   encoding="raw", pad_value=p.pad_value)
    trained = p.to_input(batch["x"])
    # evaluation: a dataset's PNG records through the BatchScorer's call
    evaluated = p([png], encoding="png")
    # serving: one request body decoded by the same policy, batched
    served = p.to_input(np.stack([p.decode(png, source="request body")]))
    np.testing.assert_array_equal(trained, evaluated)
    np.testing.assert_array_equal(trained, served)
    assert trained.dtype == np.float32 and trained.shape == (1, 50, 50, 3)
    assert (served[0, 32:] == 1.0).all()  # white padding below the edge patch, scaled


def test_pad_value_and_scale_of_the_contract_are_applied():
    p = Preprocess(size=40, pad_value=0, scale=1.0)
    x = p([encode_pixels(_edge_patch()[:, :40], "png")])
    assert (x[0, 32:] == 0).all() and x.max() > 1.0


def test_serving_decode_refuses_what_ingest_refuses():
    grey = io.BytesIO()
    Image.fromarray(_edge_patch()[..., 0], "L").save(grey, format="PNG")
    with pytest.raises(DataError, match="request body: expected RGB, got mode L"):
        Preprocess(size=50).decode(grey.getvalue(), source="request body")


def test_to_input_refuses_patches_of_another_size():
    with pytest.raises(ValueError, match=r"expected \(N, 50, 50, 3\)"):
        Preprocess(size=50).to_input(np.zeros((1, 40, 40, 3), np.uint8))


def test_a_card_with_an_input_contract_from_before_it_grew_still_loads():
    from tests.unit.registry.test_card import make_card

    old = {"size": 50, "channels": "RGB", "layout": "NHWC", "dtype": "float32",
           "scale": 1 / 255, "pad_value": 255, "microns_per_pixel": None}
    card = make_card().model_copy(update={"input": Preprocess.model_validate(old)})
    assert type(card).model_validate_json(card.model_dump_json()).input == Preprocess(size=50)
