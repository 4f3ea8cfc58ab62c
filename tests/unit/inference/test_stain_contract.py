"""Stain normalisation as a step of the input contract: config, fitting at training time,
JSON round trip, and the SAME arrays through every path (training's Ray Data stage + worker
scaling, evaluation's row_inputs, the OpenVINO predictor, slide prediction's read_batch)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from patchray.config import TrainJobConfig, TuneJobConfig, load_config
from patchray.data.records import encode_png
from patchray.data.synthetic import patch_pixels
from patchray.data.transforms import normalise, prepare_training_batch
from patchray.errors import ConfigError
from patchray.inference.preprocess import Preprocess, StainNormalisation

SIZE = 32


def patches(n: int, patient: int = 1) -> np.ndarray:
    return np.stack([patch_pixels(0, patient, i, i % 2, SIZE) for i in range(n)])


@pytest.fixture(scope="module")
def fitted() -> Preprocess:
    return Preprocess(size=SIZE, stain=StainNormalisation.fit(
        "macenko", patches(64, patient=0), fitted_on="64 synthetic patches"))


def test_config_takes_the_stain_section_and_refuses_bad_values_naming_the_field():
    cfg = load_config(overrides=["data.stain.method=reinhard", "data.stain_augment=0.5",
                                 "data.stain.reference_patches=64"], model=TrainJobConfig)
    assert (cfg.data.stain.method, cfg.data.stain.reference, cfg.data.stain.seed,
            cfg.data.stain_augment) == ("reinhard", "train", 0, 0.5)
    default = load_config(overrides=[], model=TrainJobConfig)
    assert default.data.stain.method == "none" and default.data.stain_augment == 0.0
    for override, message in [("data.stain.method=vahadane", r"data\.stain\.method.*macenko"),
                              ("data.stain_augment=1.5", r"data\.stain_augment"),
                              ("data.stain_augment=-0.1", r"data\.stain_augment"),
                              ("data.stain.methd=macenko", "data.stain.methd")]:
        with pytest.raises(ConfigError, match=message):
            load_config(overrides=[override], model=TrainJobConfig)


def test_stain_augment_is_a_search_dimension_like_augment_strength():
    from patchray.tuning.space import describe, param_space, trial_config

    cfg = load_config(model=TuneJobConfig,
                      overrides=["tune.space.stain_augment={uniform: [0.0, 1.0]}"])
    space = param_space(cfg.tune.space)
    assert (space["stain_augment"].lower, space["stain_augment"].upper) == (0.0, 1.0)
    trial = trial_config(cfg, {"stain_augment": 0.25}, epochs=1, num_workers=1)
    assert trial.data.stain_augment == 0.25 and describe({"stain_augment": 0.25}) == \
        "stain_augment=0.25"
    with pytest.raises(ConfigError, match="stain_augment takes uniform or choice"):
        load_config(model=TuneJobConfig,
                    overrides=["tune.space.stain_augment={loguniform: [0.1, 1.0]}"])


def test_the_contract_round_trips_as_json_and_old_contracts_load(fitted):
    again = Preprocess.model_validate(json.loads(json.dumps(fitted.model_dump(mode="json"))))
    assert again == fitted and again.stain.method == "macenko"
    old = {"size": SIZE, "channels": "RGB", "layout": "NHWC", "dtype": "float32",
           "decode_policy": "strict-rgb", "scale": 1 / 255, "pad_value": 255,
           "pad_rule": "bottom-right", "resize": "bilinear-shrink",
           "microns_per_pixel": None, "context_scale": None}
    legacy = Preprocess.model_validate(old)
    assert legacy.stain is None
    x = patches(3)
    np.testing.assert_array_equal(legacy.to_input(x), normalise(x))  # today's bytes
    with pytest.raises(ValueError, match="macenko needs stain_matrix"):
        StainNormalisation(method="macenko", means=[0, 0, 0], stds=[1, 1, 1])
    with pytest.raises(ValueError, match="reinhard needs means"):
        StainNormalisation(method="reinhard")


def test_to_input_normalises_unless_told_the_pixels_already_are(fitted):
    x = patches(4)
    normalised = fitted.stain.apply(x)
    assert not np.array_equal(normalised, x)
    np.testing.assert_array_equal(fitted.to_input(x), normalise(normalised))
    np.testing.assert_array_equal(fitted.to_input(normalised, stain_normalised=True),
                                  normalise(normalised))
    multi = fitted.model_copy(update={"context_scale": 2.0})
    both = multi.inputs(x, x[::-1])
    np.testing.assert_array_equal(both["patch"], normalise(normalised))
    np.testing.assert_array_equal(both["context"], normalise(normalised[::-1]))


def test_the_card_names_the_stain_normalisation_in_its_input_contract(fitted):
    from patchray.registry.card import ModelCard, PrecisionRecord, render_markdown

    def card(contract: Preprocess) -> str:
        return render_markdown(ModelCard(
            name="m", version=1, architecture="cnn2", dataset="synthetic",
            created="2026-12-03T00:00:00+00:00", input=contract,
            threshold_rule={"rule": "fixed"},
            precisions={"f32": PrecisionRecord(file="model.xml", inference_hint="f32",
                                               passed=True, threshold=0.5)},
            serving_precision="f32", patchray_version="0.1.0", files={}))

    text = card(fitted)
    line = next(x for x in text.splitlines() if x.startswith("- stain normalisation: "))
    assert line.startswith("- stain normalisation: Macenko (H [") and "64 synthetic" in line
    assert "- stain normalisation: none" in card(Preprocess(size=SIZE))


def test_training_contract_fits_the_stain_deterministically_and_resume_reuses_it(tmp_path):
    from patchray.config import DataConfig
    from patchray.data.ingest import ingest_synthetic
    from patchray.data.manifest import PatchDataset
    from patchray.training.trainer import training_contract

    root = str(tmp_path / "data")
    ingest_synthetic(DataConfig.model_validate(
        {"synthetic": {"num_patients": 3, "patches_per_patient": 24, "patch_size": SIZE}}), root)
    dataset = PatchDataset.open(root)
    cfg = load_config(overrides=["data.stain.method=macenko", "data.stain.reference_patches=16",
                                 f"train.input_size={SIZE}"], model=TrainJobConfig)
    first = training_contract(cfg, dataset)
    assert first.stain.method == "macenko" and "16 patches sampled" in first.stain.fitted_on
    assert training_contract(cfg, dataset) == first  # seeded: a refit is identical
    other_seed = cfg.model_copy(deep=True)
    other_seed.data.stain.seed = 1
    assert training_contract(other_seed, dataset).stain != first.stain
    # Resuming reuses the checkpoint's fitted stain as stored (even if a refit differed).
    meta = {"preprocess": first.model_dump(mode="json")}
    assert training_contract(other_seed, dataset, resume_meta=meta).stain == first.stain
    plain = load_config(overrides=[f"train.input_size={SIZE}"], model=TrainJobConfig)
    assert training_contract(plain, dataset).stain is None
    with pytest.raises(ConfigError, match="trained with stain normalisation 'macenko'"):
        training_contract(plain, dataset, resume_meta=meta)
    # A local folder of patch images as the reference.
    folder = tmp_path / "ref"
    folder.mkdir()
    for i, p in enumerate(patches(5, patient=2)):
        (folder / f"p{i}.png").write_bytes(encode_png(p))
    local = cfg.model_copy(deep=True)
    local.data.stain.reference = str(folder)
    assert "5 patch image(s)" in training_contract(local, dataset).stain.fitted_on
    local.data.stain.reference = str(tmp_path / "missing")
    with pytest.raises(ConfigError, match="no such local image file or folder"):
        training_contract(local, dataset)


def _identity_ir(folder: Path) -> Path:
    """An OpenVINO graph whose output is its input: the predictor hands back what it fed."""
    import openvino as ov
    import openvino.opset13 as ops

    x = ops.parameter([-1, SIZE, SIZE, 3], np.float32, name="patches")
    path = folder / "identity.xml"
    ov.save_model(ov.Model([ops.multiply(x, np.float32(1.0))], [x], "identity"), path)
    return path


def test_every_path_feeds_the_model_the_same_arrays(fitted, tmp_path):
    pytest.importorskip("tifffile")
    from patchray.config import TilingConfig
    from patchray.inference.predictor import PatchPredictor
    from patchray.slides.inputs import resolve_slide_inputs, scan_slide
    from patchray.slides.reader import open_slide
    from patchray.slides.scoring import ReaderCache, read_batch
    from patchray.slides.synthetic import write_synthetic_slide
    from patchray.slides.tiling import read_tile
    from patchray.training.loop import batch_inputs

    slide = write_synthetic_slide(tmp_path / "syn.tif", width=512, height=384,
                                  downsamples=(1, 4))
    (source,) = resolve_slide_inputs([slide.path])
    scan = scan_slide(source, TilingConfig(patch_size=SIZE))
    n = min(12, scan.count)
    with open_slide(source.path) as reader:
        pixels = np.stack([read_tile(reader, t) for t in scan.tile_objects()[:n]])
    assert not np.array_equal(fitted.stain.apply(pixels), pixels)  # the stain does something
    records = [{"image": encode_png(p), "height": SIZE, "width": SIZE, "label": 0}
               for p in pixels]
    # (a) training: the Ray Data stage (augment off, as the val pass) + the worker's scaling
    batch = prepare_training_batch(
        {k: np.array([r[k] for r in records], dtype=object if k == "image" else None)
         for k in ("image", "height", "width", "label")},
        size=SIZE, augment_patches=False, weights={0: 1.0, 1: 1.0}, stain=fitted.stain)
    training = batch_inputs(batch, fitted)
    # (b) evaluation
    evaluation = fitted.row_inputs(records)
    # (c) the OpenVINO predictor (serving's path: predict_pixels -> preprocess.inputs)
    predictor = PatchPredictor(_identity_ir(tmp_path), fitted, inference_precision="f32")
    served = predictor.predict_pixels(pixels).reshape(pixels.shape)
    # (d) slide prediction
    rows = {"slide": np.zeros(n, dtype=np.int64),
            "x": np.array([t[0] for t in scan.tiles[:n]]),
            "y": np.array([t[1] for t in scan.tiles[:n]])}
    slides = [{**scan.geometry, "slide_id": source.slide_id, "path": source.path}]
    cache = ReaderCache()
    slide_inputs = read_batch(cache, rows, slides, fitted).x
    cache.close()
    want = normalise(fitted.stain.apply(pixels))
    for name, got in [("training", training), ("evaluation", evaluation),
                      ("predictor", served), ("slides", slide_inputs)]:
        np.testing.assert_array_equal(got, want, err_msg=name)
