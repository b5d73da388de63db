"""Budgets, the runner's loop and bookkeeping, the meter, and the model adapter's gradients."""

import math
from dataclasses import replace

import pytest
import torch

from lowprob.core import Budget, BudgetError, Cost, WeightError, run_estimator
from lowprob.core.estimate import ConfidenceInterval
from lowprob.core.estimator import Capabilities, Estimator, EstimatorOutput, StepInfo
from lowprob.plugins.builtin.naive import NaiveMonteCarlo
from lowprob.plugins.testing import toy_problem


@pytest.fixture(scope="module")
def toy():  # type: ignore[no-untyped-def]
    return toy_problem(0)


@pytest.mark.parametrize("kwargs", [{}, {"model_calls": 0}, {"seconds": -1.0}, {"target_rel_error": 0.0},
                                    {"model_calls": 10, "backward_weight": float("nan")}])
def test_impossible_budgets_are_errors(kwargs: dict) -> None:
    with pytest.raises((BudgetError, ValueError)):
        Budget(**kwargs)


def test_budget_counts_backward_passes() -> None:
    budget = Budget(model_calls=100, backward_weight=2.0)
    assert budget.remaining_calls(Cost(forward_passes=10, backward_passes=10)) == 70
    assert budget.stop_reason(Cost(forward_passes=100), 0.0, None, None) == "model_calls"
    assert Budget(target_rel_error=0.1).stop_reason(Cost(), 0.0, 1.0, 0.05) == "target_rel_error"


def test_runner_spends_exactly_the_budget(toy) -> None:  # type: ignore[no-untyped-def]
    est = run_estimator(NaiveMonteCarlo({"batch_size": 300}), toy.problem(), Budget(model_calls=1000), seed=0,
                        progress=False)
    assert est.forward_passes == est.samples == 1000
    assert est.stop_reason == "model_calls"
    assert [round(p.model_calls) for p in est.trace] == [300, 600, 900, 1000]
    assert est.provenance.seed == 0 and est.provenance.estimator == "naive"
    assert est.provenance.distribution_hash == toy.distribution.content_hash


def test_same_seed_same_estimate(toy) -> None:  # type: ignore[no-untyped-def]
    runs = [run_estimator(NaiveMonteCarlo(), toy.problem(), Budget(model_calls=2000), seed=7, progress=False)
            for _ in range(2)]
    assert runs[0].value == runs[1].value and runs[0].hits == runs[1].hits
    other = run_estimator(NaiveMonteCarlo(), toy.problem(), Budget(model_calls=2000), seed=8, progress=False)
    assert other.hits != runs[0].hits or other.value != runs[0].value


def test_relative_error_budget_stops_early(toy) -> None:  # type: ignore[no-untyped-def]
    est = run_estimator(NaiveMonteCarlo({"batch_size": 500}), toy.problem(),
                        Budget(target_rel_error=0.2, model_calls=10**6), seed=0, progress=False)
    assert est.stop_reason == "target_rel_error"
    assert est.relative_error is not None and est.relative_error <= 0.2


def test_budget_below_one_step_is_rejected(toy) -> None:  # type: ignore[no-untyped-def]
    class Gradients(NaiveMonteCarlo):
        name = "needs-gradients"
        capabilities = Capabilities(unbiased=True, has_error_bars=True, needs_gradients=True)

    with pytest.raises(BudgetError, match="less than one step"):
        run_estimator(Gradients(), toy.problem(), Budget(model_calls=2), seed=0, progress=False)


def test_nan_estimate_is_rejected(toy) -> None:  # type: ignore[no-untyped-def]
    class Broken(Estimator[int]):
        name = "broken"
        capabilities = Capabilities(unbiased=False, has_error_bars=False)

        def init(self, problem, generator):  # type: ignore[no-untyped-def]
            return 0

        def step(self, state, problem, generator, context):  # type: ignore[no-untyped-def]
            problem.model.last_logits(problem.distribution.sample(1, generator))
            return state + 1, StepInfo(samples=state + 1, done=True)

        def result(self, state, problem, level):  # type: ignore[no-untyped-def]
            return EstimatorOutput(value=math.nan, std_error=None, ci=None, hits=0, samples=state)

    with pytest.raises(WeightError, match="invalid estimate"):
        run_estimator(Broken(), toy.problem(), Budget(model_calls=5), seed=0, progress=False)


class Fixed(Estimator[int]):
    """Spends one forward pass, then answers the output it was built with."""

    name = "fixed"
    capabilities = Capabilities(unbiased=True, has_error_bars=True)

    def __init__(self, output: EstimatorOutput) -> None:
        super().__init__()
        self.output = output

    def init(self, problem, generator):  # type: ignore[no-untyped-def]
        return 0

    def step(self, state, problem, generator, context):  # type: ignore[no-untyped-def]
        problem.model.last_logits(problem.distribution.sample(1, generator))
        return state + 1, StepInfo(samples=1, done=True)

    def result(self, state, problem, level):  # type: ignore[no-untyped-def]
        return self.output


