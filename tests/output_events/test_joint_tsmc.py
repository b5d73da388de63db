"""joint-tsmc: exactly unbiased by enumeration of every input draw, continuation and resampling draw on toys (both
input twists, resampling inside the input walk and across into the continuation), within budget with an honest
meter, and clear refusals."""

from __future__ import annotations

import math

import pytest
from output_toys import FLOAT32_REL_TOL, exact_output_probability, toy_model, toy_output_problem

from lowprob.core.budget import Budget
from lowprob.core.errors import LowprobError
from lowprob.core.model import ModelAdapter
from lowprob.core.output_target import OutputTarget
from lowprob.core.runner import run_estimator
from lowprob.dsl import load_spec
from lowprob.plugins.builtin.joint_tsmc import JointTSMC
from lowprob.plugins.testing import ToyProblem, check_sane, check_unbiased, lookup_model

EVENTS = [
    'sample(2) contains {"c"}',
    'sample(3, temperature=0.7, top_k=2) contains {"a", "d"}',
    'sample(3) == "dca"',
    'greedy(2) contains {"b"}',
    'sample(2, top_k=1) contains {"c"}',
]


def _toy(dist: str, event: str, model: ModelAdapter | None = None) -> ToyProblem:
    """``model`` (the toy transformer) with the distribution ``dist`` (DSL) and the output event ``event``, and
    its exact value."""
    model = model or toy_model()
    compiled = load_spec(f"{dist}\ntarget t = {event}\n", model.vocab, max_length=model.n_ctx)
    target = compiled.target("t")
    assert isinstance(target, OutputTarget)
    distribution = compiled.distribution()
    return ToyProblem(model, distribution, target, exact_output_probability(model, distribution, target))


def _exact(toy: ToyProblem, particles: int, **options: object) -> None:
    report = check_unbiased(JointTSMC, toy, Budget(model_calls=particles),
                            options={"particles": particles, **options}, mode="exact", rel_tol=FLOAT32_REL_TOL,
                            max_paths=20_000)
    assert report.passed, report.detail


@pytest.mark.parametrize("input_twist", ["prefix", "final"])
@pytest.mark.parametrize("event", EVENTS)
def test_one_particle_is_exactly_unbiased(event: str, input_twist: str) -> None:
    """Two random input positions (16 inputs): one particle's weight is the product of its twist ratios."""
    _exact(toy_output_problem(event), 1, input_twist=input_twist)


@pytest.mark.parametrize("input_twist", ["prefix", "final"])
def test_two_resampled_particles_are_exactly_unbiased(input_twist: str) -> None:
    """Two random positions over two tokens with a constant between them, two particles resampled at every step
    (each twisted input step and the continuation): the walk pushes the constant, re-indexes the session, the
    tokens and the twists. A lookup-table model: its recomputed prefixes keep the enumerated paths fast."""
    toy = _toy('tokens w = {"a": 1, "b": 2}\ndist main = w "d" w', 'sample(1, top_k=2) contains {"c"}',
               lookup_model(positions=8, d_vocab=4, seed=1))
    assert 0 < toy.exact < 1
    _exact(toy, 2, ess_threshold=1.0, input_twist=input_twist)


def test_a_constant_input_is_output_tsmc() -> None:
    toy = _toy('dist main = "a" "b"', 'sample(2, top_k=2) contains {"d"}')
    _exact(toy, 2, ess_threshold=1.0)


def test_the_exact_check_would_see_a_wrong_answer() -> None:
    toy = toy_output_problem(EVENTS[0])
    toy.exact *= 1.001
    report = check_unbiased(JointTSMC, toy, Budget(model_calls=1), options={"particles": 1}, mode="exact",
                            rel_tol=FLOAT32_REL_TOL)
    assert not report.passed


def test_one_model_call_per_particle_within_budget_and_sane() -> None:
    toy = toy_output_problem('sample(3) contains {"c"}')
    est = run_estimator(JointTSMC({"particles": 50}), toy.problem(), Budget(model_calls=120), 0, progress=False)
    assert est.forward_passes == est.samples == 120 and est.stop_reason == "model_calls"
    assert est.generated_tokens == 3 * 120  # the walked input positions are not generated tokens
    assert est.diagnostics["runs"] == 3 and est.diagnostics["input_steps"] == 2
    assert not check_sane(est) and math.isfinite(est.value) and est.value > 0
    assert est.ci is not None and est.ci.low <= toy.exact <= est.ci.high


def test_a_test_on_the_decoded_text_is_refused() -> None:
    toy = toy_output_problem('sample(2) contains "ab"')
    with pytest.raises(LowprobError, match="joint-tsmc twists events that contain a token set or equal a fixed"):
        run_estimator(JointTSMC(), toy.problem(), Budget(model_calls=10), 0, progress=False)


def test_the_prefix_walk_is_refused_when_the_input_fills_the_context() -> None:
    model = toy_model()
    compiled = load_spec('tokens w = {"a": 1, "b": 2}\ndist main = w w w w w w w w\ntarget t = argmax == "a"',
                         model.vocab, max_length=model.n_ctx)
    problem = ToyProblem(model, compiled.distribution(), compiled.target("t"), 0.0).problem()
    with pytest.raises(LowprobError, match="8 input tokens and 1 generated exceed the model's context of 8; use "
                                           "input_twist='final'"):
        run_estimator(JointTSMC({"input_twist": "prefix"}), problem, Budget(model_calls=10), 0, progress=False)
    assert run_estimator(JointTSMC(), problem, Budget(model_calls=10), 0, progress=False).model_calls == 10
