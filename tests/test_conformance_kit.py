"""The conformance kit itself: toy models behave as documented and the checks can fail.

The exact mode of ``check_unbiased`` enumerates every joint outcome of an estimator's draws (one run per path),
so its tests use toys and budgets with at most 729 paths; the tolerance is ``EXACT_REL_TOL`` (1e-9 relative).
"""

import math
import re
import statistics
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lowprob.core import Budget
from lowprob.core.estimator import StepInfo
from lowprob.core.random import Enumerator, NotEnumerable, TooManyPaths, categorical, expectation, integers
from lowprob.plugins.builtin.itgis import ITGIS, ITGISState
from lowprob.plugins.builtin.mhis import MHIS
from lowprob.plugins.builtin.naive import NaiveMonteCarlo
from lowprob.plugins.testing import (
    EXACT_REL_TOL,
    RESOLUTION,
    CheckReport,
    ToyProblem,
    check_consistent,
    check_unbiased,
    exact_probability,
    lookup_model,
    replicate,
    toy_problem,
)

NAIVE_TWO = ({"batch_size": 1}, Budget(model_calls=2))
"""Naive Monte Carlo with two samples, one per step."""
ITGIS_TWO = ({"batch_size": 1}, Budget(model_calls=6))
"""ITGIS with two batches of one sample (each sample costs 1 forward + 2 for the backward pass); its second batch
also draws its defensive-mixture component, so it has more paths than naive."""


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Toy tensors are tiny: torch's intra-op threads only add synchronisation, milliseconds per operation on a
    busy machine, which the thousands of runs of an exact expectation multiply."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def lookup():  # type: ignore[no-untyped-def]
    model = lookup_model(positions=3, d_vocab=5, seed=0)
    return toy_problem(0, d_vocab=5, length=3, model=model)


def test_lookup_model_logits_are_a_sum_of_table_rows(lookup) -> None:  # type: ignore[no-untyped-def]
    model = lookup.model
    x = torch.tensor([[0, 1, 2], [4, 4, 4]])
    table = model.model.table
    expected = table[0, x[:, 0]] + table[1, x[:, 1]] + table[2, x[:, 2]]
    assert torch.allclose(model.last_logits(x), expected)


def test_lookup_model_token_gradients_are_exact(lookup) -> None:  # type: ignore[no-untyped-def]
    model, t = lookup.model, lookup.target.token_id
    x = lookup.distribution.sample(6, torch.Generator().manual_seed(0))
    _, grads = model.target_gradients(x, lookup.target)
    for i in range(3):
        assert torch.allclose(grads[:, i, :], model.model.table[i, :, t].expand(6, -1))


def test_lookup_model_activations_give_logits(lookup) -> None:  # type: ignore[no-untyped-def]
    x = lookup.distribution.sample(6, torch.Generator().manual_seed(1))
    acts, logits = lookup.model.last_activations(x)
    assert torch.allclose(acts @ lookup.model.W_U, logits)


def test_exact_probability_matches_a_large_naive_run(lookup) -> None:  # type: ignore[no-untyped-def]
    x = lookup.distribution.sample(200_000, torch.Generator().manual_seed(2))
    freq = float(lookup.target.hits(lookup.model.last_logits(x)).double().mean())
    sd = (lookup.exact * (1 - lookup.exact) / 200_000) ** 0.5
    assert abs(freq - exact_probability(lookup.model, lookup.distribution, lookup.target)) < 4 * sd


def test_check_consistent_passes_for_naive_mc(lookup) -> None:  # type: ignore[no-untyped-def]
    report = check_consistent(NaiveMonteCarlo, lookup, [Budget(model_calls=50), Budget(model_calls=5000)])
    assert report.passed, report.detail


class StuckAfterOneBatch(NaiveMonteCarlo):
    """Does not converge: it stops learning after its first batch of 50, whatever the budget."""

    name = "stuck"

    def step(self, state, problem, generator, context):  # type: ignore[no-untyped-def]
        if state.samples >= 50:
            return state, StepInfo(value=state.hits / state.samples, samples=state.samples, done=True)
        return super().step(state, problem, generator, context)


def test_check_consistent_has_teeth(lookup) -> None:  # type: ignore[no-untyped-def]
    report = check_consistent(StuckAfterOneBatch, lookup, [Budget(model_calls=50), Budget(model_calls=5000)],
                              options={"batch_size": 50})
    assert not report.passed, report.detail


