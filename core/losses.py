"""The losses of Wu & Hilton (2025) that score an estimate p̂ against a ground truth p, and the constant that
minimises the Itakura–Saito one — the single definition used by the baseline plugin and the evaluation harness.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

from lowprob.core.errors import LowprobError

Floats = NDArray[np.float64]


def itakura_saito_loss(p: ArrayLike, p_hat: ArrayLike) -> Floats:
    """L(p, p̂) = p/p̂ − ln(p/p̂) − 1 elementwise (float64): ≥ 0, 0 iff p̂ = p, and ∞ for p̂ = 0 < p."""
    p, p_hat = np.asarray(p, dtype=np.float64), np.asarray(p_hat, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = p / p_hat
        out = ratio - np.log(ratio) - 1
    return np.where(p_hat > 0, out, np.inf)


def squared_log_error(p: ArrayLike, p_hat: ArrayLike) -> Floats:
    """(ln p − ln p̂)² elementwise; ∞ for p̂ = 0."""
    p, p_hat = np.asarray(p, dtype=np.float64), np.asarray(p_hat, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return np.where(p_hat > 0, (np.log(p) - np.log(np.where(p_hat > 0, p_hat, 1.0))) ** 2, np.inf)


def optimal_constant(ground_truth_probs: ArrayLike) -> float:
    """The c minimising Σ_k L(p_k, c): the arithmetic mean of the p_k.

    d/dc Σ_k (p_k/c − ln p_k + ln c − 1) = Σ_k (1/c − p_k/c²) = 0 ⇔ c = mean(p), and the sum is convex in ln c.
    """
    p = np.asarray(ground_truth_probs, dtype=np.float64)
    if p.size == 0 or not bool(((p > 0) & np.isfinite(p)).all()):
        raise LowprobError("optimal_constant needs at least one probability, all finite and positive")
    return float(p.mean())
