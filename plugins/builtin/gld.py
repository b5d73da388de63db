"""GLD, Gaussian logit difference (Wu & Hilton 2025, §5.6): fit a normal distribution to the target's logit
margin z over sampled activations and report its upper tail, p̂ = Pr[Z > 0] = Φ(μ̂/σ̂)."""

from __future__ import annotations

import math

import torch
from scipy import special

from lowprob.core.errors import LowprobError
from lowprob.core.estimator import Capabilities
from lowprob.plugins.builtin.activation_extrapolation import ExtrapolationEstimator
from lowprob.plugins.fits import ExtrapolationFit, FitResult
from lowprob.plugins.hookspecs import hookimpl
from lowprob.plugins.registry import Registrar


def logit_margin(logits: torch.Tensor, target_ids: tuple[int, ...]) -> torch.Tensor:
    """z = max over the target ids − max over the other tokens, per row of ``logits [n, V]``; z > 0 is a hit."""
    inside = torch.zeros(logits.shape[1], dtype=torch.bool)
    inside[list(target_ids)] = True
    if bool(inside.all()):
        raise LowprobError("GLD needs at least one token outside the target")
    return logits[:, inside].amax(dim=1) - logits[:, ~inside].amax(dim=1)


def gld(activations: torch.Tensor, W_U: torch.Tensor, target_ids: tuple[int, ...],  # noqa: N803
        generator: torch.Generator) -> FitResult:
    """p̂ = Φ(μ̂/σ̂) for the margin z, computed as exp(log Φ) so tiny tails stay finite; delta-method error.

    Deterministic (``generator`` is unused). s.e.(log p̂) = (φ/Φ)(m)·sqrt((1 + m²/2)/n) with m = μ̂/σ̂, from
    Var μ̂ = σ²/n and Var σ̂ ≈ σ²/(2n) for normal z."""
    n = activations.shape[0]
    if n < 2:
        raise LowprobError(f"GLD needs at least 2 activations, got {n}")
    z = logit_margin(activations.double() @ W_U.double(), target_ids)
    mu, sigma = float(z.mean()), float(z.std())
    diagnostics = {"n": n, "mu": mu, "sigma": sigma}
    if sigma == 0.0:
        return FitResult(value=float(mu > 0), std_error=None, diagnostics=diagnostics)
    m = mu / sigma
    log_p = float(special.log_ndtr(m))
    diagnostics = {**diagnostics, "z_score": m, "log10_value": log_p / math.log(10)}
    value = math.exp(log_p)
    if value == 0.0:  # below the smallest double (a constant input's float noise gives |m| ~ 1e10)
        return FitResult(value=0.0, std_error=None, diagnostics=diagnostics)
    # φ(m)/Φ(m) = √(2/π) / erfcx(−m/√2): no exp(−m²/2)/Φ(m) cancellation, which overflows for |m| ≳ 1e9
    ratio = math.sqrt(2 / math.pi) / float(special.erfcx(-m / math.sqrt(2)))
    log_se = ratio * math.sqrt((1 + m * m / 2) / n)
    return FitResult(value=value, std_error=value * log_se, diagnostics=diagnostics)


class GLD(ExtrapolationEstimator):
    """GLD: activation extrapolation by a Gaussian fit to the target's logit margin; heuristic."""

    name = "gld"
    capabilities = Capabilities(unbiased=False, consistent=False, has_error_bars=True)

    def fit(self) -> ExtrapolationFit:
        return gld


@hookimpl
def register_extrapolations(registrar: Registrar) -> None:
    """Register the GLD fit."""
    registrar.add_extrapolation("gld", gld, description="Gaussian fit to the target's logit margin (Wu & Hilton 2025)")


@hookimpl
def register_estimators(registrar: Registrar) -> None:
    """Register the GLD estimator."""
    registrar.add_estimator(GLD)
