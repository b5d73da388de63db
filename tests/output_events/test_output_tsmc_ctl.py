"""output-tsmc-ctl and the bidirectional log-Z bounds for output events, against exact answers on toys.

The CTL estimator is exactly unbiased by enumeration of every draw of a whole run (plain draws, a training round
whose positives change the twist, the estimate's run); a trained twist's SMC is exactly unbiased with resampling;
the head starts equal to the look-ahead twist bit for bit; budgets hold; the bounds bracket the exact log Z.
"""

from __future__ import annotations

import math

import pytest
import torch
from output_toys import FLOAT32_REL_TOL, exact_output_probability, toy_model, toy_output_problem

from lowprob.core.budget import Budget
from lowprob.core.errors import LowprobError
from lowprob.core.estimator import Problem
from lowprob.core.meter import MeteredModel
from lowprob.core.output_target import OutputTarget
from lowprob.core.random import Enumerator, expectation
from lowprob.core.runner import run_estimator
from lowprob.core.smc import normalized_weights
from lowprob.dsl import load_spec
from lowprob.plugins.builtin.output_tsmc import OutputTSMC, Trace, Twist, rejection_positives, smc_run
from lowprob.plugins.builtin.output_tsmc_ctl import CTLData, HazardHead, OutputTSMCCTL, ctl_loss, train_head
from lowprob.plugins.testing import ToyProblem, check_unbiased

SMALL = {"particles": 32, "train_particles": 32, "rounds": 3, "train_steps": 10}
RARE = 'sample(4, temperature=0.5) contains {"d"}'


def _two_input_problem(event: str) -> ToyProblem:
    """One input position over ``a`` and ``b``, so that whole runs can be enumerated."""
    model = toy_model()
    compiled = load_spec(f'tokens w = {{"a": 1, "b": 2}}\ndist main = w\ntarget t = {event}\n', model.vocab,
                         max_length=model.n_ctx)
    target = compiled.target("t")
    assert isinstance(target, OutputTarget)
    distribution = compiled.distribution()
    return ToyProblem(model, distribution, target, exact_output_probability(model, distribution, target))


def test_a_whole_run_is_exactly_unbiased_by_enumeration() -> None:
    """One plain draw (an exact positive when it hits), one training round of one particle, one estimate run:
    every joint outcome enumerated, so the twist the estimate uses differs from path to path."""
    toy = _two_input_problem('sample(2, top_k=2) contains {"c"}')
    assert 0 < toy.exact < 1
    options = {"particles": 1, "train_particles": 1, "rounds": 1, "train_steps": 3, "naive_share": 0.34,
               "training_share": 0.34, "learning_rate": 0.5, "weight_decay": 0.0}
    est = run_estimator(OutputTSMCCTL(options), toy.problem(), Budget(model_calls=3), 0, progress=False)
    assert est.diagnostics["rounds"] == 1 and est.diagnostics["naive_samples"] == 1 and est.diagnostics["runs"] == 1
    report = check_unbiased(OutputTSMCCTL, toy, Budget(model_calls=3), options=options, mode="exact",
                            rel_tol=FLOAT32_REL_TOL, max_paths=10_000)
    assert report.passed, report.detail


def _trained_head(toy: ToyProblem, seed: int = 0) -> HazardHead:
    problem = toy.problem()
    head = HazardHead(Twist.of(problem), problem.model.d_model)
    train_head(problem, head, torch.Generator().manual_seed(seed), rounds=3, particles=32, steps=20,
               learning_rate=0.2, weight_decay=0.0, ess_threshold=0.5)
    return head


def test_a_trained_twist_with_resampling_is_exactly_unbiased() -> None:
    toy = _two_input_problem('sample(2, top_k=2) contains {"c"}')
    head = _trained_head(toy)
    assert float(head.constant.detach().abs().max()) > 1e-3, "training left the head at the look-ahead twist"

    def run(enumerator: Enumerator) -> float:
        problem = toy.problem()
        inputs = problem.distribution.sample(2, enumerator)
        return smc_run(problem, head, inputs, 1.0, enumerator)[0].evidence

    result = expectation(run, 10_000)
    assert result.value == pytest.approx(toy.exact, rel=FLOAT32_REL_TOL)


def test_the_head_starts_equal_to_the_look_ahead_twist() -> None:
    toy = toy_output_problem(RARE)
    problem = toy.problem()
    base = Twist.of(problem)
    head = HazardHead(base, problem.model.d_model)
    inputs = problem.distribution.sample(16, torch.Generator().manual_seed(0))
    decoding = problem.model.decoding(inputs, base.length)
    hit = torch.zeros(16, dtype=torch.bool)
    for step in range(base.length):
        log_p = base.sampling.log_probs(decoding.logits).double()
        assert torch.equal(head.log_psi(step, log_p, hit, decoding.features), base.log_psi(step, log_p, hit))
        if step + 1 < base.length:
            chosen = log_p.argmax(dim=1)
            hit = hit | (chosen == base.ids[0])
            decoding.push(chosen)


