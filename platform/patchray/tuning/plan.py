"""How many trials run at once, and on how many workers, on a cluster of a given size.

The rule the training issue learned the hard way applies to every trial at once: trainer
workers that reserve every CPU starve Ray Data, which then never feeds them (a hang, not an
error). So ``data_cpus`` (by default a quarter of the cluster, at least one) are never given
to trials; trials take what is left. Hyperband's first rung is as wide as the number of
trials, so width goes to concurrent trials first and any CPUs left widen each trial's worker
group, up to ``train.num_workers``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from patchray.config import TrainConfig, TuneResources
from patchray.errors import ConfigError

#: The CPU a trial's own actor (the function that builds and fits the trainer) reserves.
TRIAL_ACTOR_CPUS = 0.1
#: The custom resource that throttles concurrent trials: one per running trial. A cap on
#: concurrency (TuneConfig.max_concurrent_trials) would count paused trials as running, and
#: synchronous Hyperband then runs its brackets half empty.
SLOT = "train_slot"


@dataclass(frozen=True)
class TrialPlan:
    concurrent_trials: int
    workers_per_trial: int
    cpus_per_worker: float
    gpus_per_worker: float  # 0: CPU training
    data_cpus: float  # never reserved by trials: Ray Data's
    cluster_cpus: float
    cluster_gpus: float

    def trial_resources(self, cluster_slots: float) -> dict[str, float]:
        """What each trial's actor asks Tune for (its workers ask Ray Train for theirs): a
        ``1/concurrent_trials`` share of the cluster's slots, so at most that many run."""
        if cluster_slots <= 0:
            return {"CPU": TRIAL_ACTOR_CPUS}
        # Ray counts resources in units of 1e-4: round the share down so `concurrent` fit.
        share = math.floor(cluster_slots / self.concurrent_trials * 1e4) / 1e4
        return {"CPU": TRIAL_ACTOR_CPUS, SLOT: share}

    def describe(self) -> str:
        gpu = f", {self.gpus_per_worker:g} GPU" if self.gpus_per_worker else ""
        return (f"{self.concurrent_trials} trial(s) at a time x {self.workers_per_trial} "
                f"worker(s) of {self.cpus_per_worker:g} CPU{gpu}; {self.data_cpus:g} of "
                f"{self.cluster_cpus:g} free CPUs kept for Ray Data")

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def default_data_cpus(cluster_cpus: float) -> float:
    return max(1.0, math.ceil(0.25 * cluster_cpus))


def plan_trials(
    cluster_cpus: float,
    cluster_gpus: float,
    train: TrainConfig,
    resources: TuneResources,
    num_samples: int,
) -> TrialPlan:
    """The trial layout for a cluster of ``cluster_cpus`` / ``cluster_gpus``; raises
    :class:`ConfigError` naming what to change when not even one trial fits."""
    cpw = train.cpus_per_worker
    gpw = train.gpus_per_worker if train.use_gpu else 0.0
    data = resources.data_cpus if resources.data_cpus is not None else default_data_cpus(cluster_cpus)
    free = cluster_cpus - data
    if gpw and cluster_gpus <= 0:
        raise ConfigError("train.use_gpu is true but the cluster has no GPUs")
    if resources.workers_per_trial is not None:
        workers = resources.workers_per_trial
    else:
        per_trial = free / max(1, num_samples) - TRIAL_ACTOR_CPUS
        workers = max(1, min(train.num_workers, math.floor(per_trial / cpw)))
        if gpw:
            workers = max(1, min(workers, math.floor(cluster_gpus / gpw)))
    need_cpus = workers * cpw + TRIAL_ACTOR_CPUS
    fit = math.floor(free / need_cpus + 1e-9)
    if gpw:
        fit = min(fit, math.floor(cluster_gpus / (workers * gpw) + 1e-9))
    if fit < 1 and resources.max_concurrent_trials is None:
        raise ConfigError(
            f"one trial does not fit: the cluster has {cluster_cpus:g} CPUs, {data:g} are kept "
            f"for Ray Data (tune.resources.data_cpus) and a trial needs {need_cpus:g} "
            f"({workers} worker(s) x train.cpus_per_worker={cpw:g}, plus its actor); lower "
            "tune.resources.workers_per_trial or train.cpus_per_worker, or add CPUs"
            + (f" (and {workers * gpw:g} GPUs of {cluster_gpus:g})" if gpw else "")
        )
    concurrent = resources.max_concurrent_trials or min(num_samples, fit)
    return TrialPlan(
        concurrent_trials=concurrent,
        workers_per_trial=workers,
        cpus_per_worker=cpw,
        gpus_per_worker=gpw,
        data_cpus=data,
        cluster_cpus=cluster_cpus,
        cluster_gpus=cluster_gpus,
    )
