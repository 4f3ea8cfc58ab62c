"""Each precision is gated against f32 on validation, and serving takes the fastest passer."""

import logging

import numpy as np
import pytest

from patchray.config import ExportConfig, load_config
from patchray.errors import ConfigError
from patchray.evaluation.evaluate import Scored
from patchray.export.precisions import fastest_passed, gate, log_precisions, unavailable


def scored(shift: float) -> Scored:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    p = np.clip(0.5 * y + rng.normal(0.25, 0.2, 400) + shift * rng.normal(0, 1, 400), 0, 1)
    return Scored(y, p, y, p, 0.4, {"rule": "sensitivity"})


def test_a_precision_inside_the_gate_passes_with_its_own_threshold():
    s = scored(0.0)
    record = gate("int8", s, f32_auc=s.val["auc"] + 0.004, max_drop=0.005)
    assert record.passed and record.reason == "" and record.threshold == 0.4
    assert record.auc_drop == pytest.approx(0.004) and record.file == "model-int8.xml"


def test_a_precision_losing_more_than_the_gate_fails_and_says_why():
    s = scored(0.3)
    record = gate("int8", s, f32_auc=s.val["auc"] + 0.02, max_drop=0.005)
    assert not record.passed
    assert "0.0200 below f32's" in record.reason and "(> the 0.005 allowed)" in record.reason


def test_serving_takes_the_fastest_precision_that_passed():
    s = scored(0.0)
    ok = gate("bf16", s, s.val["auc"], 0.005).model_copy(update={"images_per_s": 900.0})
    f32 = gate("f32", s, s.val["auc"], 0.0).model_copy(update={"images_per_s": 300.0})
    bad = gate("int8", s, s.val["auc"] + 0.1, 0.005).model_copy(update={"images_per_s": 2000.0})
    assert fastest_passed({"f32": f32, "bf16": ok, "int8": bad}) == "bf16"


def test_the_log_names_what_is_not_registered_and_why(caplog):
    s = scored(0.0)
    records = {"f32": gate("f32", s, s.val["auc"], 0.0),
               "bf16": unavailable("bf16", "this CPU has no native bf16"),
               "int8": gate("int8", s, s.val["auc"] + 0.1, 0.005)}
    with caplog.at_level(logging.INFO, logger="patchray.export.precisions"):
        log_precisions(records, "f32")
    text = caplog.text
    assert "bf16  not available: this CPU has no native bf16" in text
    assert "int8" in text and "NOT REGISTERED: val AUC" in text
    assert "<- serving default" in text


def test_export_config_requires_f32_and_explains_the_removed_version_key():
    assert ExportConfig().precisions == ["f32", "bf16", "int8"]
    with pytest.raises(ConfigError, match="must include f32"):
        load_config(overrides=["export.precisions=[int8]"])
    with pytest.raises(ConfigError, match="export.version is gone: the model registry assigns"):
        load_config(overrides=["export.version=2"])


def test_registry_names_are_checked_when_the_spec_loads_not_after_training():
    assert load_config(overrides=["dataset=idc"]).model_name() == "cnn2-idc"
    with pytest.raises(ConfigError, match="registry.alias: alias 'Prod!' is not valid"):
        load_config(overrides=["registry.alias=Prod!"])
    with pytest.raises(ConfigError, match="export.name .*model name 'my model' is not valid"):
        load_config(overrides=["export.name=my model"])