@pytest.fixture(scope="module")
def small_lookup() -> ToyProblem:
    """27 sequences: 729 paths for two samples."""
    return toy_problem(0, d_vocab=3, length=3, model=lookup_model(positions=3, d_vocab=3, seed=0))


@pytest.fixture(scope="module")
def binary_lookup() -> ToyProblem:
    """4 sequences over two tokens."""
    return toy_problem(1, d_vocab=2, length=2, model=lookup_model(positions=2, d_vocab=2, seed=1))


def test_expectation_enumerates_every_joint_outcome() -> None:
    """E[x0 + x1 + x2·x3·(1 + k)] with x0, x1 ~ (1/4, 0, 3/4), x2, x3 uniform on 3 and k uniform on 2 is
    1.5 + 1.5 + 1·1.5 = 4.5; zero-probability outcomes are skipped: 2·2·3·3·2 = 72 paths."""
    probs = torch.tensor([[1.0, 0.0, 3.0], [1.0, 1.0, 1.0]])

    def run(generator: Enumerator) -> float:
        x = categorical(probs, 2, generator)
        k = integers(2, (1,), generator)
        return float(x[0].sum() + x[1].prod() * (1 + k))

    result = expectation(run, max_paths=100)
    assert result.paths == 72
    assert result.value == pytest.approx(4.5, rel=1e-12)
    assert result.mass == pytest.approx(1.0, rel=1e-12)


def test_expectation_follows_draws_that_depend_on_earlier_outcomes() -> None:
    """Stop on heads, else draw one of four: 1 + 4 paths, E = 1/2 · 0 + 1/2 · (1 + 2.5) = 1.75."""

    def run(generator: Enumerator) -> float:
        if int(categorical(torch.ones(2), 1, generator)) == 0:
            return 0.0
        return 1.0 + float(categorical(torch.ones(4), 1, generator)) + 1.0

    result = expectation(run, max_paths=10)
    assert (result.paths, result.value) == (5, 1.75)


def test_enumeration_refuses_a_path_with_more_outcomes_than_the_cap() -> None:
    with pytest.raises(TooManyPaths, match="more than max_paths=8 joint outcomes"):
        expectation(lambda g: float(integers(3, (2,), g).sum()), max_paths=8)


@pytest.mark.parametrize("estimator, setup", [(NaiveMonteCarlo, NAIVE_TWO), (ITGIS, ITGIS_TWO)],
                         ids=["naive", "itgis"])
def test_exactly_unbiased_on_the_lookup_toy(estimator: type, setup: tuple, small_lookup: ToyProblem) -> None:
    options, budget = setup
    report = check_unbiased(estimator, small_lookup, budget, options=options, mode="exact")
    assert report.passed, report.detail
    assert (report.mode, report.paths) == ("exact", 729 if estimator is NaiveMonteCarlo else 1539)
    assert report.mean == pytest.approx(small_lookup.exact, rel=1e-12), report.detail


def test_itgis_with_two_samples_per_batch_is_exactly_unbiased(binary_lookup: ToyProblem) -> None:
    """Two batches of two samples: 4^4 paths times the second batch's mixture components per sample (three once
    a hit fitted the tilt: D, the paper's tilt, the fitted one; 1584 paths), the second batch's proposal adapted
    to the first batch."""
    report = check_unbiased(ITGIS, binary_lookup, Budget(model_calls=12), options={"batch_size": 2},
                            mode="exact")
    assert report.passed, report.detail
    assert report.paths == 1584


@pytest.mark.parametrize("estimator, setup", [(NaiveMonteCarlo, NAIVE_TWO), (ITGIS, ITGIS_TWO)],
                         ids=["naive", "itgis"])
def test_exactly_unbiased_on_a_tiny_transformer(estimator: type, setup: tuple) -> None:
    """A TransformerLens toy with 16 sequences: 256 paths (ITGIS: 624, with its mixture component draws)."""
    toy = toy_problem(0, d_vocab=4, length=2)
    options, budget = setup
    report = check_unbiased(estimator, toy, budget, options=options)
    assert report.passed, report.detail
    assert (report.mode, report.paths) == ("exact", 256 if estimator is NaiveMonteCarlo else 624)


class RawHits(ITGIS):
    """A deliberately biased ITGIS: it counts raw hits under the tilted proposal, dropping the weights."""

    name = "itgis-raw-hits"

    def step(self, state: ITGISState, problem, generator, context):  # type: ignore[no-untyped-def]
        new, info = super().step(state, problem, generator, context)
        raw = replace(new, **{part: replace(getattr(new, part), sum_wy=float(getattr(new, part).hits))
                              for part in ("warmup", "last_warmup", "tally")})
        return raw, StepInfo(value=raw.estimate.value, samples=raw.samples, done=info.done)