def test_values_and_intervals_are_clipped_to_the_unit_interval(toy) -> None:  # type: ignore[no-untyped-def]
    """Issue 12 (18): an importance-sampling mean of 1.0049 for p = 1 is reported as 1 (a probability), with its
    interval cut at 1 and the raw value kept as unclipped_value."""
    out = EstimatorOutput(value=1.0049, std_error=0.0064, hits=10, samples=10,
                          ci=ConfidenceInterval(low=0.992, high=1.0175, level=0.95, method="normal"))
    est = run_estimator(Fixed(out), toy.problem(), Budget(model_calls=5), seed=0, progress=False)
    assert est.value == 1.0 and est.log10_value == 0.0
    assert est.ci is not None and (est.ci.low, est.ci.high) == (0.992, 1.0)
    assert est.unclipped_value == est.raw_value == 1.0049
    whole = ConfidenceInterval(low=1.01, high=1.2, level=0.95, method="normal")
    est = run_estimator(Fixed(replace(out, ci=whole)), toy.problem(), Budget(model_calls=5), seed=0, progress=False)
    assert est.ci is not None and (est.ci.low, est.ci.high) == (1.0, 1.0)


def test_a_zero_without_its_upper_bound_is_refused(toy) -> None:  # type: ignore[no-untyped-def]
    """A zero estimate always carries its upper bound: the runner refuses an estimator that returns a bare 0."""
    out = EstimatorOutput(value=0.0, std_error=None, ci=None, hits=0, samples=1)
    with pytest.raises(WeightError, match="zero estimate without an upper bound"):
        run_estimator(Fixed(out), toy.problem(), Budget(model_calls=5), seed=0, progress=False)


def test_unknown_options_are_rejected() -> None:
    with pytest.raises(Exception, match="batch_sise"):
        NaiveMonteCarlo({"batch_sise": 3})


def test_zero_hits_give_an_upper_bound_not_a_bare_zero(toy) -> None:  # type: ignore[no-untyped-def]
    from lowprob.core import ArgmaxIs, Categorical, InputDistribution, Problem

    one = InputDistribution.independent([Categorical.constant(0)] * 3, toy.model.d_vocab)
    argmax = int(toy.model.last_logits(one.enumerate()[0]).argmax(-1)[0])
    problem = Problem(toy.problem().model, one, ArgmaxIs((argmax + 1) % toy.model.d_vocab))
    est = run_estimator(NaiveMonteCarlo(), problem, Budget(model_calls=1000), seed=0, progress=False)
    assert est.value == 0 and est.hits == 0 and est.std_error is None and est.log10_value is None
    assert est.upper_bound is not None and 0 < est.upper_bound < 0.01
    assert "upper bound" in est.summary()


def test_target_gradients_match_finite_differences(toy) -> None:  # type: ignore[no-untyped-def]
    """G[b, i, v] - G[b, i, x_i] predicts the change of the target logit when x_i becomes v (to first order);
    on the tiny model the linearisation is checked by sign agreement and correlation across all (i, v)."""
    model, target = toy.model, toy.target
    x = toy.distribution.sample(4, torch.Generator().manual_seed(1))
    logits, grads = model.target_gradients(x, target)
    assert torch.allclose(logits, model.last_logits(x), atol=1e-5)
    predicted, actual = [], []
    for i in range(x.shape[1]):
        for v in range(model.d_vocab):
            x2 = x.clone()
            x2[:, i] = v
            actual.append(model.last_logits(x2)[:, target.token_id] - logits[:, target.token_id])
            predicted.append(grads[:, i, v] - grads[torch.arange(4), i, x[:, i]])
    a, p = torch.cat(actual), torch.cat(predicted)
    assert torch.corrcoef(torch.stack([a, p]))[0, 1] > 0.7


def test_activations_times_unembedding_give_logits(toy) -> None:  # type: ignore[no-untyped-def]
    x = toy.distribution.sample(8, torch.Generator().manual_seed(2))
    acts, logits = toy.model.last_activations(x)
    assert acts.shape == (8, toy.model.d_model)
    assert torch.allclose(acts @ toy.model.W_U, logits, atol=1e-4)


def test_meter_counts_forward_and_backward(toy) -> None:  # type: ignore[no-untyped-def]
    problem = toy.problem()
    x = toy.distribution.sample(5, torch.Generator().manual_seed(0))
    problem.model.last_logits(x)
    problem.model.target_gradients(x, toy.target)
    problem.model.last_activations(x)
    assert (problem.model.cost.forward_passes, problem.model.cost.backward_passes) == (15, 5)
