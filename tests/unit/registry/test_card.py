"""The model card: validated, rendered, and the one place a predictor takes its threshold."""

import json

import pytest

from patchray.errors import ArtifactError
from patchray.inference.preprocess import Preprocess
from patchray.registry.card import ModelCard, PrecisionRecord, ir_files, parse_card, render_markdown


def make_card(**update) -> ModelCard:
    precisions = {
        "f32": PrecisionRecord(file="model.xml", inference_hint="f32", val_auc=0.95,
                               auc_drop=0.0, passed=True, threshold=0.41,
                               test={"auc": 0.93, "sensitivity": 0.95, "specificity": 0.8}),
        "bf16": PrecisionRecord(file="model.xml", inference_hint="bf16", val_auc=0.949,
                                auc_drop=0.001, passed=True, threshold=0.40, images_per_s=900.0),
        "int8": PrecisionRecord(file="model-int8.xml", inference_hint="f32", val_auc=0.90,
                                auc_drop=0.05, max_auc_drop=0.005, passed=False,
                                reason="val AUC 0.9000 is 0.0500 below f32's", threshold=0.3),
    }
    card = ModelCard(name="cnn2-synthetic", architecture="cnn2", dataset="synthetic",
                     created="2026-12-02T00:00:00+00:00", input=Preprocess(size=32),
                     threshold_rule={"rule": "sensitivity", "min_sensitivity": 0.95},
                     precisions=precisions, serving_precision="bf16", patchray_version="0.1.0",
                     limitations=["Trained on 3 patients."], intended_use="A second look.")
    return card.model_copy(update=update)


def test_each_precision_has_its_own_threshold_and_auto_is_the_serving_one():
    card = make_card()
    assert card.threshold("auto") == 0.40
    assert card.threshold("f32") == 0.41
    assert card.precision("auto")[0] == "bf16"


def test_a_precision_that_failed_its_gate_cannot_be_asked_for():
    with pytest.raises(ArtifactError, match="precision 'int8' failed its gate .*below f32"):
        make_card().precision("int8")


def test_only_files_of_passed_precisions_are_shipped():
    assert ir_files(make_card()) == ["model.bin", "model.xml"]


def test_unknown_keys_and_bad_values_are_refused_naming_the_field():
    doc = make_card().model_dump(mode="json")
    doc["thresholds"] = 1
    with pytest.raises(ArtifactError, match="card.json: invalid model card .*thresholds"):
        parse_card(json.dumps(doc), where="x/card.json")


def test_markdown_carries_use_limits_contract_and_every_precision():
    md = render_markdown(make_card(version=3, files={"model.xml": "ab" * 32}))
    assert md.startswith("# cnn2-synthetic v3")
    for text in ("A second look.", "- Trained on 3 patients.", "32x32 px", "pixels x 0.00392157",
                 "| int8 | model-int8.xml | f32 | 0.9000 | 0.0500 | FAIL |",
                 "Served by default: **bf16**", "`model.xml` sha256 `abab"):
        assert text in md
