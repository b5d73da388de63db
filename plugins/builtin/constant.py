"""The "optimal constant" baseline (Wu & Hilton 2025, §5.1) and the Itakura–Saito-style loss it minimises.

Not an estimator: it needs the ground-truth probabilities of the evaluated tokens, so it belongs to an evaluation
harness that scores estimators against a constant that already knows the answers on average.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def itakura_saito_loss(p: Sequence[float] | torch.Tensor, p_hat: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """L(p, p̂) = p/p̂ − ln(p/p̂) − 1 elementwise (float64): ≥ 0, and 0 iff p̂ = p; infinite for p̂ = 0 < p."""
    ratio = torch.as_tensor(p, dtype=torch.float64) / torch.as_tensor(p_hat, dtype=torch.float64)
    return ratio - torch.log(ratio) - 1


def optimal_constant(ground_truth_probs: Sequence[float] | torch.Tensor) -> float:
    """The c minimising Σ_k L(p_k, c): the arithmetic mean of the p_k.

    d/dc Σ_k (p_k/c − ln p_k + ln c − 1) = Σ_k (1/c − p_k/c²) = 0 ⇔ c = mean(p), and the sum is convex in ln c.
    """
    p = torch.as_tensor(ground_truth_probs, dtype=torch.float64)
    if p.numel() == 0 or not bool(((p > 0) & torch.isfinite(p)).all()):
        raise ValueError("optimal_constant needs at least one probability, all finite and positive")
    return float(p.mean())
