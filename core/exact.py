"""Exact probabilities of count rules under an input distribution, by dynamic programming over token counts.

A :class:`CountRule` is a property of a token sequence that depends only on how many positions fall into each of
a few token classes (``at least 12 positions hold a token of S``; ``token "n" at position 4 and "e" at 9``).
:func:`exact_probability` computes ``Pr_{x~D}[rule(x)]`` for any compiled :class:`InputDistribution` — independent
positions or blocks of weighted alternatives — in exact rational arithmetic over the distribution's float64
probabilities, so the result is exact for the distribution as compiled (correctly rounded when read as a float) at
any depth. Nothing here runs a model: planted models (``lowprob.plugins.builtin.planted``) are built so that their
argmax is such a rule, and tests check the model against it.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Protocol, runtime_checkable

import torch

from lowprob.core.distribution import Block, Categorical, InputDistribution
from lowprob.core.errors import LowprobError

Counts = tuple[int, ...]
"""Capped counts, one per class of a :class:`CountRule`, in class order."""


@dataclass(frozen=True)
class TokenClass:
    """The positions whose token lies in ``tokens``, among ``positions`` (``None``: every position)."""

    name: str
    tokens: frozenset[int]
    positions: frozenset[int] | None = None

    def covers(self, position: int) -> bool:
        """Whether this class counts tokens at ``position``."""
        return self.positions is None or position in self.positions


@dataclass(frozen=True)
class CountRule:
    """A sequence property that depends only on the (capped) number of positions in each class.

    ``caps[c]`` is the largest count of class ``c`` the rule distinguishes (counts above it are read as
    ``caps[c]``), which keeps the dynamic programme small; ``accept`` decides from the capped counts. At each
    position the classes covering it must hold disjoint tokens.
    """

    classes: tuple[TokenClass, ...]
    caps: Counts
    accept: Callable[[Counts], bool]
    description: str

    def __post_init__(self) -> None:
        if len(self.caps) != len(self.classes) or any(c < 0 for c in self.caps):
            raise LowprobError(f"count rule {self.description!r}: need one non-negative cap per class")
        for a, b in itertools.combinations(self.classes, 2):
            shared = a.tokens & b.tokens
            both = (a.positions is None or b.positions is None) or bool(a.positions & b.positions)
            if shared and both:
                raise LowprobError(f"count rule {self.description!r}: classes {a.name!r} and {b.name!r} share "
                                   f"tokens {sorted(shared)[:5]} at the same positions")

    def counts(self, tokens: torch.Tensor) -> torch.Tensor:
        """Capped class counts of each row of ``tokens`` ``[n, length]``, as ``[n, classes]`` int64."""
        columns = []
        for cls, cap in zip(self.classes, self.caps, strict=True):
            member = torch.isin(tokens, torch.tensor(sorted(cls.tokens), dtype=tokens.dtype, device=tokens.device))
            if cls.positions is not None:
                where = torch.zeros(tokens.shape[1], dtype=torch.bool, device=tokens.device)
                where[[p for p in cls.positions if p < tokens.shape[1]]] = True
                member &= where
            columns.append(member.sum(dim=1).clamp(max=cap))
        return torch.stack(columns, dim=1)

    def holds(self, tokens: torch.Tensor) -> torch.Tensor:
        """Boolean ``[n]``: whether each row of ``tokens`` satisfies the rule (evaluated from its counts)."""
        return torch.tensor([self.accept(tuple(row)) for row in self.counts(tokens).tolist()], dtype=torch.bool)

    def states(self) -> Iterator[Counts]:
        """Every capped count vector."""
        return itertools.product(*(range(cap + 1) for cap in self.caps))


@dataclass(frozen=True)
class ExactProbability:
    """An exact probability as a rational number, with its float and log10 readings."""

    value: Fraction

    @property
    def p(self) -> float:
        """The probability, correctly rounded to a float (subnormal or 0.0 only below ~1e-308)."""
        return float(self.value)

    @property
    def log10(self) -> float:
        """``log10`` of the probability, accurate even where the float underflows; ``-inf`` for zero."""
        if self.value == 0:
            return -math.inf
        return math.log10(self.value.numerator) - math.log10(self.value.denominator)

    @property
    def complement(self) -> float:
        """``1 - p``, correctly rounded (useful near 1)."""
        return float(1 - self.value)


State = dict[Counts, Fraction]


def _class_masses(cat: Categorical, position: int, rule: CountRule) -> list[tuple[Counts, Fraction]]:
    """The increments of the capped counts one position can make, with their exact (normalised) probabilities."""
    probs = {int(i): Fraction(float(p)) for i, p in zip(cat.ids.tolist(), cat.probs.tolist(), strict=True)}
    total = sum(probs.values(), Fraction(0))
    steps: list[tuple[Counts, Fraction]] = []
    rest = total
    for c, cls in enumerate(rule.classes):
        if not cls.covers(position):
            continue
        mass = sum((probs[t] for t in cls.tokens if t in probs), Fraction(0))
        if mass:
            steps.append((tuple(int(j == c) for j in range(len(rule.classes))), mass / total))
            rest -= mass
    if rest:
        steps.append(((0,) * len(rule.classes), rest / total))
    return steps


def _advance(state: State, steps: Sequence[tuple[Counts, Fraction]], caps: Counts) -> State:
    out: State = {}
    for counts, prob in state.items():
        for step, mass in steps:
            key = tuple(min(c + s, cap) for c, s, cap in zip(counts, step, caps, strict=True))
            out[key] = out.get(key, Fraction(0)) + prob * mass
    return out


def _convolve(state: State, block: State, caps: Counts) -> State:
    return _advance(state, list(block.items()), caps)


def _block_state(block: Block, start: int, rule: CountRule) -> State:
    """The distribution of the capped count increments of one block (a mixture of products)."""
    zero = (0,) * len(rule.classes)
    weights = [Fraction(float(w)) for w in block.weights.tolist()]
    total = sum(weights, Fraction(0))
    mixed: State = {}
    for weight, component in zip(weights, block.components, strict=True):
        state: State = {zero: Fraction(1)}
        for j, cat in enumerate(component):
            state = _advance(state, _class_masses(cat, start + j, rule), rule.caps)
        for key, prob in state.items():
            mixed[key] = mixed.get(key, Fraction(0)) + weight / total * prob
    return mixed


def count_distribution(distribution: InputDistribution, rule: CountRule) -> State:
    """The exact distribution of the rule's capped class counts under ``distribution``."""
    state: State = {(0,) * len(rule.classes): Fraction(1)}
    start = 0
    for block in distribution.blocks:
        if block.is_factorized:
            for j, cat in enumerate(block.components[0]):
                state = _advance(state, _class_masses(cat, start + j, rule), rule.caps)
        else:
            state = _convolve(state, _block_state(block, start, rule), rule.caps)
        start += block.length
    return state


