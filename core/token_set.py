"""Token sets: what DSL set expressions and token-set resolver plugins produce.

A token set is a set of ids, optionally with a positive weight per id (a frequency table restricted to the
set). Unweighted sets become uniform categoricals; weighted ones keep their relative weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from lowprob.core.errors import WeightError
from lowprob.core.vocabulary import Vocabulary


@dataclass(frozen=True, eq=False)
class TokenSet:
    """Sorted unique int64 ``ids`` and, for weighted sets, float64 ``weights`` (same length, all > 0)."""

    ids: torch.Tensor
    weights: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.weights is None:
            return
        if self.weights.shape != self.ids.shape:
            raise WeightError(f"token set: {self.ids.numel()} ids but {self.weights.numel()} weights")
        if not (torch.isfinite(self.weights).all() and (self.weights > 0).all()):
            raise WeightError("token set: weights must be finite and positive")

    @staticmethod
    def of(ids: Sequence[int] | torch.Tensor, weights: Sequence[float] | torch.Tensor | None = None,
           what: str = "token set") -> TokenSet:
        """Build a set; duplicate ids add their weights; zero weights drop the id; bad weights raise."""
        id_t = torch.as_tensor(ids, dtype=torch.int64).flatten()
        if weights is None:
            return TokenSet(torch.unique(id_t, sorted=True))
        w = torch.as_tensor(weights, dtype=torch.float64).flatten()
        if w.numel() != id_t.numel():
            raise WeightError(f"{what}: {id_t.numel()} ids but {w.numel()} weights")
        if not torch.isfinite(w).all() or (w < 0).any():
            raise WeightError(f"{what}: weights must be finite and non-negative")
        keep = w > 0
        uniq, inverse = torch.unique(id_t[keep], sorted=True, return_inverse=True)
        merged = torch.zeros(uniq.numel(), dtype=torch.float64).index_add_(0, inverse, w[keep])
        if not torch.isfinite(merged).all():
            raise WeightError(f"{what}: the weights of a repeated token add up to more than the largest float")
        return TokenSet(uniq, merged)

    @property
    def weighted(self) -> bool:
        return self.weights is not None

    def __len__(self) -> int:
        return int(self.ids.numel())


ResolverArg = int | float | str | TokenSet


class TokenSetResolver(Protocol):
    """A named token-set source from a plugin, called from the DSL as ``name(arg, ...)``.

    It receives the model's vocabulary and the call's arguments (ints, floats, strings or token sets) and
    returns a :class:`TokenSet`; it raises ``ValueError`` with a readable message for bad arguments.
    """

    def __call__(self, vocab: Vocabulary, *args: ResolverArg) -> TokenSet: ...
