"""The contract of activation-extrapolation fits, the things ``register_extrapolations`` registers: a pure
function from sampled activations to a :class:`FitResult`."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from lowprob.core.errors import LowprobError


@dataclass(frozen=True)
class FitResult:
    """A fit's estimate of the target probability, its standard error (``None`` when the fit has none) and
    fit-specific diagnostics (JSON-serialisable values), e.g. GLD's μ and σ."""

    value: float
    std_error: float | None = None
    diagnostics: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.value) and 0.0 <= self.value <= 1.0):
            raise LowprobError(f"an extrapolation fit returned the invalid probability {self.value!r}")
        if self.std_error is not None and not (math.isfinite(self.std_error) and self.std_error >= 0):
            raise LowprobError(f"an extrapolation fit returned the invalid standard error {self.std_error!r}")


class ExtrapolationFit(Protocol):
    """Estimate the probability that the argmax lies in ``target_ids`` from sampled activations, without
    model calls.

    ``activations`` is ``[n, d_model]`` (last position, after the final LayerNorm) and ``W_U`` is
    ``[d_model, d_vocab]``, so the sampled logits are ``activations @ W_U``. For several ids the event is
    "the argmax is one of them"; a fit that only handles one id raises :class:`LowprobError` for more. A
    fit is a pure function: all its randomness comes from ``generator``.
    """

    def __call__(
        self,
        activations: torch.Tensor,
        W_U: torch.Tensor,  # noqa: N803 - TransformerLens naming
        target_ids: tuple[int, ...],
        generator: torch.Generator,
    ) -> FitResult: ...
