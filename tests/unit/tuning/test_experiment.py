"""patchray's Hyperband runs Ray's synchronous scheduler with Hyperband's bracket order."""

import pytest
from ray.tune.experiment import Trial

from patchray.config import TuneConfig
from patchray.tuning.experiment import AggressiveFirstHyperBand, make_scheduler


def brackets(scheduler, trials: int) -> list[str]:
    scheduler.set_search_properties("val_auc", "max")
    for i in range(trials):
        scheduler.on_trial_add(None, Trial("fn", trial_id=str(i), stub=True))
    # debug_string is Ray's public summary: one "Bracket(Max Size (n)=.., Milestone (r)=..)"
    # line per bracket, in the order trials filled them.
    return [line.strip().split(", completed")[0] for line in scheduler.debug_string().splitlines()
            if "Bracket(" in line]


@pytest.mark.parametrize(("max_t", "eta", "trials", "expected"), [
    # A search smaller than a band gets the most aggressive bracket (Li et al.'s first).
    (9, 3, 9, ["Bracket(Max Size (n)=9, Milestone (r)=1"]),
    (3, 3, 3, ["Bracket(Max Size (n)=3, Milestone (r)=1"]),
    # A whole band (17 trials for max_t 9, eta 3): all three brackets, aggressive first.
    (9, 3, 17, ["Bracket(Max Size (n)=9, Milestone (r)=1", "Bracket(Max Size (n)=5, Milestone (r)=3",
                "Bracket(Max Size (n)=3, Milestone (r)=9"]),
    # max_t below eta: one bracket that never stops a trial.
    (2, 3, 2, ["Bracket(Max Size (n)=2, Milestone (r)=2"]),
])
def test_brackets_run_most_aggressive_first(max_t, eta, trials, expected):
    got = brackets(AggressiveFirstHyperBand(max_t=max_t, reduction_factor=eta), trials)
    assert [b.split("Bracket(")[1] for b in got] == [e.split("Bracket(")[1] for e in expected]


def test_scheduler_key_selects_hyperband_asha_or_none():
    from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler

    assert isinstance(make_scheduler(TuneConfig()), AggressiveFirstHyperBand)
    asha = make_scheduler(TuneConfig(scheduler="asha", max_t=9, grace_period=1))
    assert isinstance(asha, AsyncHyperBandScheduler)
    assert type(make_scheduler(TuneConfig(scheduler="random"))) is FIFOScheduler
