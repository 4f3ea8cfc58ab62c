"""PatchPredictor on a small OpenVINO graph built here (no TensorFlow, no training)."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from patchray.inference.predictor import PatchPredictor
from patchray.inference.preprocess import Preprocess

SIZE = 8


@pytest.fixture(scope="module")
def mean_model(tmp_path_factory) -> PatchPredictor:
    """sigmoid(mean of the input - 0.5): a probability that depends on every pixel."""
    import openvino as ov
    import openvino.opset13 as ops

    x = ops.parameter([-1, SIZE, SIZE, 3], np.float32, name="patches")
    mean = ops.reduce_mean(x, np.array([1, 2, 3], dtype=np.int64), keep_dims=False)
    out = ops.sigmoid(ops.subtract(mean, np.float32(0.5)))
    path = tmp_path_factory.mktemp("ir") / "mean.xml"
    ov.save_model(ov.Model([out], [x], "mean"), path)
    return PatchPredictor(path, Preprocess(size=SIZE), inference_precision="f32")


def expected(pixels: np.ndarray) -> np.ndarray:
    mean = (pixels.astype(np.float64) / 255.0).mean(axis=(1, 2, 3))
    return 1.0 / (1.0 + np.exp(-(mean - 0.5)))


def test_probabilities_match_the_graph_and_empty_batches_are_empty(mean_model):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (5, SIZE, SIZE, 3), dtype=np.uint8)
    np.testing.assert_allclose(mean_model.predict_pixels(pixels), expected(pixels), atol=1e-5)
    assert mean_model.predict_pixels(pixels[:0]).shape == (0,)


def test_concurrent_calls_from_threads_each_get_their_own_answer(mean_model):
    """Serve calls one replica's predictor from its event loop and from its health-check
    thread at once; one shared infer request failed there with "Infer Request is busy"."""
    rng = np.random.default_rng(1)
    batches = [rng.integers(0, 256, (int(rng.integers(1, 33)), SIZE, SIZE, 3), dtype=np.uint8)
               for _ in range(8)]
    errors: list[BaseException] = []
    wrong: list[int] = []

    def work(k: int) -> None:
        try:
            for _ in range(50):
                got = mean_model.predict_pixels(batches[k])
                if not np.allclose(got, expected(batches[k]), atol=1e-5):
                    wrong.append(k)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(len(batches))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    assert not wrong, f"answers mixed up between threads for batches {sorted(set(wrong))}"
