"""Splitting estimators (ams, subset-simulation, gams) and score plugins against exact answers on toy problems.

gams is judged by its exact expectation (every outcome of every draw enumerated, 1e-9 relative); ams by its
error against the exact value shrinking with N, with a control whose kernel ignores the level and does not
converge; the MCMC kernel by a chi-square test of its empirical distribution inside a level against the exact
conditional. Seeds are fixed; tolerances come from the estimators' own spread.
"""

from __future__ import annotations

import math
import random
import statistics
from typing import Any

import pytest
import torch
from scipy import stats

from lowprob.core import Budget, run_estimator
from lowprob.core.errors import LowprobError
from lowprob.core.random import Enumerator, categorical
from lowprob.plugins import hookimpl, load_registry
from lowprob.plugins.builtin.gams import GAMS
from lowprob.plugins.builtin.scores import MarginScore
from lowprob.plugins.builtin.splitting import (
    AMS,
    Evaluator,
    LevelKernel,
    Replicas,
    SubsetSimulation,
    correlation_factor,
    lognormal_mean_interval,
)
from lowprob.plugins.builtin.twists import Layout
from lowprob.plugins.registry import Registrar
from lowprob.plugins.testing import ToyProblem, check_sane, check_unbiased, exact_expectation, lookup_model, toy_problem


