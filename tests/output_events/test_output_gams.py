"""output-gams: exactly unbiased by enumeration of every input, continuation, survivor choice and regeneration on
toys (also when the budget cuts a run short, and with a plugin score that branches inside the input), a biased
control the same check catches, budget, sane results, zero estimates with their bound, and clear refusals."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from output_toys import FLOAT32_REL_TOL, exact_output_probability, toy_model, toy_output_problem

from lowprob.core.budget import Budget
from lowprob.core.errors import LowprobError
from lowprob.core.output_target import OutputTarget
from lowprob.core.runner import run_estimator
from lowprob.dsl import load_spec
from lowprob.plugins import load_registry
from lowprob.plugins.builtin.gams import Paths
from lowprob.plugins.builtin.output_gams import LookaheadScore, OutputGAMS, path_event
from lowprob.plugins.hookspecs import hookimpl
from lowprob.plugins.registry import Registrar
from lowprob.plugins.testing import (
    ToyProblem,
    check_sane,
    check_unbiased,
    exact_expectation,
    lookup_model,
    toy_problem,
)

SMALL = {"replicas": 2, "kill": 1, "runs": 1}
"""Two replicas, one killed per iteration, one run: every draw of a whole run can be enumerated."""
ONE_POSITION = 'tokens w = {"a": 1, "b": 2}\ndist main = w'
TWO_POSITIONS = 'tokens w = {"a": 1, "b": 2}\ndist main = w w'


def _toy(dist: str, event: str) -> ToyProblem:
    """The toy model with the distribution ``dist`` (DSL) and the output event ``event``, and its exact value."""
    model = toy_model()
    compiled = load_spec(f"{dist}\ntarget t = {event}\n", model.vocab, max_length=model.n_ctx)
    target = compiled.target("t")
    assert isinstance(target, OutputTarget)
    distribution = compiled.distribution()
    return ToyProblem(model, distribution, target, exact_output_probability(model, distribution, target))


@pytest.mark.parametrize(("event", "calls"), [
    ('sample(2, top_k=2) contains {"c"}', 10**6),
    ('sample(2, top_k=2) == "ba"', 10**6),
    ('sample(2, top_k=2) contains {"c"}', 3),  # the budget stops the run after one iteration: still unbiased
])
def test_exactly_unbiased(event: str, calls: int) -> None:
    toy = _toy(ONE_POSITION, event)
    assert 0 < toy.exact < 1
    report = check_unbiased(OutputGAMS, toy, Budget(model_calls=calls), options=SMALL, mode="exact",
                            rel_tol=FLOAT32_REL_TOL, max_paths=100_000)
    assert report.passed, report.detail
    assert report.paths > 2 ** (3 * 2), "no iteration branched: the check would not see a biased branching"


class FirstTokenScore(LookaheadScore):
    """The look-ahead score with a score for the first input position (0 after ``b``, −1 after ``a``), so that
    replicas branch inside the input too."""

    def prefixes(self, tokens: torch.Tensor) -> torch.Tensor:
        first = (tokens[:, :1] == 1).to(torch.float64) - 1.0  # b is token 1
        return torch.cat([first, torch.zeros_like(first)], dim=1)


class CoarseLookahead(LookaheadScore):
    """The look-ahead chance rounded to a multiple of 1/2: a tie-heavy score."""

    def complete(self, tokens: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        return torch.round(super().complete(tokens, logits).exp() * 2) / 2


class InfiniteScore(LookaheadScore):
    """A broken score that calls every state a sure hit."""

    def complete(self, tokens: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        return torch.full((tokens.shape[0],), torch.inf, dtype=torch.float64)


BRANCH_STATES: list[int] = []
"""The branch states of every renewal the bound estimators made (cleared by each test that reads it)."""


def bound(kill_ties: bool = True) -> type[OutputGAMS]:
    """output-gams bound to a registry with the test scores ``first-token`` and ``coarse``, recording its branch
    states; ``kill_ties=False`` is the control that kills exactly k, ties broken by index."""

    class TestScores:
        __name__ = "test-path-scores"

        @staticmethod
        @hookimpl
        def register_scores(registrar: Registrar) -> None:
            for name, score in (("first-token", FirstTokenScore), ("coarse", CoarseLookahead),
                                ("infinite", InfiniteScore)):
                registrar.add_score(name, lambda problem, pilot, generator, score=score: score(
                    path_event(problem), problem.distribution.length), description="test")

    registry = load_registry(entry_points=False, extra_plugins=[TestScores])

    class Bound(OutputGAMS):
        def __init__(self, options: Any = None) -> None:
            super().__init__(options, registry=registry)

        def doomed(self, levels: torch.Tensor, z: float) -> torch.Tensor:
            if kill_ties:
                return super().doomed(levels, z)
            mask = torch.zeros_like(levels, dtype=torch.bool)
            mask[torch.sort(levels, stable=True).indices[:self.options.kill]] = True
            return mask

        def renew(self, paths: Paths, first: torch.Tensor, score: Any, problem: Any, generator: Any) -> Paths:
            BRANCH_STATES.extend(first.tolist())
            return super().renew(paths, first, score, problem, generator)

    return Bound


def test_exactly_unbiased_when_branching_inside_the_input() -> None:
    toy = _toy(TWO_POSITIONS, 'sample(1, top_k=2) contains {"c"}')
    assert 0 < toy.exact < 1
    BRANCH_STATES.clear()
    report = check_unbiased(bound(), toy, Budget(model_calls=10**6), options={**SMALL, "score": "first-token"},
                            mode="exact", rel_tol=FLOAT32_REL_TOL, max_paths=100_000)
    assert report.passed, report.detail
    assert 0 in BRANCH_STATES, "no replica branched after the first input position"


def test_ties_killed_exactly_unbiased_and_killing_only_k_biased() -> None:
    """Walter (2015): with a tie-heavy score, killing exactly k of the tied replicas biases the estimate; the
    exact expectation shows it (measured: +1.4 %), and the same toy and score pass with ties killed."""
    toy = _toy(ONE_POSITION, 'sample(2, top_k=2) contains {"c"}')
    options = {**SMALL, "score": "coarse"}
    report = check_unbiased(bound(), toy, Budget(model_calls=4), options=options, mode="exact",
                            rel_tol=FLOAT32_REL_TOL, max_paths=100_000)
    assert report.passed, report.detail
    result = exact_expectation(bound(kill_ties=False), toy, Budget(model_calls=4), options, max_paths=100_000)
    assert (result.value - toy.exact) / toy.exact > 0.005, (result, toy.exact)


@pytest.mark.parametrize("score", ["lookahead", "twist"])
def test_exactly_unbiased_on_a_next_token_target(score: str) -> None:
    """A next-token target is ``greedy(1)`` of its test; with the input score ``twist`` the input prefixes are
    branch points, as in gams."""
    toy = toy_problem(4, d_vocab=2, length=3, model=lookup_model(positions=3, d_vocab=2, seed=4), band=(0.01, 0.5))
    report = check_unbiased(OutputGAMS, toy, Budget(model_calls=10**6), mode="exact", max_paths=100_000,
                            options={**SMALL, "score": score, "pilot": 1}, rel_tol=FLOAT32_REL_TOL)
    assert report.passed, report.detail


def test_within_budget_and_sane_with_diagnostics() -> None:
    toy = toy_output_problem('sample(3) contains {"c"}')
    est = run_estimator(OutputGAMS({"replicas": 16, "kill": 4, "runs": 3}), toy.problem(), Budget(model_calls=150),
                        0, progress=False)
    assert not check_sane(est)
    assert est.model_calls <= 150 and est.forward_passes == est.model_calls
    assert est.generated_tokens <= 3 * est.forward_passes
    d = est.diagnostics
    assert d["runs"] == 3 and d["score"] == "lookahead" and len(d["levels"]) == 3
    spent = sum(level["calls"] for run in d["levels"] for level in run)
    assert spent + 3 * 16 == est.model_calls, "every model call is the first population's or a level's"
    assert all(level["alive"] + level["killed"] == 16 for run in d["levels"] for level in run)


def test_a_zero_estimate_carries_its_bound_and_reason() -> None:
    """Under top_k=1 the continuation is greedy; a token it never picks is never hit."""
    toy = toy_output_problem('sample(2, top_k=1) contains {"d"}')
    assert toy.exact == 0
    est = run_estimator(OutputGAMS({"replicas": 8, "kill": 2, "runs": 2}), toy.problem(), Budget(model_calls=200), 0,
                        progress=False)
    assert est.value == 0 and est.ci is not None
    assert est.ci.high == pytest.approx(1 - 0.025 ** (1 / 16))  # Clopper–Pearson: 0 hits in 16 initial paths
    assert "initial draws of inputs from D and their continuations" in est.ci.method
    assert "extinct" in est.diagnostics["zero_reason"]


def test_a_test_on_the_decoded_text_is_refused() -> None:
    toy = toy_output_problem('sample(2) contains "ab"')
    with pytest.raises(LowprobError, match="output-gams splits paths of events that contain a token set"):
        run_estimator(OutputGAMS(), toy.problem(), Budget(model_calls=1000), 0, progress=False)


def test_an_input_score_on_an_output_event_is_refused() -> None:
    toy = toy_output_problem('sample(2) contains {"c"}')
    with pytest.raises(LowprobError, match="is an output event"):
        run_estimator(OutputGAMS({"score": "twist", "replicas": 4, "kill": 1, "runs": 2}), toy.problem(),
                      Budget(model_calls=1000), 0, progress=False)


def test_a_score_claiming_sure_hits_is_refused() -> None:
    toy = toy_output_problem('sample(2) contains {"c"}')
    with pytest.raises(LowprobError, match="the score 'infinite' returned NaN or \\+inf"):
        run_estimator(bound()({"score": "infinite", "replicas": 4, "kill": 1, "runs": 2}), toy.problem(),
                      Budget(model_calls=1000), 0, progress=False)


def test_lookahead_is_registered_and_has_no_prefix_scores_for_gams() -> None:
    registry = load_registry(entry_points=False)
    assert "lookahead" in [entry.name for entry in registry.entries("scores")]
    toy = toy_problem(1, d_vocab=5, length=3, model=lookup_model(positions=3, d_vocab=5, seed=1))
    gams = registry.create_estimator("gams", {"score": "lookahead", "replicas": 4, "kill": 1, "runs": 2})
    with pytest.raises(LowprobError, match="gams needs a score with prefix scores; 'lookahead' judges only whole"):
        run_estimator(gams, toy.problem(), Budget(model_calls=1000), 0, progress=False)