def exact_probability(distribution: InputDistribution, rule: CountRule) -> ExactProbability:
    """``Pr_{x~distribution}[rule(x)]``, exact for the distribution's float64 probabilities."""
    state = count_distribution(distribution, rule)
    return ExactProbability(sum((p for counts, p in state.items() if rule.accept(counts)), Fraction(0)))


@dataclass(frozen=True)
class KnownAnswer:
    """A problem whose answer is known exactly: on ``model``, under the registered distribution ``spec``, the
    probability that the spec's target ``target`` is hit is ``exact.p``.

    ``family`` names the construction (``threshold``, ``two-modes``, ``needle``); ``depth`` is the nominal order of
    magnitude the spec's weights were chosen for; ``role`` says what the problem is for: ``test`` (benchmarks score
    estimators on it), ``tuning`` (estimator settings may be tuned on it, never on test problems) or
    ``calibration`` (shallow enough to check by brute force).
    """

    model: str
    spec: str
    target: str
    family: str
    depth: float
    role: str
    exact: ExactProbability
    rule: CountRule

    @property
    def exact_p(self) -> float:
        """The exact probability as a float."""
        return self.exact.p


@runtime_checkable
class KnownAnswerSource(Protocol):
    """A model loader that also lists the problems with exact answers it supports (planted models do)."""

    def known_answers(self) -> Sequence[KnownAnswer]: ...


def enumerate_probability(distribution: InputDistribution, holds: Callable[[torch.Tensor], torch.Tensor],
                          limit: int = 1_000_000) -> Fraction:
    """``Pr[holds(x)]`` by listing every sequence of a small distribution (an independent check of the DP); exact
    for the enumerated float64 sequence probabilities."""
    rows, probs = distribution.enumerate(limit)
    return _exact_sum(probs[holds(rows)].tolist()) / _exact_sum(probs.tolist())


def _exact_sum(values: Sequence[float]) -> Fraction:
    """The exact sum of floats (dyadic rationals), with one integer addition each."""
    ratios = [v.as_integer_ratio() for v in values]
    denominator = max((d for _, d in ratios), default=1)
    return Fraction(sum(n * (denominator // d) for n, d in ratios), denominator)
