"""The ``tune:`` search space as Ray Tune distributions, and a sampled point as a job config."""

from __future__ import annotations

from typing import Any

from patchray.config import SEARCH_KEYS, Distribution, SearchSpace, TrainJobConfig, set_path


def tune_distribution(dist: Distribution) -> Any:
    from ray import tune

    if dist.loguniform is not None:
        return tune.loguniform(*dist.loguniform)
    if dist.uniform is not None:
        return tune.uniform(*dist.uniform)
    return tune.choice(list(dist.choice or []))


def param_space(space: SearchSpace) -> dict[str, Any]:
    """Ray Tune's ``param_space``: one entry per searched dimension, keyed by its name."""
    return {key: tune_distribution(d) for key, d in space.dimensions().items()}


def trial_config(base: TrainJobConfig, params: dict[str, Any], *, epochs: int,
                 num_workers: int) -> TrainJobConfig:
    """``base`` with a trial's sampled ``params`` set, trained for ``epochs`` on
    ``num_workers`` workers. Validated again: a sampled point is a config like any other."""
    data = base.model_dump(mode="json", exclude={"tune"})
    for key, value in params.items():
        if key in SEARCH_KEYS:  # not the keys Tune adds itself
            set_path(data, SEARCH_KEYS[key][0].split("."), value, what=f"tune.space.{key}")
    data["train"]["epochs"] = epochs
    data["train"]["num_workers"] = num_workers
    return TrainJobConfig.model_validate(data)


def describe(params: dict[str, Any]) -> str:
    """``lr=3.2e-04 batch_size=32 ...``: a trial's point, short, in the space's order."""
    parts = []
    for key in SEARCH_KEYS:
        if key not in params:
            continue
        value = params[key]
        short = "lr" if key == "learning_rate" else key
        if isinstance(value, float):
            text = f"{value:.2e}" if key == "learning_rate" else f"{value:.3g}"
        else:
            text = str(value)
        parts.append(f"{short}={text}")
    return " ".join(parts)
