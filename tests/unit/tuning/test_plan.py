"""Trials are sized to the cluster so that Ray Data always keeps CPUs."""

import pytest

from patchray.config import TrainConfig, TuneResources
from patchray.errors import ConfigError
from patchray.tuning.plan import SLOT, TRIAL_ACTOR_CPUS, plan_trials


def test_two_cores_run_two_single_worker_trials_and_keep_a_cpu_for_ray_data():
    plan = plan_trials(4, 0, TrainConfig(num_workers=2), TuneResources(), num_samples=9)
    assert (plan.concurrent_trials, plan.workers_per_trial, plan.data_cpus) == (2, 1, 1)
    used = plan.concurrent_trials * (plan.workers_per_trial * plan.cpus_per_worker + TRIAL_ACTOR_CPUS)
    assert used <= plan.cluster_cpus - plan.data_cpus


def test_a_big_cluster_widens_trials_up_to_the_spec_and_keeps_a_quarter_for_data():
    plan = plan_trials(64, 0, TrainConfig(num_workers=4, cpus_per_worker=2), TuneResources(),
                       num_samples=9)
    assert plan.data_cpus == 16 and plan.workers_per_trial == 2  # 48 CPUs / 9 trials / 2
    assert plan.concurrent_trials == 9


def test_gpu_trials_are_bounded_by_gpus():
    train = TrainConfig(use_gpu=True, gpus_per_worker=1, num_workers=2)
    plan = plan_trials(32, 4, train, TuneResources(), num_samples=9)
    assert plan.workers_per_trial == 2 and plan.concurrent_trials == 2
    with pytest.raises(ConfigError, match="no GPUs"):
        plan_trials(32, 0, train, TuneResources(), num_samples=9)


def test_overrides_win_and_a_trial_that_cannot_fit_is_explained():
    plan = plan_trials(16, 0, TrainConfig(), TuneResources(max_concurrent_trials=3,
                       workers_per_trial=2, data_cpus=4), num_samples=9)
    assert (plan.concurrent_trials, plan.workers_per_trial, plan.data_cpus) == (3, 2, 4)
    with pytest.raises(ConfigError, match="tune.resources.data_cpus"):
        plan_trials(2, 0, TrainConfig(cpus_per_worker=2), TuneResources(), num_samples=3)


def test_trial_slots_are_shared_so_only_the_planned_number_run():
    plan = plan_trials(4, 0, TrainConfig(), TuneResources(max_concurrent_trials=3), num_samples=9)
    share = plan.trial_resources(1.0)[SLOT]
    assert 3 * share <= 1.0 < 4 * share
    assert SLOT not in plan.trial_resources(0.0)  # no slots on the cluster: Tune's own cap
