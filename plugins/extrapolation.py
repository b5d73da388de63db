"""The contract of activation-extrapolation fits, the things ``register_extrapolations``
registers."""

from __future__ import annotations

from typing import Protocol, SupportsFloat

import torch


class ExtrapolationFit(Protocol):
    """Estimate the target probability from sampled last-position activations, without model calls.

    ``activations`` is ``[n, d_model]`` (pre-unembed, after the final LayerNorm), ``W_U`` is
    ``[d_model, d_vocab]`` and ``target_ids`` the target's token ids. A fit is a pure function: all
    its randomness comes from ``generator``. It returns the estimated probability (anything
    ``float()`` accepts).
    """

    def __call__(
        self,
        activations: torch.Tensor,
        W_U: torch.Tensor,  # noqa: N803 - TransformerLens naming
        target_ids: tuple[int, ...],
        generator: torch.Generator,
    ) -> SupportsFloat: ...