def test_the_exact_check_has_teeth(small_lookup: ToyProblem) -> None:
    options, budget = ITGIS_TWO
    report = check_unbiased(RawHits, small_lookup, budget, options=options, mode="exact")
    assert report.mode == "exact"
    assert not report.passed, report.detail
    assert report.mean is not None and abs(report.mean - small_lookup.exact) > 1e-3, report.detail
    assert "exact expectation" in report.detail


MHIS_OPTIONS = {"chains": 2, "burn_in": 0, "init_candidates": 1}
MHIS_BUDGET = Budget(model_calls=12)
"""Initial states and one recorded step of two chains (each chain state costs 1 forward + 2 backward)."""


def test_mhis_is_not_enumerable_in_exact_mode(binary_lookup: ToyProblem) -> None:
    """Its Metropolis–Hastings acceptance is a continuous uniform draw."""
    with pytest.raises(NotEnumerable, match="continuous"):
        check_unbiased(MHIS, binary_lookup, MHIS_BUDGET, options=MHIS_OPTIONS, mode="exact")


def test_mhis_falls_back_to_replicates_in_auto_mode(binary_lookup: ToyProblem) -> None:
    report = check_unbiased(MHIS, binary_lookup, MHIS_BUDGET, seeds=range(4), options=MHIS_OPTIONS)
    assert report.mode == "replicates"
    assert len(report.estimates) == 4
    assert "NotEnumerable" in report.detail and "replicates" in report.detail


class DirectDraw(NaiveMonteCarlo):
    """Draws straight from torch with its generator, bypassing lowprob.core.random."""

    name = "direct-draw"

    def step(self, state, problem, generator, context):  # type: ignore[no-untyped-def]
        torch.rand(1, generator=generator)
        return super().step(state, problem, generator, context)


class GlobalDraw(NaiveMonteCarlo):
    """Draws from torch's global generator."""

    name = "global-draw"

    def step(self, state, problem, generator, context):  # type: ignore[no-untyped-def]
        torch.rand(1)
        return super().step(state, problem, generator, context)


def test_a_draw_bypassing_core_random_is_refused(binary_lookup: ToyProblem) -> None:
    options, budget = NAIVE_TWO
    with pytest.raises(TypeError, match="Enumerator") as raised:
        check_unbiased(DirectDraw, binary_lookup, budget, options=options, mode="exact")
    assert any("lowprob.core.random" in note for note in raised.value.__notes__)
    with pytest.raises(NotEnumerable, match="global generator"):
        check_unbiased(GlobalDraw, binary_lookup, budget, options=options, mode="exact")
    report = check_unbiased(DirectDraw, binary_lookup, budget, seeds=range(3), options=options)
    assert report.mode == "replicates" and "TypeError" in report.detail


def test_the_path_cap_is_clear_and_auto_mode_falls_back(small_lookup: ToyProblem) -> None:
    options, budget = NAIVE_TWO
    with pytest.raises(TooManyPaths, match="max_paths=100"):
        check_unbiased(NaiveMonteCarlo, small_lookup, budget, options=options, mode="exact", max_paths=100)
    report = check_unbiased(NaiveMonteCarlo, small_lookup, budget, seeds=range(20), options=options,
                            max_paths=100)
    assert report.mode == "replicates" and "TooManyPaths" in report.detail


@settings(max_examples=5)
@given(seed=st.integers(min_value=0, max_value=10_000), shape=st.sampled_from([(3, 3), (2, 3), (3, 2), (2, 2)]))
def test_naive_and_itgis_are_exactly_unbiased_on_random_toys(seed: int, shape: tuple[int, int]) -> None:
    """Property: on any random lookup-table toy (at most 27 sequences, so at most 729 paths)."""
    d_vocab, length = shape
    model = lookup_model(positions=length, d_vocab=d_vocab, seed=seed)
    try:
        toy = toy_problem(seed, d_vocab=d_vocab, length=length, band=(1e-3, 0.5), model=model)
    except ValueError:  # no token in the probability band for this model; nothing to test
        return
    for estimator, (options, budget) in ((NaiveMonteCarlo, NAIVE_TWO), (ITGIS, ITGIS_TWO)):
        report = check_unbiased(estimator, toy, budget, options=options, mode="exact")
        assert report.passed, report.detail


