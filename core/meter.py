"""The metered model: the one place compute is counted, so budgets are comparable across estimators."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from lowprob.core.model import ModelAdapter
from lowprob.core.target import Target
from lowprob.core.vocabulary import Vocabulary

T = TypeVar("T")


@dataclass(frozen=True)
class Cost:
    """Compute spent: sequence passes through the model and seconds inside it."""

    forward_passes: int = 0
    backward_passes: int = 0
    model_seconds: float = 0.0

    def model_calls(self, backward_weight: float) -> float:
        """Forward passes plus ``backward_weight`` times the backward passes."""
        return self.forward_passes + backward_weight * self.backward_passes

    def __sub__(self, other: Cost) -> Cost:
        return Cost(self.forward_passes - other.forward_passes, self.backward_passes - other.backward_passes,
                    self.model_seconds - other.model_seconds)


class MeteredModel:
    """A :class:`ModelAdapter` that counts every sequence it runs forward and every one it back-propagates.

    One sequence through the model is one forward pass, whatever its length; a gradient computation is one
    forward and one backward pass per sequence.
    """

    def __init__(self, adapter: ModelAdapter) -> None:
        self.adapter = adapter
        self._forward = 0
        self._backward = 0
        self._seconds = 0.0

    @property
    def cost(self) -> Cost:
        return Cost(self._forward, self._backward, self._seconds)

    @property
    def vocab(self) -> Vocabulary:
        return self.adapter.vocab

    @property
    def n_ctx(self) -> int:
        return self.adapter.n_ctx

    @property
    def d_vocab(self) -> int:
        return self.adapter.d_vocab

    @property
    def name(self) -> str:
        return self.adapter.name

    @property
    def W_U(self) -> torch.Tensor:  # noqa: N802
        return self.adapter.W_U

    def _metered(self, backward: bool, fn: Callable[..., T], tokens: torch.Tensor, *args: Any) -> T:
        """``fn(tokens, *args)``, counting one forward (and, with ``backward``, one backward) pass per sequence."""
        started = time.perf_counter()
        out = fn(tokens, *args)
        n = tokens.shape[0]
        self._forward += n
        if backward:
            self._backward += n
        self._seconds += time.perf_counter() - started
        return out

    def last_logits(self, tokens: torch.Tensor) -> torch.Tensor:
        return self._metered(False, self.adapter.last_logits, tokens)

    def last_activations(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._metered(False, self.adapter.last_activations, tokens)

    def target_gradients(self, tokens: torch.Tensor, target: Target) -> tuple[torch.Tensor, torch.Tensor]:
        return self._metered(True, self.adapter.target_gradients, tokens, target)

    def mean_target_gradients(self, tokens: torch.Tensor, target: Target) -> tuple[torch.Tensor, torch.Tensor]:
        return self._metered(True, self.adapter.mean_target_gradients, tokens, target)

    def embedding_gradients(self, tokens: torch.Tensor, target: Target) -> tuple[torch.Tensor, torch.Tensor]:
        return self._metered(True, self.adapter.embedding_gradients, tokens, target)

    @property
    def W_E(self) -> torch.Tensor:  # noqa: N802
        return self.adapter.W_E

    @property
    def d_model(self) -> int:
        return self.adapter.d_model

    def activations(self, tokens: torch.Tensor, hook: str) -> torch.Tensor:
        """Activations at ``hook`` for every position (see :meth:`ModelAdapter.activations`); n forward passes."""
        return self._metered(False, self.adapter.activations, tokens, hook)

    def fork(self) -> MeteredModel:
        """A fresh meter over the same model: compute counted on it is reported apart from this one's (e.g.
        twist training kept outside an estimate's budget)."""
        return MeteredModel(self.adapter)
