"""QLD, quadratic logit decomposition (Wu & Hilton 2025, §5.5): recombine the component of each whitened
activation along one direction with the orthogonal part of every other, and count the n² recombinations whose
argmax is the target.

This follows the mathematics, not the public code: it whitens as (a − μ)A⁻ᵀ and bounds r with the orthogonal
parts b_j (the public code subtracts μA⁻ᵀ from a, and uses the full whitened sample instead of b_j).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from pydantic import Field
from scipy import optimize

from lowprob.core.errors import LowprobError
from lowprob.core.estimator import Capabilities, Problem
from lowprob.plugins.builtin.activation_extrapolation import ExtrapolationEstimator, ExtrapolationOptions
from lowprob.plugins.fits import ExtrapolationFit, FitResult
from lowprob.plugins.hookspecs import hookimpl
from lowprob.plugins.registry import Registrar

CHUNK_ELEMENTS = 2**22
"""Orthogonal parts b_j per chunk × vocabulary size: bounds the ``[chunk, V]`` float64 work arrays (32 MiB)."""


@dataclass(frozen=True)
class Whitening:
    """μ and the lower Cholesky factor A of Σ + εI (Σ with 1/n), so that u = (a − μ)A⁻ᵀ has covariance ≈ I."""

    mean: torch.Tensor
    chol: torch.Tensor

    def apply(self, activations: torch.Tensor) -> torch.Tensor:
        """u = (a − μ)A⁻ᵀ, solving u Aᵀ = a − μ (the subtraction comes first)."""
        centred = activations.to(self.mean.dtype) - self.mean
        return torch.linalg.solve_triangular(self.chol.T, centred, upper=True, left=False)

    def readout(self, W_U: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: N803
        """``(P [V, d], β [V])`` with P = W_Uᵀ A and β = W_Uᵀ μ, so that the logits a W_U equal P u + β."""
        W = W_U.to(self.mean.dtype)  # noqa: N806
        return W.T @ self.chol, W.T @ self.mean


def whiten(activations: torch.Tensor, eps: float) -> Whitening:
    """Fit the whitening of ``activations [n, d]`` in float64; ``eps`` > 0 keeps rank-deficient Σ factorable."""
    a = activations.double()
    mean = a.mean(dim=0)
    centred = a - mean
    cov = centred.T @ centred / a.shape[0]
    return Whitening(mean, torch.linalg.cholesky(cov + eps * torch.eye(a.shape[1], dtype=a.dtype)))


@dataclass(frozen=True)
class Constraints:
    """t is the argmax of P u + β iff Δ u + h ≥ 0 row-wise: Δ_v = P_t − P_v and h_v = β_t − β_v, v ≠ t."""

    delta: torch.Tensor
    offset: torch.Tensor

    @classmethod
    def for_target(cls, P: torch.Tensor, beta: torch.Tensor, target: int) -> Constraints:  # noqa: N803
        others = torch.arange(P.shape[0]) != target
        return cls(P[target] - P[others], beta[target] - beta[others])


@dataclass(frozen=True)
class Direction:
    """The unit direction d, how it was found, and ‖u*‖ when it is the shortest accepting vector u*/‖u*‖."""

    vector: torch.Tensor
    method: str
    sav_norm: float | None = None


def shortest_accepting_vector(constraints: Constraints) -> torch.Tensor | None:
    """The minimum-norm u with Δ u + h ≥ 0, or ``None`` when none is found (infeasible, or the check fails).

    Least-distance programming (Lawson & Hanson, ch. 23): with E = [Δᵀ; −hᵀ] and f = e_{d+1}, the non-negative
    least-squares residual ρ = Eλ − f gives u = −ρ[:d] / ρ[d]; ρ[d] ≈ 0 means the constraints are incompatible.
    """
    G = constraints.delta.double().numpy()  # noqa: N806
    h = constraints.offset.double().numpy()
    E = np.vstack([G.T, -h[None, :]])  # noqa: N806
    f = np.zeros(E.shape[0])
    f[-1] = 1.0
    try:
        lam, _ = optimize.nnls(E, f, maxiter=50 * E.shape[1])
    except RuntimeError:
        return None
    rho = E @ lam - f
    if rho[-1] > -1e-12:
        return None
    u = -rho[:-1] / rho[-1]
    slack = G @ u + h
    if slack.min() < -1e-7 * (1.0 + np.abs(h).max() + np.abs(G).sum(axis=1).max() * np.abs(u).max()):
        return None
    return torch.from_numpy(u)


def choose_direction(constraints: Constraints) -> Direction:
    """d = u*/‖u*‖ for the shortest accepting vector u*. Fallback, when u* is 0 (the target already wins at the
    mean) or not found: the direction Δ_v of the strongest competitor at the mean (smallest h_v)."""
    sav = shortest_accepting_vector(constraints)
    if sav is not None and float(sav.norm()) > 1e-12:
        norm = float(sav.norm())
        return Direction(sav / norm, "shortest accepting vector", norm)
    reason = "target is the argmax at the mean" if sav is not None else "no accepting vector found"
    row = constraints.delta[int(constraints.offset.argmin())].double()
    if float(row.norm()) == 0.0:
        row = torch.zeros_like(row)
        row[0] = 1.0
    return Direction(row / row.norm(), f"strongest competitor ({reason})")


def accepting_intervals(b: torch.Tensor, direction: torch.Tensor,
                        constraints: Constraints) -> tuple[torch.Tensor, torch.Tensor]:
    """For each orthogonal part b_j (rows of ``b``), the bounds [L_j, U_j] of the r for which t is the argmax of
    P(b_j + r d) + β: with c_v = b_j·Δ_v + h_v and e_v = d·Δ_v, L_j = max_{e_v>0} −c_v/e_v and
    U_j = min_{e_v<0} −c_v/e_v; a violated constraint with e_v = 0 empties the interval (L = +∞, U = −∞)."""
    c = b @ constraints.delta.T + constraints.offset
    e = constraints.delta @ direction
    up, down = e > 0, e < 0
    ratio = -c / torch.where(up | down, e, torch.ones_like(e))
    lower = torch.where(up, ratio, -math.inf).amax(dim=1)
    upper = torch.where(down, ratio, math.inf).amin(dim=1)
    blocked = ((c < 0) & ~(up | down)).any(dim=1)
    return torch.where(blocked, math.inf, lower), torch.where(blocked, -math.inf, upper)


def recombination_counts(u: torch.Tensor, direction: torch.Tensor,
                         constraints: Constraints) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample k of the whitened ``u [n, d]``: ``(as_j[k], as_i[k])``, the number of i with argmax t for
    b_k + r_i d, and the number of j with argmax t for b_j + r_k d. Both sum to the n² count.

    Sort r once; each count is two binary searches (boundary ties count as hits, see the docs)."""
    r = u @ direction
    b = u - r[:, None] * direction
    chunk = max(1, CHUNK_ELEMENTS // max(1, constraints.delta.shape[0]))
    bounds = [accepting_intervals(b[s:s + chunk], direction, constraints) for s in range(0, u.shape[0], chunk)]
    lower, upper = torch.cat([lo for lo, _ in bounds]), torch.cat([hi for _, hi in bounds])
    r_sorted = r.sort().values
    as_j = (torch.searchsorted(r_sorted, upper, right=True) - torch.searchsorted(r_sorted, lower)).clamp(min=0)
    nonempty = lower <= upper
    lower_sorted, upper_sorted = lower[nonempty].sort().values, upper[nonempty].sort().values
    as_i = torch.searchsorted(lower_sorted, r, right=True) - torch.searchsorted(upper_sorted, r)
    return as_j, as_i


def qld(activations: torch.Tensor, W_U: torch.Tensor, target_ids: tuple[int, ...],  # noqa: N803
        generator: torch.Generator, *, eps: float = 1e-5) -> FitResult:
    """p̂ = (1/n²) Σ_j Σ_i 1[argmax(P(b_j + r_i d) + β) = t], with a Hoeffding-projection standard error.

    Deterministic (``generator`` is unused). Single-token targets only."""
    if len(target_ids) != 1:
        raise LowprobError(f"QLD supports single-token targets only; this target has {len(target_ids)} tokens "
                           "(use gld, or one target per token)")
    n = activations.shape[0]
    whitening = whiten(activations, eps)
    u = whitening.apply(activations)
    P, beta = whitening.readout(W_U)  # noqa: N806
    constraints = Constraints.for_target(P, beta, target_ids[0])
    direction = choose_direction(constraints)
    as_j, as_i = recombination_counts(u, direction.vector, constraints)
    value = float(as_j.sum()) / n**2
    influence = (as_j + as_i).double() / n
    diagnostics: dict[str, Any] = {
        "n": n,
        "direction_method": direction.method,
        "sav_norm": direction.sav_norm,
        "nonempty_fraction": float((as_j > 0).double().mean()),
        "recombination_hits": int(as_j.sum()),
        "floor": 1 / n**2,
    }
    # no accepting recombination: the spread of zeros (0.0) says nothing; the estimator bounds the zero instead
    std_error = float(influence.std()) / math.sqrt(n) if value > 0 else None
    return FitResult(value=value, std_error=std_error, diagnostics=diagnostics)


class QLDOptions(ExtrapolationOptions):
    """Options of the QLD estimator."""

    eps: float = Field(default=1e-5, gt=0, description="ridge εI added to the covariance before its Cholesky factor")


class QLD(ExtrapolationEstimator):
    """QLD: activation extrapolation by recombining n² whitened activations (single-token targets); heuristic."""

    name = "qld"
    Options = QLDOptions
    capabilities = Capabilities(unbiased=False, consistent=False, has_error_bars=True)
    options: QLDOptions

    def fit(self) -> ExtrapolationFit:
        return functools.partial(qld, eps=self.options.eps)

    def check_problem(self, problem: Problem) -> None:
        super().check_problem(problem)
        if len(problem.target.token_ids) != 1:
            raise LowprobError(f"QLD supports single-token targets only; {problem.target.describe()} has "
                               f"{len(problem.target.token_ids)} tokens (use gld)")


@hookimpl
def register_extrapolations(registrar: Registrar) -> None:
    """Register the QLD fit."""
    registrar.add_extrapolation("qld", qld, description="quadratic logit decomposition (Wu & Hilton 2025)")


@hookimpl
def register_estimators(registrar: Registrar) -> None:
    """Register the QLD estimator."""
    registrar.add_estimator(QLD)
