"""The ``tune:`` section is validated like every other section, at load time."""

import pytest

from patchray.config import TuneJobConfig, load_config
from patchray.errors import ConfigError


def tune_cfg(*overrides: str) -> TuneJobConfig:
    return load_config(overrides=list(overrides), model=TuneJobConfig)


def test_search_space_takes_the_documented_dimensions():
    cfg = tune_cfg("train.model=cnn6",
                   "tune.space.learning_rate={loguniform: [1.0e-4, 1.0e-2]}",
                   "tune.space.batch_size={choice: [16, 32]}",
                   "tune.space.dropout={uniform: [0.0, 0.5]}",
                   "tune.space.width={choice: [0.5, 1.0]}",
                   "tune.space.augment_strength={uniform: [0.0, 1.0]}",
                   "tune.space.model={choice: [cnn2, cnn6]}")
    assert list(cfg.tune.space.dimensions()) == [
        "learning_rate", "batch_size", "dropout", "width", "augment_strength", "model"]
    assert cfg.tune.space.learning_rate.kind == "loguniform"


@pytest.mark.parametrize(("override", "message"), [
    ("tune.space.learning_rate={loguniform: [0, 1.0e-2]}", "loguniform needs low > 0"),
    ("tune.space.learning_rate={uniform: [1.0e-4, 1.0e-2]}", "learning_rate takes loguniform or choice"),
    ("tune.space.learning_rate={loguniform: [1.0e-2, 1.0e-4]}", "low < high"),
    ("tune.space.learning_rate={loguniform: [1.0e-4, 1.0e-2], choice: [1]}", "exactly one of"),
    ("tune.space.batch_size={choice: [16, 0.5]}", "batch_size choices must be ints"),
    ("tune.space.model={choice: [cnn2, resnet9000]}", "resnet9000"),
    ("tune.space.lr={choice: [1]}", "unknown key 'tune.space.lr'"),
    ("tune.schedular=asha", "did you mean scheduler"),
    ("tune.scheduler=bohb", "tune.scheduler"),
    ("tune.resources.workers_per_trial=0", "tune.resources.workers_per_trial"),
])
def test_bad_tune_sections_are_refused_naming_the_field(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        tune_cfg(override)


def test_searched_model_arguments_must_exist_for_every_model_choice():
    with pytest.raises(ConfigError, match="model 'mobilenet_v2' has no 'width'"):
        tune_cfg("tune.space.width={choice: [0.5, 1.0]}",
                 "tune.space.model={choice: [cnn2, mobilenet_v2]}")
    # wideresnet's width is a whole widening factor (k), not a multiplier.
    with pytest.raises(ConfigError, match="whole number"):
        tune_cfg("train.model=wideresnet", "tune.space.width={choice: [0.5, 1]}")
    assert tune_cfg("train.model=wideresnet", "tune.space.width={choice: [2, 4]}")
    with pytest.raises(ConfigError, match=r"\['dense_dropout'\] are not hyperparameters of model 'cnn2'"):
        tune_cfg("train.model=cnn6", "train.model_args={dense_dropout: 0.4}",
                 "tune.space.model={choice: [cnn2, cnn6]}")


def test_a_train_spec_may_not_carry_a_tune_section():
    from patchray.config import TrainJobConfig

    with pytest.raises(ConfigError, match="unknown key 'tune'"):
        load_config(overrides=["tune.max_t=3"], model=TrainJobConfig)
