"""Every random draw an estimator makes goes through these functions.

They take an explicit ``torch.Generator`` (the same seed gives the same draws). Routing all draws through one
place lets the conformance kit substitute a generator that enumerates every outcome of every draw, which
gives an estimator's exact expectation on toy problems (see ``lowprob.plugins.testing``).
"""

from __future__ import annotations

import torch


def categorical(probs: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` independent draws from each row of ``probs`` (``[K] -> [n]``, ``[B, K] -> [B, n]``); rows need
    not be normalised."""
    return torch.multinomial(probs, n, replacement=True, generator=generator)
