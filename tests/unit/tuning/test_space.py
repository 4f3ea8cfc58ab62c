from ray import tune

from patchray.config import TuneJobConfig, load_config
from patchray.tuning.space import describe, param_space, trial_config


def test_param_space_maps_each_dimension_to_its_ray_tune_distribution():
    cfg = load_config(model=TuneJobConfig, overrides=[
        "tune.space.learning_rate={loguniform: [1.0e-4, 1.0e-2]}",
        "tune.space.dropout={uniform: [0.0, 0.5]}",
        "tune.space.batch_size={choice: [16, 32]}"])
    space = param_space(cfg.tune.space)
    assert set(space) == {"learning_rate", "dropout", "batch_size"}
    lr = space["learning_rate"]
    assert isinstance(lr, tune.search.sample.Float) and (lr.lower, lr.upper) == (1e-4, 1e-2)
    assert isinstance(lr.get_sampler(), tune.search.sample.Float._LogUniform)
    assert space["batch_size"].categories == [16, 32]


def test_a_sampled_point_becomes_a_validated_train_config():
    base = load_config(model=TuneJobConfig, overrides=["train.epochs=30", "train.num_workers=4"])
    point = {"learning_rate": 3e-4, "batch_size": 16, "dropout": 0.25, "width": 0.5,
             "augment_strength": 0.3, "model": "cnn2", "trial_id": "ignored"}
    cfg = trial_config(base, point, epochs=9, num_workers=1)
    assert type(cfg).__name__ == "TrainJobConfig"
    assert (cfg.train.learning_rate, cfg.train.batch_size, cfg.train.model) == (3e-4, 16, "cnn2")
    assert cfg.train.model_args == {"dropout": 0.25, "width": 0.5}
    assert cfg.data.augment_strength == 0.3
    assert (cfg.train.epochs, cfg.train.num_workers) == (9, 1)
    assert base.train.epochs == 30  # the base is not modified
    assert describe(point) == ("lr=3.00e-04 batch_size=16 dropout=0.25 width=0.5 "
                               "augment_strength=0.3 model=cnn2")
