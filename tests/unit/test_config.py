from pathlib import Path

import pytest
import yaml

from patchray.config import PipelineConfig, apply_overrides, dump_config, load_config
from patchray.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def test_defaults_validate():
    cfg = load_config()
    assert isinstance(cfg, PipelineConfig)
    assert cfg.train.num_workers == 2


def test_demo_spec_loads():
    cfg = load_config(REPO / "jobs" / "demo.yaml")
    assert cfg.train.model == "cnn6"
    assert cfg.eval.min_sensitivity == 0.95


def test_overrides_are_typed_yaml_values():
    cfg = load_config(overrides=["train.epochs=3", "train.use_gpu=true", "train.model=cnn6"])
    assert cfg.train.epochs == 3 and cfg.train.use_gpu is True and cfg.train.model == "cnn6"


def test_unknown_key_names_key_and_close_matches(tmp_path):
    spec = tmp_path / "job.yaml"
    spec.write_text("train:\n  epoch: 3\n")
    with pytest.raises(ConfigError) as err:
        load_config(spec)
    msg = str(err.value)
    assert "unknown key 'train.epoch'" in msg
    assert "did you mean epochs" in msg
    assert str(spec) in msg


def test_unknown_section_suggests_section():
    with pytest.raises(ConfigError, match=r"unknown key 'trian'; did you mean train"):
        load_config(overrides=["trian.epochs=3"])


def test_wrong_type_names_field_and_value():
    with pytest.raises(ConfigError, match=r"train\.epochs: .*'many'"):
        load_config(overrides=["train.epochs=many"])


def test_split_fractions_must_leave_test_patients():
    with pytest.raises(ConfigError, match="split.train \\+ split.val must be < 1"):
        load_config(overrides=["data.split.train=0.8", "data.split.val=0.2"])


def test_malformed_override_is_rejected():
    with pytest.raises(ConfigError, match="key.path=value"):
        apply_overrides({}, ["train.epochs"])


def test_override_into_scalar_is_rejected():
    with pytest.raises(ConfigError, match="'name' is a value"):
        apply_overrides({"name": "x"}, ["name.sub=1"])


def test_missing_file_is_reported(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "nope.yaml")


def test_dumped_config_round_trips(tmp_path):
    cfg = load_config(overrides=["train.epochs=2", "train.model_args={dropout: 0.1}"])
    path = tmp_path / "config.yaml"
    path.write_text(dump_config(cfg))
    assert load_config(path) == cfg
    assert yaml.safe_load(path.read_text())["train"]["model_args"] == {"dropout": 0.1}
