"""The multi-scale model end to end on synthetic pyramidal slides: two-view dataset ->
`patchray train` (Ray Train, 2 workers, 1 epoch) -> OpenVINO IR with two inputs behind the
parity gate -> registered with its card -> PatchPredictor.from_card scores a slide's tiles
from both views, as the Keras model does."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.integration

SIZE = 32
SCALE = 4.0


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    from patchray.slides.synthetic import write_synthetic_slide

    folder = tmp_path_factory.mktemp("ms-slides")
    return [write_synthetic_slide(folder / f"syn-m{i}.tif", width=1024, height=768, seed=i)
            for i in range(3)]


@pytest.fixture(scope="module")
def multiscale_dataset(slides, tmp_path_factory) -> str:
    """~100 tiles of 32 px per slide (stride 48), one slide = one patient = one split."""
    from patchray.config import TilingConfig
    from patchray.slides.multiscale import write_multiscale_dataset

    out = str(tmp_path_factory.mktemp("ms-data"))
    write_multiscale_dataset([s.path for s in slides], out, context_scale=SCALE,
                             tiling=TilingConfig(patch_size=SIZE, stride=48),
                             masks=slides[0].path.parent)
    return out


def test_multiscale_model_trains_exports_registers_and_predicts_a_slide(
        ray_cluster, slides, multiscale_dataset, tmp_path):
    from patchray.config import TrainJobConfig, load_config
    from patchray.export.openvino_export import load_checkpoint_model
    from patchray.inference.predictor import PatchPredictor
    from patchray.registry.store import ModelRegistry
    from patchray.slides.multiscale import read_context_tiles
    from patchray.slides.reader import open_slide
    from patchray.slides.scoring import BatchInputs, predict_inputs
    from patchray.slides.tiling import TilingConfig, read_tiles, tile_slide
    from patchray.workflows.train import run_train_job

    cfg = load_config(model=TrainJobConfig, overrides=[
        "name=multiscale", "dataset=ms-slides", f"runs_root={tmp_path}",
        f"data.root={multiscale_dataset}", "train.model=multiscale_cnn6",
        'train.model_args={"width": 0.25}', f"train.input_size={SIZE}", "train.epochs=1",
        "train.batch_size=16", "export.precisions=[f32,int8]", "registry.alias=staging",
        f"registry.root={tmp_path / 'registry'}"])
    t0 = time.perf_counter()
    result = run_train_job(cfg, shutdown=False)
    print(f"multiscale_cnn6: train + export + evaluate + register in "
          f"{time.perf_counter() - t0:.1f}s")

    # Trained data-parallel through Ray Train: two workers ending on the same weights.
    digests = [json.loads(p.read_text()) for p in
               sorted((result.run_dir / "train" / "replicas").glob("rank*.json"))]
    assert [d["rank"] for d in digests] == [0, 1]
    assert digests[0]["trainable_weights_sha256"] == digests[1]["trainable_weights_sha256"]

    # Registered with the two-input contract, the IR has both inputs.
    card = ModelRegistry(result.registry).resolve(f"{result.card.name}@staging")
    assert card.version == result.card.version
    assert card.input.context_scale == SCALE and card.input.size == SIZE
    assert card.architecture == "multiscale_cnn6"
    assert "second input `context`" in (result.model_dir / "card.md").read_text()
    assert card.parity["keras_vs_openvino_max_abs_diff"] <= cfg.export.parity_atol
    import openvino as ov

    ir = ov.Core().read_model(result.model_dir / "model.xml")
    assert sorted(i.get_any_name() for i in ir.inputs) == ["context", "patch"]
    assert 0.0 <= result.metrics["test"]["auc"] <= 1.0
    # INT8: NNCF calibrated both inputs and the IR was scored (registered if it passed the
    # AUC gate; one epoch of training may not).
    int8 = card.precisions["int8"]
    assert int8.available and int8.val_auc is not None, int8.reason

    # Loaded from the card, it scores a slide's tiles from both views, like Keras does.
    predictor = PatchPredictor.from_card(result.model_dir, precision="f32")
    assert predictor.multiscale and predictor.preprocess.context_scale == SCALE
    with open_slide(slides[0].path) as reader:
        tiling = tile_slide(reader, TilingConfig(patch_size=SIZE, stride=96), patient_id="p")
        tiles = list(tiling.tiles)
        patches = read_tiles(reader, tiles)
        contexts = read_context_tiles(reader, tiles, SCALE, SIZE)
    p = predictor.predict_pixels(patches, contexts)
    assert p.shape == (len(tiles),) and ((p >= 0) & (p <= 1)).all()
    x = predictor.preprocess.inputs(patches, contexts)
    np.testing.assert_allclose(predict_inputs(predictor, BatchInputs(x["patch"], x["context"])),
                               p, atol=1e-6)  # slide predict's hook for a second view
    keras_model, _ = load_checkpoint_model(Path(result.run_dir) / "best_checkpoint")
    expected = np.asarray(keras_model(x, training=False)).reshape(-1)
    # Keras matches the IR's raw output; what is served is the card's calibration of it.
    raw = predictor.predict_pixels(patches, contexts, raw=True)
    np.testing.assert_allclose(raw, expected, atol=1e-4)
    calibrate = predictor.calibration.apply if predictor.calibration else (lambda v: v)
    np.testing.assert_allclose(p, calibrate(raw), atol=1e-6)
    with pytest.raises(ValueError, match="two inputs .*got no context view"):
        predictor.predict_pixels(patches)
    with pytest.raises(ValueError, match="multi-scale model takes two inputs"):
        predictor.predict_arrays(x["patch"])

    # `slide predict` with it: the Ray Data job feeds both views; a tile's heat-map value is
    # the predictor's on that tile's patch and context.
    from patchray.config import SlidePredictJobConfig
    from patchray.slides.inputs import resolve_slide_inputs
    from patchray.slides.jobs import run_predict_job
    from patchray.slides.tiling import Tile

    out = tmp_path / "slide-predict"
    job = run_predict_job(resolve_slide_inputs([slides[0].path]), str(result.model_dir), out,
                          SlidePredictJobConfig.model_validate({"predict": {"precision": "f32"}}))
    (summary,) = job.summaries
    assert summary["model"]["input"]["context_scale"] == SCALE
    grid = np.load(out / summary["files"]["heatmap"])
    assert int((~np.isnan(grid)).sum()) == summary["tiles"] > 20
    assert (out / summary["files"]["overlay"]).is_file()
    ys, xs = np.nonzero(~np.isnan(grid))
    cell = summary["grid"]["cell0"]
    picked = [Tile("p", "p", 0, int(x) * cell, int(y) * cell, SIZE, SIZE, SIZE, None, 0.0,
                   None, None) for y, x in list(zip(ys, xs))[:: max(1, len(ys) // 8)]]
    with open_slide(slides[0].path) as reader:
        expected = predictor.predict_pixels(read_tiles(reader, picked),
                                            read_context_tiles(reader, picked, SCALE, SIZE))
    np.testing.assert_allclose([grid[t.y // cell, t.x // cell] for t in picked], expected,
                               atol=1e-5)