def test_training_lowers_the_ctl_loss_on_its_data_and_on_held_out_data() -> None:
    toy = toy_output_problem(RARE)
    problem = toy.problem()
    head = HazardHead(Twist.of(problem), problem.model.d_model)
    generator = torch.Generator().manual_seed(1)
    trace = Trace()
    weights, _ = smc_run(problem, head, problem.distribution.sample(64, generator), 0.5, generator, trace=trace)
    data = CTLData.of(trace, normalized_weights(weights.log_weights))
    before = float(ctl_loss(head, data).detach())
    reports = train_head(problem, head, generator, rounds=3, particles=32, steps=20, learning_rate=0.2,
                         weight_decay=0.0, ess_threshold=0.5)
    assert all(r.loss_after is not None and r.loss_before is not None and r.loss_after < r.loss_before
               for r in reports)
    assert float(ctl_loss(head, data).detach()) < before


@pytest.mark.parametrize("calls", [1, 2, 7, 40, 333])
def test_the_budget_holds_and_pays_for_training(calls: int) -> None:
    toy = toy_output_problem(RARE)
    problem = toy.problem()
    est = run_estimator(OutputTSMCCTL(SMALL), problem, Budget(model_calls=calls), 0, progress=False)
    assert est.model_calls <= calls and est.backward_passes == 0
    assert est.forward_passes == est.diagnostics["training_calls"] + est.samples == problem.model.cost.forward_passes


def test_fixed_continuations_fall_back_to_the_look_ahead_twist() -> None:
    toy = toy_output_problem('sample(3) == "dca"')
    est = run_estimator(OutputTSMCCTL(SMALL), toy.problem(), Budget(model_calls=200), 0, progress=False)
    assert est.diagnostics["twist"] == "look-ahead" and "fixed continuation" in est.diagnostics["fallback"]
    assert est.diagnostics["training_calls"] == 0


@pytest.mark.statistical
def test_ctl_is_unbiased_on_a_rare_event_by_replicates() -> None:
    toy = toy_output_problem(RARE)
    report = check_unbiased(OutputTSMCCTL, toy, Budget(model_calls=300), seeds=range(40), options=SMALL,
                            mode="replicates")
    assert report.passed, report.detail


@pytest.mark.parametrize("cls", [OutputTSMC, OutputTSMCCTL])
def test_the_bounds_bracket_the_exact_log_z(cls: type[OutputTSMC]) -> None:
    toy = toy_output_problem(RARE)
    log_z = math.log(toy.exact)
    positives = rejection_positives(toy.problem(), 200, seed=3)
    assert positives.shape[1] == 2 + 4 and len(positives) > 20
    bracket = cls({"particles": 8, **({} if cls is OutputTSMC else {"train_particles": 32})}).bounds(
        toy.problem(), positives[:20], runs=20, seed=1)
    lower, upper = bracket.lower, bracket.upper
    assert lower.std_error is not None and upper.std_error is not None
    assert lower.mean <= log_z + 3 * lower.std_error
    assert upper.mean >= log_z - 3 * upper.std_error
    forward, reverse = bracket.kl(log_z)
    assert 0 < bracket.width < 0.5 and forward > -3 * lower.std_error and reverse > -3 * upper.std_error


def test_the_bounds_take_greedy_inputs_alone_and_refuse_misses() -> None:
    toy = toy_output_problem('greedy(2) contains {"b"}')
    problem = toy.problem()
    inputs, probs = problem.distribution.enumerate()
    continuations = problem.model.generate(inputs, 2, toy.target.sampling, torch.Generator()).tokens
    assert isinstance(toy.target, OutputTarget)
    hit = toy.target.hits(continuations, problem.model.vocab)
    assert 0 < int(hit.sum()) < len(hit)
    bracket = OutputTSMC({"particles": 8}).bounds(toy.problem(), inputs[hit], runs=8)
    log_z, lower, upper = math.log(toy.exact), bracket.lower, bracket.upper
    assert bracket.upper.runs == int(hit.sum())
    assert lower.mean <= log_z + 3 * (lower.std_error or 0) + 1e-9
    assert upper.mean >= log_z - 3 * (upper.std_error or 0) - 1e-9
    with pytest.raises(LowprobError, match="does not hit the event"):
        OutputTSMC().bounds(toy.problem(), inputs[~hit][:1], runs=1)
    sampled = Problem(MeteredModel(toy.model), toy.distribution, toy_output_problem(RARE).target)
    with pytest.raises(LowprobError, match="need greedy decoding"):
        OutputTSMC().bounds(sampled, inputs[:1], runs=1)
