"""The activation-extrapolation estimators on the built-in default model (budget, meter, determinism, option and
fit-name errors), the fit contract, and the optimal-constant helpers."""

import types
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor

from lowprob.api import compile_problem, resolve_spec
from lowprob.core import Budget
from lowprob.core.errors import LowprobError, UnknownNameError
from lowprob.core.estimator import Capabilities, Problem
from lowprob.core.losses import itakura_saito_loss, optimal_constant
from lowprob.core.runner import run_estimator
from lowprob.core.stats import clopper_pearson
from lowprob.plugins import Registrar, Registry, hookimpl, load_registry
from lowprob.plugins.builtin.activation_extrapolation import ActivationExtrapolation, ExtrapolationEstimator
from lowprob.plugins.builtin.gld import GLD
from lowprob.plugins.builtin.qld import QLD
from lowprob.plugins.fits import ExtrapolationFit, FitResult
from lowprob.plugins.testing import check_sane

DEMO = str(Path(__file__).resolve().parents[2] / "examples" / "specs" / "demo.lp")
BUDGET = Budget(model_calls=1500)
SMALL = {"batch_size": 512, "samples": 4096}


@pytest.fixture(scope="module")
def registry() -> Registry:
    return load_registry(entry_points=False)


def _problem(registry: Registry, target: str | None = None) -> Problem:
    return compile_problem(registry, resolve_spec(DEMO, registry), model="random-1l", target=target)


@pytest.mark.parametrize("name", ["qld", "gld", "activation-extrapolation"])
def test_estimators_spend_within_budget_and_report_error_bars(registry: Registry, name: str) -> None:
    problem = _problem(registry)
    before = problem.model.cost
    estimate = run_estimator(registry.create_estimator(name, SMALL), problem, BUDGET, seed=3)
    spent = problem.model.cost - before
    assert not check_sane(estimate)
    assert 0 < estimate.value < 1 and estimate.std_error is not None and estimate.ci is not None
    assert estimate.ci.low <= estimate.value <= estimate.ci.high
    assert estimate.forward_passes == spent.forward_passes == estimate.samples <= BUDGET.model_calls
    assert estimate.backward_passes == spent.backward_passes == 0
    assert estimate.diagnostics["fit"] in ("qld", "gld")
    assert estimate.diagnostics["direct_hits"] == estimate.hits


def test_same_seed_gives_the_same_estimate(registry: Registry) -> None:
    first, second = (run_estimator(QLD(SMALL), _problem(registry), BUDGET, seed=7) for _ in range(2))
    assert (first.value, first.std_error, first.diagnostics) == (second.value, second.std_error, second.diagnostics)


def test_stops_when_the_samples_are_collected(registry: Registry) -> None:
    estimate = run_estimator(GLD({"batch_size": 300, "samples": 1000}), _problem(registry), BUDGET, seed=0)
    assert (estimate.samples, estimate.stop_reason) == (1000, "done")


def test_unknown_options_are_rejected() -> None:
    with pytest.raises(LowprobError, match="unknown_key"):
        QLD({"unknown_key": 1})
    with pytest.raises(LowprobError, match="fit"):
        GLD({"fit": "qld"})  # only the generic estimator takes a fit


def test_unknown_fit_lists_the_known_ones_before_any_model_call(registry: Registry) -> None:
    problem = _problem(registry)
    with pytest.raises(UnknownNameError, match="known extrapolations: gld, qld"):
        run_estimator(ActivationExtrapolation({"fit": "nope"}, registry=registry), problem, BUDGET, seed=0)
    assert problem.model.cost.forward_passes == 0


def test_qld_rejects_set_targets_before_any_model_call(registry: Registry) -> None:
    problem = _problem(registry, target="argmax in hex")
    with pytest.raises(LowprobError, match="single-token targets only"):
        run_estimator(QLD(SMALL), problem, BUDGET, seed=0)
    assert problem.model.cost.forward_passes == 0
    assert run_estimator(GLD(SMALL), problem, BUDGET, seed=0).value > 0