DOCS = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"


def _documented_check(estimator: type) -> CheckReport:
    """docs/plugins.md's "Test it" example as written: its toy (the ``toy = ...`` line of the doctest) and its
    ``check_unbiased(YourEstimator, ...)`` call, with ``estimator`` as ``YourEstimator``."""
    text = DOCS.read_text(encoding="utf-8")
    toy_line = next(line.removeprefix(">>> ") for line in text.splitlines() if line.startswith(">>> toy = "))
    call = next(line for block in re.findall(r"```python\n(.*?)```", text, re.S) for line in block.splitlines()
                if "check_unbiased(YourEstimator" in line)
    namespace = {"Budget": Budget, "check_unbiased": check_unbiased, "lookup_model": lookup_model,
                 "toy_problem": toy_problem, "YourEstimator": estimator}
    exec(f"{toy_line}\n{call}", namespace)
    return namespace["report"]


def test_the_documented_example_fails_the_estimator_that_drops_its_weights() -> None:
    dropped = _documented_check(RawHits)
    assert (dropped.verdict, dropped.mode) == ("failed", "exact"), dropped.detail
    kept = _documented_check(ITGIS)
    assert (kept.verdict, kept.mode) == ("passed", "exact"), kept.detail


def test_an_underpowered_replicate_check_is_inconclusive_not_passed() -> None:
    """Two-sample runs on the default 216-sequence toy: too many paths to enumerate, and 100 replicates could
    only see a bias of about 100 %, so neither the unbiased ITGIS nor the one without weights passes."""
    toy = toy_problem()
    for estimator in (ITGIS, RawHits):
        report = check_unbiased(estimator, toy, Budget(model_calls=6), options={"batch_size": 1})
        assert report.mode == "replicates" and "TooManyPaths" in report.detail
        assert (report.verdict, report.passed, report.inconclusive) == ("inconclusive", False, True), report.detail
        assert report.detectable_bias is not None and report.detectable_bias > RESOLUTION
        assert f"detects a relative bias of {report.detectable_bias:.3g}" in report.detail


class Shrunk(NaiveMonteCarlo):
    """Naive Monte Carlo biased 10 % low."""

    name = "shrunk"

    def result(self, state, problem, level):  # type: ignore[no-untyped-def]
        out = super().result(state, problem, level)
        return replace(out, value=0.9 * out.value)


def test_a_replicate_check_with_power_passes_or_fails_and_says_what_it_could_see(lookup: ToyProblem) -> None:
    """100 runs of 2000 samples (p ≈ 0.17): the smallest bias seen with probability 0.8 is a few per cent,
    ``(4 + z_0.8) · sem / p``, so the unbiased estimator passes and one 10 % low fails."""
    budget, options = Budget(model_calls=2000), {"batch_size": 2000}
    report = check_unbiased(NaiveMonteCarlo, lookup, budget, seeds=range(100), options=options, mode="replicates")
    assert report.verdict == "passed", report.detail
    values = [e.value for e in report.estimates]
    sem = statistics.stdev(values) / math.sqrt(len(values))
    assert report.detectable_bias == pytest.approx((4 + 0.8416212) * sem / lookup.exact, rel=1e-6)
    assert report.detectable_bias < RESOLUTION / 2
    biased = check_unbiased(Shrunk, lookup, budget, seeds=range(100), options=options, mode="replicates")
    assert (biased.verdict, biased.inconclusive) == ("failed", False), biased.detail


def test_the_exact_check_reports_its_tolerance_as_what_it_could_see(binary_lookup: ToyProblem) -> None:
    options, budget = NAIVE_TWO
    report = check_unbiased(NaiveMonteCarlo, binary_lookup, budget, options=options)
    assert (report.verdict, report.mode, report.detectable_bias) == ("passed", "exact", EXACT_REL_TOL)


def test_the_checks_judge_the_estimators_value_before_the_runner_clips_it(small_lookup: ToyProblem) -> None:
    """Two-sample ITGIS runs can estimate more than 1 (run_estimator reports 1 and keeps the raw value): the exact
    expectation of the raw values is p, that of the clipped ones is not."""
    options, budget = ITGIS_TWO
    runs = replicate(ITGIS, small_lookup, budget, range(200), options)
    clipped = [e for e in runs if e.unclipped_value is not None]
    assert clipped and all(e.value == 1.0 < e.raw_value for e in clipped)
    report = check_unbiased(ITGIS, small_lookup, budget, options=options, mode="exact")
    assert report.passed, report.detail
