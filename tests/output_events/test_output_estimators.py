"""Output-event estimators: exact unbiasedness by enumeration on a toy, refusals, argmax == greedy(1) on lowprob-1l."""

from __future__ import annotations

import pytest
import torch
from output_toys import FLOAT32_REL_TOL, toy_output_problem

from lowprob.core.budget import Budget
from lowprob.core.errors import LowprobError
from lowprob.core.estimator import Problem
from lowprob.core.generation import Sampling
from lowprob.core.meter import MeteredModel
from lowprob.core.output_target import Equals, OutputTarget
from lowprob.core.runner import run_estimator
from lowprob.core.target import ArgmaxIs
from lowprob.plugins import load_registry
from lowprob.plugins.builtin.conditional_exact import ConditionalExact
from lowprob.plugins.builtin.naive import NaiveMonteCarlo
from lowprob.plugins.testing import check_unbiased

NAIVE_EVENTS = [
    'sample(2) == "ab"',
    'sample(2, temperature=0.7, top_k=2) contains {"c"}',
    'greedy(2) contains "b"',
    "sample(1) matches /[bc]/",
    'sample(3) contains "ca"',
]
CONDITIONAL_EVENTS = [
    'sample(2) == "ab"',
    'sample(3, temperature=2, top_k=3) == "dca"',
    'greedy(2) contains "b"',
    "sample(1) matches /[bc]/",
    'sample(1, top_k=2) contains {"a", "d"}',
]


@pytest.mark.parametrize("event", NAIVE_EVENTS)
def test_naive_is_exactly_unbiased_on_output_events(event: str) -> None:
    toy = toy_output_problem(event)
    assert 0 < toy.exact < 1
    report = check_unbiased(NaiveMonteCarlo, toy, Budget(model_calls=1), mode="exact", rel_tol=FLOAT32_REL_TOL)
    assert report.passed, report.detail


@pytest.mark.parametrize("event", CONDITIONAL_EVENTS)
def test_conditional_exact_is_exactly_unbiased_on_output_events(event: str) -> None:
    toy = toy_output_problem(event)
    assert 0 < toy.exact < 1
    report = check_unbiased(ConditionalExact, toy, Budget(model_calls=2), mode="exact", rel_tol=FLOAT32_REL_TOL)
    assert report.passed, report.detail


def test_the_exact_check_fails_for_a_wrong_answer() -> None:
    toy = toy_output_problem('sample(2) == "ab"')
    toy.exact *= 1.001
    report = check_unbiased(ConditionalExact, toy, Budget(model_calls=2), mode="exact", rel_tol=FLOAT32_REL_TOL)
    assert not report.passed


def test_conditional_exact_has_less_spread_than_naive() -> None:
    toy = toy_output_problem('sample(2) == "ab"')
    budget = Budget(model_calls=200)
    spreads = []
    for estimator in (NaiveMonteCarlo(), ConditionalExact()):
        values = torch.tensor([run_estimator(estimator, toy.problem(), budget, seed, progress=False).value
                               for seed in range(20)])
        spreads.append(float(values.std()))
    assert spreads[1] < spreads[0] / 2


def test_conditional_exact_refuses_a_sampled_event_without_a_fixed_continuation() -> None:
    toy = toy_output_problem('sample(2) contains "a"')
    with pytest.raises(LowprobError, match="conditional-exact needs a fixed continuation"):
        run_estimator(ConditionalExact(), toy.problem(), Budget(model_calls=10), 0, progress=False)


@pytest.mark.parametrize("name", ["itgis", "mhis", "tsmc", "qld"])
def test_next_token_estimators_refuse_output_events(name: str) -> None:
    toy = toy_output_problem('sample(2) == "ab"')
    estimator = load_registry().create_estimator(name)
    with pytest.raises(LowprobError, match=f"estimator '{name}' .* does not support output events"):
        run_estimator(estimator, toy.problem(), Budget(model_calls=1000), 0, progress=False)


def test_a_continuation_past_the_context_is_refused() -> None:
    toy = toy_output_problem('sample(2) == "ab"')
    problem = toy.problem()
    long = OutputTarget(7, Sampling.sample(), Equals((0,) * 7, "aaaaaaa"))
    with pytest.raises(LowprobError, match="2 input tokens and 7 generated ones are 9, more than the model's "
                                           "context of 8"):
        run_estimator(NaiveMonteCarlo(), Problem(problem.model, problem.distribution, long), Budget(model_calls=10),
                      0, progress=False)


def test_argmax_equals_greedy_one_on_the_built_in_model() -> None:
    """``argmax == X`` and ``greedy(1) == X`` compile to the same target, and judging X by generating one greedy
    token agrees with the argmax, input by input and estimate by estimate."""
    from lowprob.api import SpecSource, compile_source

    registry = load_registry()
    source = SpecSource(registry.distribution_spec("caps"), "<caps>", "caps")
    compiled = compile_source(registry, source, model="lowprob-1l",
                              targets=['argmax == "CESS"', 'greedy(1) == "CESS"'])
    argmax, greedy = (compiled.spec.target(compiled.target_names[t])
                      for t in ('argmax == "CESS"', 'greedy(1) == "CESS"'))
    assert isinstance(argmax, ArgmaxIs) and argmax == greedy
    model, dist = MeteredModel(compiled.model), compiled.spec.distribution()
    tokens = dist.sample(2048, torch.Generator().manual_seed(0))
    generated = model.generate(tokens, 1, Sampling.argmax(), torch.Generator().manual_seed(0)).tokens[:, 0]
    assert torch.equal(generated, model.last_logits(tokens).argmax(dim=-1))
    as_output = OutputTarget(1, Sampling.argmax(), Equals((argmax.token_id,), "CESS"))
    estimates = [run_estimator(NaiveMonteCarlo({"batch_size": 1024}), Problem(MeteredModel(compiled.model), dist, t),
                               Budget(model_calls=8192), 5, progress=False) for t in (argmax, as_output)]
    assert estimates[0].hits == estimates[1].hits and estimates[0].value == estimates[1].value
    assert estimates[0].forward_passes == estimates[1].forward_passes == 8192
