"""output-tsmc: exactly unbiased by enumeration of every input, continuation and resampling draw on toys, with less
spread than naive on a rare set event, and clear refusals."""

from __future__ import annotations

import pytest
import torch
from output_toys import FLOAT32_REL_TOL, exact_output_probability, toy_model, toy_output_problem

from lowprob.core.budget import Budget
from lowprob.core.errors import LowprobError
from lowprob.core.output_target import OutputTarget
from lowprob.core.runner import run_estimator
from lowprob.dsl import load_spec
from lowprob.plugins.builtin.naive import NaiveMonteCarlo
from lowprob.plugins.builtin.output_tsmc import OutputTSMC
from lowprob.plugins.testing import ToyProblem, check_unbiased

EVENTS = [
    'sample(2) contains {"c"}',
    'sample(3, temperature=0.7, top_k=2) contains {"a", "d"}',
    'sample(3) == "dca"',
    'greedy(2) contains {"b"}',
    'greedy(2) == "aa"',
    'sample(2, top_k=1) contains {"c"}',
]


def _toy(dist: str, event: str) -> ToyProblem:
    """The toy model with the distribution ``dist`` (DSL) and the output event ``event``, and its exact value."""
    model = toy_model()
    compiled = load_spec(f"{dist}\ntarget t = {event}\n", model.vocab, max_length=model.n_ctx)
    target = compiled.target("t")
    assert isinstance(target, OutputTarget)
    distribution = compiled.distribution()
    return ToyProblem(model, distribution, target, exact_output_probability(model, distribution, target))


def _two_input_problem(event: str) -> ToyProblem:
    """One input position over ``a`` and ``b``: small enough to enumerate two particles and their resampling."""
    return _toy('tokens w = {"a": 1, "b": 2}\ndist main = w', event)


@pytest.mark.parametrize("event", EVENTS)
def test_one_particle_is_exactly_unbiased(event: str) -> None:
    toy = toy_output_problem(event)
    report = check_unbiased(OutputTSMC, toy, Budget(model_calls=1), options={"particles": 1}, mode="exact",
                            rel_tol=FLOAT32_REL_TOL)
    assert report.passed, report.detail


@pytest.mark.parametrize("event", ['sample(2, top_k=2) contains {"c"}', 'sample(2, top_k=2) == "ba"'])
def test_two_resampled_particles_are_exactly_unbiased(event: str) -> None:
    toy = _two_input_problem(event)
    assert 0 < toy.exact < 1
    report = check_unbiased(OutputTSMC, toy, Budget(model_calls=2), options={"particles": 2, "ess_threshold": 1.0},
                            mode="exact", rel_tol=FLOAT32_REL_TOL, max_paths=10_000)
    assert report.passed, report.detail


def test_the_exact_check_would_see_a_wrong_answer() -> None:
    toy = toy_output_problem(EVENTS[0])
    toy.exact *= 1.001
    report = check_unbiased(OutputTSMC, toy, Budget(model_calls=1), options={"particles": 1}, mode="exact",
                            rel_tol=FLOAT32_REL_TOL)
    assert not report.passed


def test_less_spread_than_naive_on_a_rare_set_event() -> None:
    """With one prompt, so that all the rarity lies in the continuation (the twist acts on generated tokens only;
    the spread over inputs stays what sampling x ~ D gives)."""
    toy = _toy('dist main = "a" "b"', 'sample(3, temperature=0.25) contains {"d"}')
    assert toy.exact < 0.01
    budget = Budget(model_calls=256)
    spreads = []
    for estimator in (NaiveMonteCarlo(), OutputTSMC({"particles": 64})):
        values = torch.tensor([run_estimator(estimator, toy.problem(), budget, seed, progress=False).value
                               for seed in range(12)])
        spreads.append(float(values.std()))
    assert abs(float(values.mean()) - toy.exact) < 4 * spreads[1] / 12**0.5  # output-tsmc's own standard error
    assert spreads[1] < spreads[0] / 4


def test_the_cost_is_one_model_call_per_particle_and_the_interval_covers() -> None:
    toy = toy_output_problem('sample(3) contains {"c"}')
    est = run_estimator(OutputTSMC({"particles": 50}), toy.problem(), Budget(model_calls=120), 0, progress=False)
    assert est.forward_passes == est.samples == 120 and est.generated_tokens == 3 * 120
    assert est.diagnostics["runs"] == 3 and est.stop_reason == "model_calls"
    assert est.ci is not None and est.ci.low <= toy.exact <= est.ci.high


def test_a_test_on_the_decoded_text_is_refused() -> None:
    toy = toy_output_problem('sample(2) contains "ab"')
    with pytest.raises(LowprobError, match="output-tsmc twists events that contain a token set or equal a fixed"):
        run_estimator(OutputTSMC(), toy.problem(), Budget(model_calls=10), 0, progress=False)