class PrefixHitProbability:
    """ξ_j = Pr(hit | x_{≤p_j}) with the rest drawn from D, by enumeration, optionally rounded to ``digits``
    (rounding makes a tie-heavy score); whole inputs score 0 (hits are +∞ anyway)."""

    def __init__(self, toy: ToyProblem, digits: int | None = None) -> None:
        self.layout = Layout.of(toy.distribution)
        tokens, probs = toy.distribution.enumerate()
        hits = toy.target.hits(toy.model.last_logits(tokens))
        mass: dict[tuple[int, ...], float] = {}
        total: dict[tuple[int, ...], float] = {}
        for row, p, hit in zip(self.layout.choices(tokens).tolist(), probs.tolist(), hits.tolist(), strict=True):
            for j in range(1, len(row) + 1):
                total[tuple(row[:j])] = total.get(tuple(row[:j]), 0.0) + p
                mass[tuple(row[:j])] = mass.get(tuple(row[:j]), 0.0) + (p if hit else 0.0)
        self.value = {key: mass[key] / total[key] if digits is None else round(mass[key] / total[key], digits)
                      for key in total}

    def complete(self, tokens: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        return torch.zeros(tokens.shape[0], dtype=torch.float64)

    def prefixes(self, tokens: torch.Tensor) -> torch.Tensor:
        rows = self.layout.choices(tokens).tolist()
        return torch.tensor([[self.value[tuple(r[:j + 1])] for j in range(len(r))] for r in rows],
                            dtype=torch.float64)

    def describe(self) -> dict[str, Any]:
        return {"score": "prefix hit probability"}


@pytest.fixture(scope="module")
def binary_toy() -> ToyProblem:
    """8 inputs (3 positions, 2 tokens each); p ≈ 0.058."""
    return toy_problem(4, d_vocab=2, length=3, model=lookup_model(positions=3, d_vocab=2, seed=4), band=(0.01, 0.5))


@pytest.fixture(scope="module")
def lookup_toy() -> ToyProblem:
    """125 inputs; p ≈ 0.079 (the conformance kit's lookup toy)."""
    return toy_problem(1, d_vocab=5, length=3, model=lookup_model(positions=3, d_vocab=5, seed=1))


def registry_with_scores(toy: ToyProblem):  # type: ignore[no-untyped-def]
    """A registry with two test score plugins: ``exact-prefix`` and its tie-heavy rounding ``coarse-prefix``."""
    exact, coarse = PrefixHitProbability(toy), PrefixHitProbability(toy, digits=1)

    class TestScores:
        __name__ = "test-scores"

        @staticmethod
        @hookimpl
        def register_scores(registrar: Registrar) -> None:
            registrar.add_score("exact-prefix", lambda problem, pilot, generator: exact, description="test")
            registrar.add_score("coarse-prefix", lambda problem, pilot, generator: coarse, description="test")

    return load_registry(entry_points=False, extra_plugins=[TestScores])


def gams_with(registry, kill_ties: bool = True) -> type[GAMS]:  # type: ignore[no-untyped-def]
    """GAMS bound to ``registry``; ``kill_ties=False`` is the control that kills exactly k, ties broken by index."""

    class Bound(GAMS):
        def __init__(self, options: Any = None) -> None:
            super().__init__(options, registry=registry)

        def doomed(self, levels: torch.Tensor, z: float) -> torch.Tensor:
            if kill_ties:
                return super().doomed(levels, z)
            mask = torch.zeros_like(levels, dtype=torch.bool)
            mask[torch.sort(levels, stable=True).indices[:self.options.kill]] = True
            return mask

    return Bound


@pytest.mark.parametrize(("score", "replicas", "calls"), [
    ("exact-prefix", 2, 10**6),
    ("exact-prefix", 2, 3),  # the budget cuts runs after one iteration: still unbiased (a martingale)
    ("coarse-prefix", 2, 4),  # the tie-heavy score, as the control below
])
def test_gams_is_exactly_unbiased(binary_toy: ToyProblem, score: str, replicas: int, calls: int) -> None:
    cls = gams_with(registry_with_scores(binary_toy))
    report = check_unbiased(cls, binary_toy, Budget(model_calls=calls), mode="exact", max_paths=200_000,
                            options={"replicas": replicas, "kill": 1, "runs": 1, "score": score})
    assert report.passed, report.detail
    assert report.paths > 2 ** (3 * replicas), "no iteration branched: the check would not see a biased branching"


def test_killing_only_k_of_tied_replicas_is_biased(binary_toy: ToyProblem) -> None:
    """Walter (2015): with a discrete score, killing exactly k of the tied replicas biases the estimate; the
    exact expectation shows it (the same toy and score pass with ties killed, above)."""
    cls = gams_with(registry_with_scores(binary_toy), kill_ties=False)
    options = {"replicas": 2, "kill": 1, "runs": 1, "score": "coarse-prefix"}
    result = exact_expectation(cls, binary_toy, Budget(model_calls=4), options, max_paths=200_000)
    assert abs(result.value - binary_toy.exact) / binary_toy.exact > 0.1, result  # measured: +26 %


def test_gams_needs_a_prefix_score(lookup_toy: ToyProblem) -> None:
    with pytest.raises(LowprobError, match="prefix scores"):
        run_estimator(GAMS({"score": "margin", "replicas": 8, "kill": 2, "runs": 2}), lookup_toy.problem(),
                      Budget(model_calls=100), seed=0, progress=False)


def test_unknown_score_is_a_clear_error_before_any_model_call(lookup_toy: ToyProblem) -> None:
    problem = lookup_toy.problem()
    with pytest.raises(LowprobError, match="margin"):
        run_estimator(AMS({"score": "no-such-score"}), problem, Budget(model_calls=1000), seed=0, progress=False)
    assert problem.model.cost.forward_passes == 0


def test_builtin_scores_are_registered() -> None:
    names = [entry.name for entry in load_registry(entry_points=False).entries("scores")]
    assert {"margin", "twist"} <= set(names)


def _level_set(toy: ToyProblem, level: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Every input with margin > ``level`` and its exact conditional probability under D."""
    tokens, probs = toy.distribution.enumerate()
    score = Evaluator(toy.problem(), MarginScore(toy.target), False)(tokens).score
    inside = score > level
    return tokens[inside], probs[inside] / probs[inside].sum()


class UncorrectedKernel(LevelKernel):
    """The control: gradient proposals accepted whenever they stay in the level, without the Hastings ratio."""

    def log_hastings(self, proposed: Replicas, position: torch.Tensor, old_token: torch.Tensor,
                     new_token: torch.Tensor, log_phi: torch.Tensor) -> torch.Tensor:
        return torch.zeros(proposed.size, dtype=torch.float64)


def _chi_square_p(toy: ToyProblem, kernel_cls: type[LevelKernel]) -> float:
    """p-value of 4000 chains after 10 gradient-proposal steps inside {margin > level}, started from the exact
    conditional D·1{ξ > level}/Z, against that conditional (an invariant kernel keeps it)."""
    level = -1.5
    members, conditional = _level_set(toy, level)
    problem = toy.problem()
    evaluate = Evaluator(problem, MarginScore(toy.target), True)
    kernel = kernel_cls(toy.distribution.dense_log_probs(), problem.model.W_E.T.double(), 1.0)
    generator = torch.Generator().manual_seed(3)
    replicas = evaluate(members[categorical(conditional, 4000, generator)])
    for _ in range(10):
        replicas, _ = kernel.step(replicas, level, evaluate, generator)
    index = {tuple(row): i for i, row in enumerate(members.tolist())}
    counts = torch.zeros(len(index), dtype=torch.float64)
    for row in replicas.tokens.tolist():
        counts[index[tuple(row)]] += 1
    return float(stats.chisquare(counts.numpy(), (conditional * 4000).numpy()).pvalue)


def test_kernel_leaves_the_restricted_distribution_invariant(lookup_toy: ToyProblem) -> None:
    assert _chi_square_p(lookup_toy, LevelKernel) > 1e-3


def test_kernel_without_hastings_correction_fails_the_same_check(lookup_toy: ToyProblem) -> None:
    assert _chi_square_p(lookup_toy, UncorrectedKernel) < 1e-6


class LevelBlindAMS(AMS):
    """The non-converging control: its moves accept every proposal, ignoring the level, so clones drift back
    toward D and the conditional fractions are wrong at every N."""

    def refill(self, ladder: Any, survivors: Replicas, level: float, killed: int, state: Any,
               generator: torch.Generator | Enumerator) -> Any:
        return super().refill(ladder, survivors, -math.inf, killed, state, generator)


def _errors(cls: type[AMS], toy: ToyProblem, replicas: int, seeds: range) -> tuple[float, float, float, float]:
    """(mean, its standard error, RMSE, the RMSE's standard error) of one ladder of ``cls`` with N = ``replicas``
    per seed (the RMSE's s.e. by the delta method, as ``check_consistent``)."""
    values = [run_estimator(cls({"replicas": replicas, "kill": max(1, replicas // 4), "mcmc_steps": 5,
                                 "ladders": 1}), toy.problem(), Budget(model_calls=10**6), seed,
                            progress=False).value for seed in seeds]
    squares = [(v - toy.exact) ** 2 for v in values]
    rmse = math.sqrt(statistics.fmean(squares))
    return (statistics.fmean(values), statistics.stdev(values) / math.sqrt(len(values)), rmse,
            statistics.stdev(squares) / math.sqrt(len(squares)) / (2 * rmse))


@pytest.mark.slow
@pytest.mark.statistical
def test_ams_error_shrinks_with_n_and_a_level_blind_control_does_not(lookup_toy: ToyProblem) -> None:
    seeds = range(16)
    _, _, rmse_small, noise_small = _errors(AMS, lookup_toy, 8, seeds)
    mean, sem, rmse_large, noise_large = _errors(AMS, lookup_toy, 128, seeds)
    assert rmse_large + 2 * noise_large < rmse_small - 2 * noise_small, (rmse_small, rmse_large)
    assert abs(mean - lookup_toy.exact) < 4 * sem, (mean, sem, lookup_toy.exact)
    blind_mean, blind_sem, _, _ = _errors(LevelBlindAMS, lookup_toy, 128, seeds)
    assert abs(blind_mean - lookup_toy.exact) > 4 * blind_sem, (blind_mean, blind_sem, lookup_toy.exact)


@pytest.mark.parametrize("name", ["ams", "subset-simulation", "gams"])
@pytest.mark.parametrize("calls", [40, 150, 700])
def test_stops_cleanly_within_any_budget(lookup_toy: ToyProblem, name: str, calls: int) -> None:
    registry = load_registry(entry_points=False)
    options = {"replicas": 16, "pilot": 16, **({"runs": 2} if name == "gams" else {})}
    estimator = registry.create_estimator(name, options)
    estimate = run_estimator(estimator, lookup_toy.problem(), Budget(model_calls=calls), seed=1, progress=False)
    assert not check_sane(estimate), check_sane(estimate)
    assert estimate.model_calls <= calls
    assert estimate.ci is not None and math.isfinite(estimate.ci.high)
    assert estimate.diagnostics["ends"]
    if estimate.value == 0:
        assert estimate.upper_bound is not None and estimate.diagnostics["zero_reason"]


def test_a_stalled_ladder_gives_zero_with_its_upper_bound_and_reason(lookup_toy: ToyProblem) -> None:
    """D with one input that misses the target: every replica ties at its score, so the first level kills all."""
    from lowprob.core.distribution import Categorical, InputDistribution

    one = InputDistribution.independent([Categorical.constant(0)] * 3, 5)
    impossible = ToyProblem(lookup_toy.model, one, lookup_toy.target, 0.0)
    hit = bool(lookup_toy.target.hits(lookup_toy.model.last_logits(torch.zeros((1, 3), dtype=torch.int64)))[0])
    assert not hit
    estimate = run_estimator(AMS({"replicas": 16, "kill": 2, "ladders": 1}), impossible.problem(),
                             Budget(model_calls=1000), seed=0, progress=False)
    assert estimate.value == 0 and estimate.upper_bound is not None and 0 < estimate.upper_bound < 1
    assert "stalled" in estimate.diagnostics["zero_reason"]


def test_subset_simulation_reports_levels_and_the_correlation_factor(lookup_toy: ToyProblem) -> None:
    estimate = run_estimator(load_registry(entry_points=False).create_estimator(
        "subset-simulation", {"replicas": 40, "p0": 0.25, "ladders": 1}), lookup_toy.problem(),
        Budget(model_calls=10**5), seed=2, progress=False)
    levels = estimate.diagnostics["levels"][0]
    assert levels and all({"level", "killed", "alive", "acceptance", "calls", "correlation"} <= set(lv)
                          for lv in levels)
    assert all(lv["correlation"] >= 0 for lv in levels)
    assert [lv["level"] for lv in levels] == sorted(lv["level"] for lv in levels)


def test_correlation_factor_sees_correlated_chains_and_not_independent_draws() -> None:
    generator = torch.Generator().manual_seed(0)
    independent = torch.rand(400, generator=generator) < 0.3
    assert correlation_factor(independent, ()) == 0.0
    assert correlation_factor(independent, (10,) * 40) < 0.5
    sticky = torch.repeat_interleave(torch.rand(40, generator=generator) < 0.3, 10)  # each chain constant
    assert correlation_factor(sticky, (10,) * 40) > 5


class FlatScore:
    """ξ = 0 on every whole input: every replica that misses ties with every other."""

    def complete(self, tokens: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        return torch.zeros(tokens.shape[0], dtype=torch.float64)

    def prefixes(self, tokens: torch.Tensor) -> None:
        return None

    def describe(self) -> dict[str, Any]:
        return {"score": "flat"}


def test_all_tied_below_the_event_mixes_instead_of_stalling(lookup_toy: ToyProblem) -> None:
    """With a flat score every ladder whose N = 4 first draws all miss ties completely (probability 0.72 per
    ladder here); it must mix at the previous level (a recorded level that kills none) and go on, not stall."""

    class Flat:
        __name__ = "flat-score"

        @staticmethod
        @hookimpl
        def register_scores(registrar: Registrar) -> None:
            registrar.add_score("flat", lambda problem, pilot, generator: FlatScore(), description="test")

    registry = load_registry(entry_points=False, extra_plugins=[Flat])
    estimator = registry.create_estimator("ams", {"replicas": 4, "kill": 1, "mcmc_steps": 2, "ladders": 8,
                                                  "score": "flat"})
    estimate = run_estimator(estimator, lookup_toy.problem(), Budget(model_calls=10**5), seed=0, progress=False)
    levels = estimate.diagnostics["levels"]
    assert any(lv["killed"] == 0 for ladder in levels for lv in ladder)
    assert estimate.diagnostics["ends"].get("reached the event", 0) > estimate.diagnostics["ends"].get("stalled", 0)
    assert estimate.value > 0


@pytest.mark.statistical
def test_cox_interval_covers_the_mean_of_skewed_replicates_where_student_t_does_not() -> None:
    """400 sets of R = 10 lognormal replicates (σ = 1.5, as ladder values at 1e-10): Cox's interval covers the
    mean within 3.5 binomial s.e. of 95 %; the Student-t interval on the values, the control, falls below 90 %."""
    rng = random.Random(0)
    sigma, r, trials = 1.5, 10, 400
    mean = math.exp(sigma**2 / 2)
    cox = student = 0
    for _ in range(trials):
        values = [math.exp(rng.gauss(0.0, sigma)) for _ in range(r)]
        interval = lognormal_mean_interval(values, 0.95)
        assert interval is not None
        cox += interval[0] <= mean <= interval[1]
        m, sd = statistics.fmean(values), statistics.stdev(values)
        half = float(stats.t.ppf(0.975, r - 1)) * sd / math.sqrt(r)
        student += m - half <= mean <= m + half
    tolerance = 3.5 * math.sqrt(0.95 * 0.05 / trials)
    assert abs(cox / trials - 0.95) < tolerance, cox / trials
    assert student / trials < 0.90, student / trials


def test_cox_interval_needs_two_non_zero_values_and_scales_by_their_share() -> None:
    assert lognormal_mean_interval([0.0, 0.0, 1e-9], 0.95) is None
    full = lognormal_mean_interval([1e-9, 2e-9], 0.95)
    half = lognormal_mean_interval([1e-9, 2e-9, 0.0, 0.0], 0.95)
    assert full is not None and half is not None
    assert math.isclose(half[0], full[0] / 2) and math.isclose(half[1], full[1] / 2)


def test_replicates_spread_over_hundreds_of_decades_give_the_trivial_upper_end_not_an_overflow() -> None:
    """Seen on lowprob-1l / hex at p ≈ 7e-6 (paper regime, ams): ladder values 1e-300 … 0.5 made Cox's upper end
    e^(10^4), and ``math.exp`` raised OverflowError out of the estimator."""
    from lowprob.plugins.builtin.splitting import replicate_interval

    values = [1e-300, 1e-200, 1e-2, 0.5]
    cox = lognormal_mean_interval(values, 0.95)
    assert cox is not None and cox[1] == math.inf
    interval = replicate_interval(values, 0.95, "ladders")
    assert interval.high == 1.0 and 0.0 <= interval.low <= sum(values) / len(values)


def test_level_details_keep_every_level_of_the_first_ladders_and_count_the_rest() -> None:
    from lowprob.plugins.builtin.splitting import LEVEL_DETAIL_LADDERS, Level, level_details

    ladders = [[Level(0.5, 1, 9, 0.3, 10.0)] * (i + 1) for i in range(LEVEL_DETAIL_LADDERS + 3)]
    details = level_details(ladders)
    assert [len(levels) for levels in details["levels"]] == list(range(1, LEVEL_DETAIL_LADDERS + 1))
    assert details["levels_left_out"] == 3
    assert details["levels"][0][0]["killed"] == 1


@pytest.mark.parametrize("cls", [AMS, SubsetSimulation])
def test_a_temperature_without_the_gradient_proposal_is_refused(cls: type) -> None:
    """D's own marginal has no temperature: a temperature there would change nothing (and a tuning grid would
    spend its compute on identical runs), so it is an error naming the fix; with gradients it acts."""
    with pytest.raises(LowprobError, match="temperature = 2 acts only with proposal = 'gradient'"):
        cls({"temperature": 2.0})
    assert cls({"temperature": 2.0, "proposal": "gradient"}).options.temperature == 2.0
    assert cls({"temperature": 1.0}).options.proposal == "prior"