def test_a_plugin_fit_is_resolved_from_the_given_registry() -> None:
    def tenth(activations: Tensor, W_U: Tensor, target_ids: tuple[int, ...],  # noqa: N803
              generator: torch.Generator) -> FitResult:
        return FitResult(0.1, 0.01, {"n": activations.shape[0]})

    def not_a_result(activations: Tensor, W_U: Tensor, target_ids: tuple[int, ...],  # noqa: N803
                     generator: torch.Generator) -> float:
        return 0.1

    @hookimpl
    def register_extrapolations(registrar: Registrar) -> None:
        registrar.add_extrapolation("tenth", tenth, description="always 0.1")
        registrar.add_extrapolation("bare-float", not_a_result, description="the old contract")

    fits = types.ModuleType("fits")
    fits.register_extrapolations = register_extrapolations  # type: ignore[attr-defined]
    registry = load_registry(entry_points=False, extra_plugins=[fits])
    estimate = run_estimator(ActivationExtrapolation({**SMALL, "fit": "tenth"}, registry=registry),
                             _problem(registry), BUDGET, seed=0)
    assert (estimate.value, estimate.diagnostics["n"], estimate.diagnostics["fit"]) == (0.1, 1500, "tenth")
    with pytest.raises(LowprobError, match="returned float, not a FitResult"):
        run_estimator(ActivationExtrapolation({**SMALL, "fit": "bare-float"}, registry=registry),
                      _problem(registry), BUDGET, seed=0)


class Fixed(ExtrapolationEstimator):
    """An extrapolation estimator whose fit answers a fixed :class:`FitResult`."""

    name = "fixed-fit"
    capabilities = Capabilities(unbiased=False, consistent=False, has_error_bars=True)

    def __init__(self, result: FitResult) -> None:
        super().__init__(SMALL)
        self.answer = result

    def fit(self) -> ExtrapolationFit:
        return lambda activations, W_U, target_ids, generator: self.answer


@pytest.mark.parametrize("name", ["qld", "gld"])
def test_fit_intervals_say_they_are_not_a_coverage_guarantee(registry: Registry, name: str) -> None:
    """Issue 11: gld's tight [1.07e-2, 1.30e-2] around a truth of 3.3e-4 looked like a coverage promise. The
    interval of a fit is labelled as the fit's uncertainty: in the interval, the diagnostics and the summary."""
    estimate = run_estimator(registry.estimator(name)(SMALL), _problem(registry), BUDGET, seed=3)
    assert estimate.value > 0 and estimate.ci is not None and estimate.ci.coverage is False
    assert "not a coverage guarantee" in estimate.ci.method
    assert estimate.diagnostics["interval_kind"] == "fit"
    assert "(fit interval, not a coverage guarantee)" in estimate.summary()


@pytest.mark.parametrize("std_error", [None, 0.0])
def test_a_zero_fit_is_bounded_by_the_direct_samples(registry: Registry, std_error: float | None) -> None:
    """Issue 12 (21): a fit that finds nothing (QLD with no accepting recombination) answers 0 with the exact
    Clopper–Pearson bound of its direct draws from D — a real coverage bound — and no standard error."""
    estimate = run_estimator(Fixed(FitResult(0.0, std_error)), _problem(registry), BUDGET, seed=3)
    assert estimate.value == 0 and estimate.std_error is None and estimate.ci is not None
    assert estimate.ci.coverage and "direct" in estimate.ci.method
    assert estimate.upper_bound == pytest.approx(clopper_pearson(estimate.hits, estimate.samples)[1], rel=1e-12)
    assert "p < " in estimate.summary()


def test_a_huge_fit_standard_error_gives_a_finite_interval(registry: Registry) -> None:
    """A relative s.e. of 1e3 (GLD on two activations deep in the tail) must not overflow exp(z·s.e./p̂)."""
    estimate = run_estimator(Fixed(FitResult(1e-200, 1e-197)), _problem(registry), BUDGET, seed=3)
    assert estimate.ci is not None and 0 <= estimate.ci.low <= 1e-200 < estimate.ci.high == 1.0


@pytest.mark.parametrize(("value", "std_error"), [(-0.1, None), (1.5, None), (float("nan"), None), (0.1, -1.0)])
def test_fit_results_are_validated(value: float, std_error: float | None) -> None:
    with pytest.raises(LowprobError, match="invalid"):
        FitResult(value, std_error)


def test_optimal_constant_is_the_mean_and_minimises_the_loss() -> None:
    p = np.array([1e-9, 3e-8, 2e-6, 5e-7])
    best = optimal_constant(p)
    assert best == pytest.approx(float(p.mean()), rel=1e-12)
    grid = best * np.logspace(-2, 2, 401)
    losses = np.array([itakura_saito_loss(p, c).sum() for c in grid])
    assert float(itakura_saito_loss(p, best).sum()) <= float(losses.min()) + 1e-12
    with pytest.raises(LowprobError, match="positive"):
        optimal_constant([0.0, 1e-3])


def test_loss_is_zero_exactly_when_the_estimate_is_right() -> None:
    p = np.array([1e-9, 1e-5, 0.3])
    assert np.allclose(itakura_saito_loss(p, p), np.zeros(3))
    for factor in (0.5, 0.99, 1.01, 10.0):
        assert bool((itakura_saito_loss(p, p * factor) > 0).all())
