"""Naive Monte Carlo against exact probabilities on enumerable toy models.

Tolerances: the mean of replicate estimates must lie within 4 standard errors of the exact value (the
standard error of the mean from the replicates themselves); the 95 % Clopper–Pearson interval must cover the
exact value in at least 95 % − 3 binomial standard deviations of 200 runs (≥ 181/200; the interval is
conservative, so coverage is usually above 95 %). Seeds are fixed, so the tests are deterministic.
"""

import math
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lowprob.core import Budget
from lowprob.core.estimator import StepInfo
from lowprob.plugins.builtin.naive import NaiveMonteCarlo, NaiveState
from lowprob.plugins.testing import check_error_bars, check_sane, check_unbiased, toy_problem


@pytest.fixture(scope="module")
def toy():  # type: ignore[no-untyped-def]
    return toy_problem(0)


@pytest.mark.statistical
def test_interval_covers_exact_value_at_nominal_rate(toy) -> None:  # type: ignore[no-untyped-def]
    report = check_error_bars(NaiveMonteCarlo, toy, Budget(model_calls=400), seeds=range(200))
    assert report.passed, report.detail
    for estimate in report.estimates:
        assert not check_sane(estimate)


@pytest.mark.statistical
def test_mean_is_within_four_standard_errors(toy) -> None:  # type: ignore[no-untyped-def]
    report = check_unbiased(NaiveMonteCarlo, toy, Budget(model_calls=400), seeds=range(200))
    assert report.passed, report.detail


@pytest.mark.statistical
def test_wilson_interval_also_covers(toy) -> None:  # type: ignore[no-untyped-def]
    report = check_error_bars(NaiveMonteCarlo, toy, Budget(model_calls=400), seeds=range(200),
                              options={"interval": "wilson"})
    assert report.passed, report.detail


class HalfHits(NaiveMonteCarlo):
    """A deliberately biased estimator: it forgets every other hit."""

    name = "half-hits"

    def step(self, state, problem, generator, context):  # type: ignore[no-untyped-def]
        new, info = super().step(state, problem, generator, context)
        halved = replace(new, hits=state.hits + (new.hits - state.hits) // 2)
        return halved, StepInfo(value=halved.hits / max(halved.samples, 1), samples=halved.samples,
                                done=info.done)


@pytest.mark.statistical
def test_the_unbiasedness_check_has_teeth(toy) -> None:  # type: ignore[no-untyped-def]
    report = check_unbiased(HalfHits, toy, Budget(model_calls=400), seeds=range(100))
    assert not report.passed, report.detail


@pytest.mark.statistical
@settings(max_examples=6)
@given(seed=st.integers(min_value=0, max_value=10_000))
def test_naive_is_unbiased_on_random_toy_models(seed: int) -> None:
    """Property: on any random tiny model and random independent-token distribution, naive MC is unbiased."""
    try:
        toy = toy_problem(seed, d_vocab=5, length=3)
    except ValueError:  # no token in the probability band for this model; nothing to test
        return
    # 100/p samples a run: 60 runs see a 10 % bias (relative s.e. of the mean about 1/sqrt(100 * 60))
    report = check_unbiased(NaiveMonteCarlo, toy, Budget(model_calls=max(300, math.ceil(100 / toy.exact))),
                            seeds=range(60))
    assert report.passed, report.detail


def test_state_is_immutable_progress() -> None:
    assert NaiveState() == NaiveState(0, 0)
