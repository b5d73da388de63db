"""Every random draw an estimator makes goes through these functions.

They take an explicit ``torch.Generator`` (the same seed gives the same draws). Routing all draws through one
place lets the conformance kit pass an :class:`Enumerator` instead, which enumerates every outcome of every
draw and so gives an estimator's exact expectation on toy problems (see :func:`expectation` and
``lowprob.plugins.testing.check_unbiased``). The enumerator is deliberately not a ``torch.Generator``: a draw
that bypasses this module hands it to torch, which refuses it with a ``TypeError``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Annotated

import torch
from pydantic import Field

from lowprob.core.errors import LowprobError


class EnumerationError(LowprobError):
    """An estimator's randomness cannot be enumerated exactly (the conformance kit then uses replicates)."""


class NotEnumerable(EnumerationError):
    """A draw with infinitely many outcomes, randomness from outside this module, or draws that change on replay."""


class TooManyPaths(EnumerationError):
    """The draws along one path have more joint outcomes than the enumeration may visit."""


@dataclass(frozen=True)
class Choice:
    """One choice point (one call of a draw function) on a path: the outcome taken, of how many, and its
    probability."""

    index: int
    count: int
    probability: float


class Enumerator:
    """A stand-in for ``torch.Generator`` that takes each draw's outcomes in turn instead of sampling them.

    It replays the ``forced`` outcome indices ``(index, count)`` at the first choice points, takes outcome 0
    at every later one, and records every choice in ``path``. It refuses (:class:`TooManyPaths`) a path whose
    outcome counts multiply past ``max_paths``: the number of paths never exceeds the largest such product.
    """

    def __init__(self, forced: Sequence[tuple[int, int]], max_paths: int) -> None:
        self.forced = forced
        self.max_paths = max_paths
        self.path: list[Choice] = []
        self.outcomes = 1

    @property
    def probability(self) -> float:
        """The probability of the path taken so far."""
        return math.prod(choice.probability for choice in self.path)

    def categorical(self, probs: torch.Tensor, n: int) -> torch.Tensor:
        """One joint outcome of ``n`` draws from every row of ``probs`` (rows normalised in float64; outcomes of
        probability zero are skipped)."""
        rows = probs.detach().cpu().to(torch.float64).reshape(-1, probs.shape[-1])
        normalised = (rows / rows.sum(dim=1, keepdim=True)).tolist()
        supports = [[k for k, p in enumerate(row) if p > 0] for row in normalised]
        if not all(supports):
            raise ValueError("categorical: a row has no outcome of positive probability")
        cells = [support for support in supports for _ in range(n)]
        digits = self._choose([len(cell) for cell in cells], lambda c, d: normalised[c // n][cells[c][d]])
        picked = [cell[d] for cell, d in zip(cells, digits, strict=True)]
        return torch.tensor(picked, dtype=torch.int64, device=probs.device).reshape(*probs.shape[:-1], n)

    def integers(self, high: int, shape: Sequence[int]) -> torch.Tensor:
        """One joint outcome of uniform integers in ``[0, high)`` of the given shape."""
        digits = self._choose(itertools.repeat(high, math.prod(shape)), lambda c, d: 1 / high)
        return torch.tensor(digits, dtype=torch.int64).reshape(tuple(shape))

    def _choose(self, sizes: Iterable[int], probability: Callable[[int, int], float]) -> list[int]:
        """The digits (one per cell, mixed radix ``sizes``) of this choice point's outcome, replayed or the
        first; records the choice with ``Π probability(cell, digit)``."""
        sizes = list(self._counted(sizes))
        count = math.prod(sizes)
        depth = len(self.path)
        if depth < len(self.forced):
            index, expected = self.forced[depth]
            if expected != count:
                raise NotEnumerable(f"choice point {depth} had {expected} outcomes and now has {count}: the "
                                    "draws are not a deterministic function of earlier outcomes")
        else:
            index = 0
        digits, rest = [], index
        for size in reversed(sizes):
            rest, digit = divmod(rest, size)
            digits.append(digit)
        digits.reverse()
        self.path.append(Choice(index, count, math.prod(probability(c, d) for c, d in enumerate(digits))))
        return digits

    def _counted(self, sizes: Iterable[int]) -> Iterable[int]:
        """``sizes``, checking as it goes that the path's joint outcomes stay within ``max_paths``."""
        for size in sizes:
            self.outcomes *= size
            if self.outcomes > self.max_paths:
                raise TooManyPaths(f"the draws along one path have more than max_paths={self.max_paths} joint "
                                   f"outcomes (at choice point {len(self.path)}); enumerate a smaller budget "
                                   "or toy, or raise max_paths")
            yield size


@dataclass(frozen=True)
class Expectation:
    """An exact expectation ``Σ P(path)·value(path)``, the number of paths, and ``Σ P(path)`` (1 up to
    rounding)."""

    value: float
    paths: int
    mass: float


def expectation(run: Callable[[Enumerator], float], max_paths: int) -> Expectation:
    """The exact expectation of ``run``'s value over every joint outcome of the draws it makes.

    Depth-first by replay: ``run`` is called once per path, from scratch, with an :class:`Enumerator` that
    replays the path's prefix and takes the first outcome at every new choice point; the next path advances
    the deepest choice point that has outcomes left. ``run`` must draw only through this module: touching
    torch's global generator raises :class:`NotEnumerable`.
    """
    terms, masses = [], []
    forced: list[tuple[int, int]] | None = []
    while forced is not None:
        enumerator = Enumerator(forced, max_paths)
        before = torch.random.get_rng_state()
        value = run(enumerator)
        if not torch.equal(before, torch.random.get_rng_state()):
            raise NotEnumerable("the run drew from torch's global generator, which cannot be enumerated; draw "
                                "through lowprob.core.random with the generator the estimator is given")
        terms.append(enumerator.probability * value)
        masses.append(enumerator.probability)
        forced = _next_prefix(enumerator.path)
    return Expectation(math.fsum(terms), len(terms), math.fsum(masses))


def _next_prefix(path: Sequence[Choice]) -> list[tuple[int, int]] | None:
    """The forced choices of the next path in depth-first order, or ``None`` when every path was visited."""
    for depth in range(len(path) - 1, -1, -1):
        if path[depth].index + 1 < path[depth].count:
            return [(c.index, c.count) for c in path[:depth]] + [(path[depth].index + 1, path[depth].count)]
    return None


def categorical(probs: torch.Tensor, n: int, generator: torch.Generator | Enumerator) -> torch.Tensor:
    """``n`` independent draws from each row of ``probs`` (``[K] -> [n]``, ``[B, K] -> [B, n]``).

    ``probs`` holds weights, not token ids: finite, non-negative floats with a positive entry in every row (rows
    need not be normalised; zero-weight entries are never drawn). The result is int64 indices into the last
    dimension; map them to token ids with the ids the entries stand for (``ids[index]``).
    """
    if isinstance(generator, Enumerator):
        return generator.categorical(probs, n)
    return torch.multinomial(probs, n, replacement=True, generator=generator)


def integers(high: int, shape: Sequence[int], generator: torch.Generator | Enumerator) -> torch.Tensor:
    """Independent uniform integers in ``[0, high)`` of the given shape (int64)."""
    if isinstance(generator, Enumerator):
        return generator.integers(high, shape)
    return torch.randint(high, tuple(shape), generator=generator)


def uniform(shape: Sequence[int], generator: torch.Generator | Enumerator,
            dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Independent uniforms in ``[0, 1)``; continuous, so an :class:`Enumerator` refuses them."""
    if isinstance(generator, Enumerator):
        raise NotEnumerable("a continuous (uniform) draw has infinitely many outcomes and cannot be enumerated")
    return torch.rand(tuple(shape), generator=generator, dtype=dtype)


MAX_SEED = 2**63 - 1
"""Seeds are integers in ``[0, MAX_SEED]``: what ``torch.Generator``, numpy int64 and every results file take
without wrapping (a negative seed would alias a large one, a larger one overflows)."""

Seed = Annotated[int, Field(strict=True, ge=0, le=MAX_SEED, description="a seed in [0, 2^63 - 1]")]
"""A seed field of a config file: an integer (not a float or string) in the valid range."""


def check_seed(seed: int, what: str = "seed") -> int:
    """``seed`` if it is a valid seed, else a :class:`LowprobError` naming ``what`` and the range."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise LowprobError(f"{what} must be an integer from 0 to 2^63 - 1, got {seed!r}")
    return seed
