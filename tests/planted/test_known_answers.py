"""The registered known-answer problems: reachable through the registry, at their depths, equal to closed forms."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
from click.testing import CliRunner

from lowprob.api import compile_problem, resolve_spec
from lowprob.cli import main
from lowprob.core.exact import KnownAnswer, KnownAnswerSource
from lowprob.core.target import ArgmaxIs
from lowprob.plugins import Registry, load_registry
from lowprob.plugins.builtin.planted import HIT, NEEDLE_POSITIONS


@pytest.fixture(scope="module")
def registry() -> Registry:
    return load_registry(entry_points=False)


@pytest.fixture(scope="module")
def answers(registry: Registry) -> list[KnownAnswer]:
    return [a for e in registry.entries("models") if isinstance(e.obj, KnownAnswerSource)
            for a in e.obj.known_answers()]


def test_every_planted_spec_is_a_known_answer_at_its_depth(registry: Registry, answers: list[KnownAnswer]) -> None:
    specs = {e.name for e in registry.entries("distributions") if e.name.startswith("planted-")}
    assert {a.spec for a in answers} == specs
    assert {a.family for a in answers} == {"threshold", "two-modes", "needle"}
    for a in answers:
        assert abs(a.exact.log10 - math.log10(a.depth)) < 0.01, a
        assert a.role in {"test", "tuning", "calibration"}
    test_depths = {round(math.log10(a.depth)) for a in answers if a.role == "test"}
    assert test_depths == {-5, -7, -9, -11, -12}


def _q(problem_distribution: object, position: int, tokens: frozenset[int]) -> Fraction:
    cat = problem_distribution.positions[position]  # type: ignore[attr-defined]
    probs = {int(i): Fraction(float(p)) for i, p in zip(cat.ids.tolist(), cat.probs.tolist(), strict=True)}
    return sum((probs.get(t, Fraction(0)) for t in tokens), Fraction(0)) / sum(probs.values(), Fraction(0))


def closed_form(answer: KnownAnswer, distribution: object) -> Fraction:
    """The family's probability written out by hand: binomial and trinomial tails, or a product."""
    classes = answer.rule.classes
    n = 32
    if answer.family == "threshold":
        q, k = _q(distribution, 1, classes[0].tokens), answer.rule.caps[0]
        return sum((math.comb(n, j) * q**j * (1 - q) ** (n - j) for j in range(k, n + 1)), Fraction(0))
    if answer.family == "two-modes":
        q1, q2 = _q(distribution, 1, classes[0].tokens), _q(distribution, 1, classes[1].tokens)
        k1, k2 = answer.rule.caps
        return sum((Fraction(math.factorial(n), math.factorial(a) * math.factorial(b) * math.factorial(n - a - b))
                    * q1**a * q2**b * (1 - q1 - q2) ** (n - a - b)
                    for a in range(n + 1) for b in range(n + 1 - a) if a >= k1 or b >= k2), Fraction(0))
    assert tuple(next(iter(c.positions or ())) for c in classes) == NEEDLE_POSITIONS
    return math.prod((_q(distribution, next(iter(c.positions or ())), c.tokens) for c in classes), start=Fraction(1))


def test_exact_values_equal_closed_forms_at_every_depth(registry: Registry, answers: list[KnownAnswer]) -> None:
    """The DP and a hand-written closed form agree as rational numbers, from 1e-3 down to 1e-12; each problem
    compiles through the public API with target HIT."""
    for a in answers:
        problem = compile_problem(registry, resolve_spec(a.spec, registry), model=a.model, target=a.target)
        assert problem.target == ArgmaxIs(HIT, label="HIT")
        assert a.exact.value == closed_form(a, problem.distribution), a.spec


def test_models_command_lists_the_planted_models() -> None:
    out = CliRunner().invoke(main, ["models"])
    assert out.exit_code == 0, out.output
    for name in ("planted-threshold", "planted-two-modes", "planted-needle"):
        assert name in out.output
