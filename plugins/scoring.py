"""The contract of score functions, the things ``register_scores`` registers: a builder that fits a
:class:`Score` to one problem, which splitting estimators then use to rank inputs (and prefixes of inputs) by how
close they are to the target event."""

from __future__ import annotations

from typing import Any, Protocol

import torch

from lowprob.core.estimator import Problem
from lowprob.core.random import Enumerator


class Score(Protocol):
    """A score ξ fitted to one problem: higher means closer to the target event.

    Splitting estimators rank replicas by ξ and place their levels on it; they treat every hit as ξ = +∞
    themselves, so a score need not know the event exactly (the better it tracks the event, the fewer and
    better-mixed the levels). ``complete`` judges whole inputs from their last-position logits (the estimator has
    already run them through the metered model); ``prefixes`` judges every prefix ``x_{≤p_j}`` that ends at a
    non-constant position ``p_j`` of a factorized distribution, or returns ``None`` when the score only judges
    whole inputs (generalized AMS needs prefix scores). Neither may call the model.
    """

    def complete(self, tokens: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """ξ of whole inputs ``tokens`` ``[n, length]`` from last-position ``logits``, float64 ``[n]``."""

    def prefixes(self, tokens: torch.Tensor) -> torch.Tensor | None:
        """ξ after each non-constant position, float64 ``[n, steps]`` (column ``j``: the prefix ending at
        ``p_j``), or ``None``."""

    def describe(self) -> dict[str, Any]:
        """JSON-serialisable facts about the fitted score, for diagnostics."""


class ScoreBuilder(Protocol):
    """Fits a :class:`Score` to ``problem``, spending at most ``pilot`` draws from D with one forward and one
    backward pass each through ``problem.model`` (the meter counts them); all randomness from ``generator``."""

    def __call__(self, problem: Problem, pilot: int, generator: torch.Generator | Enumerator) -> Score: ...
