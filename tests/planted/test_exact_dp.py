"""core.exact: the count-rule DP against full enumeration and closed forms, exactly, at any depth."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch

from lowprob.core.distribution import Block, Categorical, InputDistribution
from lowprob.core.errors import LowprobError
from lowprob.core.exact import CountRule, TokenClass, enumerate_probability, exact_probability

VOCAB = 6


def _random_categorical(gen: torch.Generator) -> Categorical:
    weights = torch.rand(VOCAB, generator=gen, dtype=torch.float64) + 0.05
    return Categorical.from_weights(range(VOCAB), weights)


def tiny_distribution(seed: int) -> InputDistribution:
    """Five positions: two independent ones, a two-position mixture of two products, two independent ones."""
    gen = torch.Generator().manual_seed(seed)
    mixture = Block(torch.tensor([0.3, 0.7], dtype=torch.float64),
                    tuple(tuple(_random_categorical(gen) for _ in range(2)) for _ in range(2)))
    blocks = [Block.position(_random_categorical(gen)) for _ in range(2)] + [mixture]
    blocks += [Block.position(_random_categorical(gen)) for _ in range(2)]
    return InputDistribution(tuple(blocks), VOCAB)


RULES = {
    "threshold": CountRule((TokenClass("S", frozenset({1, 2})),), (3,), lambda c: c[0] >= 3, "at least 3 of {1,2}"),
    "two-modes": CountRule((TokenClass("A", frozenset({0})), TokenClass("B", frozenset({3, 4}))), (2, 3),
                           lambda c: c[0] >= 2 or c[1] >= 3, "2 of {0} or 3 of {3,4}"),
    "needle": CountRule(tuple(TokenClass(f"{t}@{p}", frozenset({t}), frozenset({p}))
                              for t, p in ((5, 0), (2, 2), (2, 4))),
                        (1, 1, 1), lambda c: all(c), "5 at 0, 2 at 2, 2 at 4"),
    "exactly-two": CountRule((TokenClass("S", frozenset({0, 5})),), (3,), lambda c: c[0] == 2, "exactly 2 of {0,5}"),
}


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("name", sorted(RULES))
def test_dp_equals_full_enumeration_on_tiny_distributions(name: str, seed: int) -> None:
    distribution = tiny_distribution(seed)
    rule = RULES[name]
    exact = exact_probability(distribution, rule)
    listed = enumerate_probability(distribution, rule.holds)
    assert 0 < exact.p < 1
    assert abs(exact.p - float(listed)) <= 1e-13 * exact.p


def _binomial_tail(q: Fraction, n: int, k: int) -> Fraction:
    return sum((math.comb(n, j) * q**j * (1 - q) ** (n - j) for j in range(k, n + 1)), Fraction(0))


@pytest.mark.parametrize("k", [1, 12, 24, 32])
def test_dp_is_exactly_the_binomial_tail_down_to_1e_40(k: int) -> None:
    """32 identical positions: the DP returns the binomial tail as the same rational number, even at ~1e-40."""
    cat = Categorical.from_weights([0, 1, 2], [0.0625, 0.5, 0.4375])
    distribution = InputDistribution.independent([cat] * 32, 3)
    rule = CountRule((TokenClass("S", frozenset({0})),), (k,), lambda c: c[0] >= k, "")
    q = Fraction(float(cat.probs[0])) / sum((Fraction(float(p)) for p in cat.probs.tolist()), Fraction(0))
    exact = exact_probability(distribution, rule)
    assert exact.value == _binomial_tail(q, 32, k)
    assert exact.log10 == pytest.approx(math.log10(_binomial_tail(q, 32, k)), rel=1e-14)


def test_log10_survives_float_underflow() -> None:
    """A probability far below the smallest float still has an accurate log10 (400 positions at 1/16: 1e-482)."""
    cat = Categorical.from_weights([0, 1], [1.0, 15.0])
    distribution = InputDistribution.independent([cat] * 400, 2)
    rule = CountRule((TokenClass("other", frozenset({1})),), (1,), lambda c: c[0] == 0, "token 0 everywhere")
    exact = exact_probability(distribution, rule)
    assert exact.p == 0.0
    assert exact.log10 == pytest.approx(-400 * math.log10(16), rel=1e-12)


def test_positional_class_counts_only_its_positions() -> None:
    cat = Categorical.from_weights([0, 1], [1.0, 3.0])
    distribution = InputDistribution.independent([cat] * 4, 2)
    rule = CountRule((TokenClass("x", frozenset({0}), frozenset({1, 3})),), (2,), lambda c: c[0] == 2, "")
    assert exact_probability(distribution, rule).value == Fraction(1, 16)


def test_overlapping_classes_are_refused() -> None:
    with pytest.raises(LowprobError, match="share tokens"):
        CountRule((TokenClass("a", frozenset({1, 2})), TokenClass("b", frozenset({2}))), (1, 1), lambda c: True, "x")


def test_classes_may_share_tokens_at_different_positions() -> None:
    rule = CountRule((TokenClass("a", frozenset({1}), frozenset({0})), TokenClass("b", frozenset({1}), frozenset({2}))),
                     (1, 1), lambda c: all(c), "1 at 0 and at 2")
    cat = Categorical.from_weights([0, 1], [1.0, 1.0])
    assert exact_probability(InputDistribution.independent([cat] * 3, 2), rule).value == Fraction(1, 4)
