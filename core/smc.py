"""Sequential Monte Carlo bookkeeping in log space: particle weights, effective sample size, resampling and the
unbiased estimate of a normalising constant, for any estimator that moves a population of particles.

An SMC run multiplies each particle's weight by an incremental weight at every step and, when the weights have
degenerated (ESS below a threshold), resamples: particles are copied in proportion to their weights, the mean
weight is banked into the running normalising constant and the weights are reset. The product of the banked
means and the final mean weight is an unbiased estimate Ẑ of Z (its log, averaged, is a lower bound on log Z).
A population whose weights are all zero (log −inf) is *dead*: its estimate is exactly 0, never NaN.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

import torch
from scipy import stats

from lowprob.core.errors import LowprobError, WeightError
from lowprob.core.random import Enumerator, categorical, uniform

Resampling = Literal["multinomial", "stratified", "systematic"]
RESAMPLING: tuple[Resampling, ...] = ("multinomial", "stratified", "systematic")


def log_mean_exp(log_w: torch.Tensor) -> float:
    """``log(mean(exp(log_w)))`` computed stably; ``-inf`` when every entry is ``-inf`` (or there is none)."""
    if log_w.numel() == 0:
        return -math.inf
    top = float(log_w.max())
    if top == -math.inf:
        return -math.inf
    return top + math.log(float(torch.exp(log_w.double() - top).mean()))


def normalized_weights(log_w: torch.Tensor) -> torch.Tensor:
    """Weights summing to 1 (float64); all zeros, not NaN, when every log weight is ``-inf``."""
    log_w = log_w.double()
    if log_w.numel() == 0 or float(log_w.max()) == -math.inf:
        return torch.zeros_like(log_w)
    return torch.softmax(log_w, dim=0)


def effective_sample_size(log_w: torch.Tensor) -> float:
    """Kish's ESS ``(Σw)²/Σw²`` in ``[1, N]``; 0 for a dead population (every weight zero)."""
    w = normalized_weights(log_w)
    total = float((w**2).sum())
    return 1.0 / total if total > 0 else 0.0


def resample(log_w: torch.Tensor, method: Resampling, generator: torch.Generator | Enumerator,
             keep: int | None = None) -> torch.Tensor:
    """Ancestor indices ``[N]``: each particle's expected number of copies is ``N·W_n`` (all three schemes).

    ``keep`` pins that particle's ancestor to itself (conditional SMC, multinomial only): the other ``N − 1``
    ancestors are drawn from all ``N`` particles. Zero-weight particles are never chosen.
    """
    n = log_w.numel()
    w = normalized_weights(log_w)
    if float(w.sum()) == 0:
        raise WeightError("cannot resample a dead population (every weight is zero)")
    if keep is not None:
        if method != "multinomial":
            raise LowprobError(f"conditional resampling needs multinomial resampling, not {method!r}")
        ancestors = torch.empty(n, dtype=torch.int64)
        others = [k for k in range(n) if k != keep]
        ancestors[others] = categorical(w, n - 1, generator) if others else torch.empty(0, dtype=torch.int64)
        ancestors[keep] = keep
        return ancestors
    if method == "multinomial":
        return categorical(w, n, generator)
    if method == "stratified":
        points = (torch.arange(n, dtype=torch.float64) + uniform((n,), generator, torch.float64)) / n
    elif method == "systematic":
        points = (torch.arange(n, dtype=torch.float64) + uniform((1,), generator, torch.float64)) / n
    else:
        raise LowprobError(f"unknown resampling scheme {method!r}; known: {', '.join(RESAMPLING)}")
    cdf = torch.cumsum(w, dim=0)
    cdf = cdf / cdf[-1]
    return torch.searchsorted(cdf, points, right=True).clamp(max=n - 1)


@dataclass(frozen=True)
class ParticleWeights:
    """The weights of a population and the log normalising constant banked at earlier resampling times.

    ``log_weights`` ``[N]`` (float64) accumulate since the last resampling; ``log_banked`` is the log of the
    product of the mean weights at the resampling times so far.
    """

    log_weights: torch.Tensor
    log_banked: float = 0.0
    resamples: int = 0
    min_ess_fraction: float = 1.0

    @staticmethod
    def start(n: int) -> ParticleWeights:
        """``n`` particles of weight 1."""
        if n < 1:
            raise LowprobError(f"an SMC population needs at least one particle, got {n}")
        return ParticleWeights(torch.zeros(n, dtype=torch.float64))

    @property
    def size(self) -> int:
        return int(self.log_weights.numel())

    @property
    def dead(self) -> bool:
        """Every weight is zero: the estimate is exactly 0 from here on."""
        return self.log_banked == -math.inf or float(self.log_weights.max()) == -math.inf

    @property
    def ess(self) -> float:
        return effective_sample_size(self.log_weights)

    @property
    def log_evidence(self) -> float:
        """log Ẑ: the banked constant times the current mean weight (``-inf`` for a dead population)."""
        return self.log_banked + log_mean_exp(self.log_weights) if not self.dead else -math.inf

    @property
    def evidence(self) -> float:
        """Ẑ, unbiased for Z; exactly 0 for a dead population."""
        return math.exp(self.log_evidence)

    def normalized(self) -> torch.Tensor:
        """The current normalised weights (zeros for a dead population)."""
        return normalized_weights(self.log_weights)

    def reweight(self, log_increments: torch.Tensor) -> ParticleWeights:
        """Multiply each weight by its incremental weight (``-inf`` stays ``-inf``; NaN is an error)."""
        inc = log_increments.to(torch.float64)
        new = torch.where(torch.isneginf(self.log_weights), -math.inf, self.log_weights + inc)
        if torch.isnan(new).any() or torch.isposinf(new).any():
            raise WeightError("an SMC incremental weight is NaN or +inf")
        return replace(self, log_weights=new,
                       min_ess_fraction=min(self.min_ess_fraction, effective_sample_size(new) / self.size))

    def resample_if_needed(self, threshold: float, method: Resampling, generator: torch.Generator | Enumerator,
                           keep: int | None = None) -> tuple[ParticleWeights, torch.Tensor | None]:
        """Resample when ESS < ``threshold``·N (always for ``threshold`` ≥ 1, never for 0 unless dead).

        Returns the new weights and the ancestor indices, or ``None`` when it did not resample. A dead
        population is not resampled; it stays dead with ``log_banked = -inf``.
        """
        if self.dead:
            return replace(self, log_banked=-math.inf), None
        if threshold < 1 and self.ess >= threshold * self.size:
            return self, None
        ancestors = resample(self.log_weights, method, generator, keep)
        banked = self.log_banked + log_mean_exp(self.log_weights)
        return ParticleWeights(torch.zeros_like(self.log_weights), banked, self.resamples + 1,
                               self.min_ess_fraction), ancestors


@dataclass(frozen=True)
class ReplicateSummary:
    """Independent SMC replicates combined: the estimate, its standard error and interval.

    ``low``/``high`` are ``None`` when there is nothing to build an interval from (one replicate with a
    positive estimate).
    """

    value: float
    std_error: float | None
    low: float | None
    high: float | None
    method: str


def combine_replicates(log_z: Sequence[float], sizes: Sequence[int], level: float = 0.95,
                       zero_upper: float = 1.0, zero_method: str = "trivial bound") -> ReplicateSummary:
    """Weighted mean ``Σ N_r Ẑ_r / Σ N_r`` of independent replicates (unbiased when the sizes ``N_r`` are fixed
    in advance), with a Student-t interval on R − 1 degrees of freedom.

    The standard error treats ``Var Ẑ_r ∝ 1/N_r``: ``σ̂² = Σ N_r (Ẑ_r − Ẑ)² / (R − 1)``, ``s.e. = σ̂/√(Σ N_r)``
    (equal sizes: the usual ``sd/√R``). When every replicate is 0 the value is 0 with the interval
    ``[0, zero_upper]`` (a valid bound the caller supplies; 1 is always valid for a probability).
    """
    if len(log_z) != len(sizes) or not log_z:
        raise LowprobError("need one size per replicate and at least one replicate")
    if not 0 < level < 1:
        raise LowprobError(f"confidence level must be in (0, 1), got {level}")
    if any(math.isnan(v) for v in log_z):
        raise WeightError("a replicate's log estimate is NaN")
    values = [math.exp(v) for v in log_z]
    total = sum(sizes)
    value = math.fsum(n * v for n, v in zip(sizes, values, strict=True)) / total
    r = len(values)
    if value == 0:
        return ReplicateSummary(0.0, None, 0.0, zero_upper, zero_method)
    if r < 2:
        return ReplicateSummary(value, None, None, None, "one replicate: no interval")
    var = math.fsum(n * (v - value) ** 2 for n, v in zip(sizes, values, strict=True)) / (r - 1)
    se = math.sqrt(var / total)
    half = float(stats.t.ppf(0.5 + level / 2, r - 1)) * se
    return ReplicateSummary(value, se, max(0.0, value - half), value + half, f"student-t over {r} replicates")


@dataclass(frozen=True)
class LogBound:
    """The mean of log Ẑ over independent runs: a stochastic bound on log Z (``-inf`` if any run was 0)."""

    mean: float
    std_error: float | None
    runs: int
    zero_runs: int

    @staticmethod
    def of(log_z: Sequence[float]) -> LogBound:
        zeros = sum(1 for v in log_z if v == -math.inf)
        n = len(log_z)
        if n == 0:
            raise LowprobError("a log-Z bound needs at least one run")
        if zeros:
            return LogBound(-math.inf, None, n, zeros)
        mean = math.fsum(log_z) / n
        se = math.sqrt(math.fsum((v - mean) ** 2 for v in log_z) / (n - 1) / n) if n > 1 else None
        return LogBound(mean, se, n, 0)


@dataclass(frozen=True)
class LogZBracket:
    """Bidirectional bounds: E[log Ẑ] of forward SMC ≤ log Z ≤ E[log Ẑ] of SMC driven by exact target samples.

    With the exact log Z known, the gaps are the divergences of the SMC proposal from the target in both
    directions (on the space of the whole particle system; for one particle, KL(q‖σ) and KL(σ‖q) of the
    sequential proposal); without it, ``width`` bounds their sum.
    """

    lower: LogBound
    upper: LogBound

    @property
    def width(self) -> float:
        return self.upper.mean - self.lower.mean

    def kl(self, log_z: float) -> tuple[float, float]:
        """``(log Z − lower, upper − log Z)``: the forward KL(q‖σ) and reverse KL(σ‖q) the bounds imply."""
        return log_z - self.lower.mean, self.upper.mean - log_z


def genealogy_relative_variance(log_weights: torch.Tensor, eve: torch.Tensor, resamples: int) -> float:
    """Lee & Whiteley's (2018) estimate of ``Var Ẑ / Ẑ²`` from one SMC run, for multinomial resampling at any
    (ESS-triggered) times (Du & Guyader 2021): ``1 − c + c·Σ_e S_e² / S²`` with ``c = (N/(N−1))^{k+1}`` after
    ``k`` resamplings, ``S_e`` the final weights of the particles descending from initial particle ``e``
    (``eve``, ``[N]``) and ``S`` their total. Without resampling it is the i.i.d. formula
    ``(N·Σw²/S² − 1)/(N − 1)``; once every particle shares one ancestor it is ``1`` (Ẑ may be off by its own
    size). ``Ẑ²`` times it is unbiased for ``Var Ẑ`` at fixed resampling times, so it can be negative (callers
    clip); 0 for a dead run or ``N = 1``."""
    n = log_weights.numel()
    if n < 2 or float(log_weights.max()) == -math.inf:
        return 0.0
    w = normalized_weights(log_weights)
    groups = torch.zeros(n, dtype=torch.float64).index_add_(0, eve.to(torch.int64), w)
    c = (n / (n - 1)) ** (resamples + 1)
    return 1.0 - c + c * float((groups**2).sum())


@dataclass(frozen=True)
class ParticleRun:
    """One SMC replicate: log Ẑ_r, its particles, the genealogy estimate of ``Var Ẑ_r / Ẑ_r²`` (clipped at 0)
    and the log of the largest single particle's share of Ẑ_r (``-inf`` for a dead run)."""

    log_z: float
    size: int
    relative_variance: float
    log_top: float

    @staticmethod
    def of(log_z: float, log_weights: torch.Tensor, eve: torch.Tensor, resamples: int) -> ParticleRun:
        top = (log_z + float(log_weights.max()) - float(torch.logsumexp(log_weights.double(), 0))
               if log_z > -math.inf else -math.inf)
        variance = max(0.0, genealogy_relative_variance(log_weights, eve, resamples))
        return ParticleRun(log_z, int(log_weights.numel()), variance, top)


def gamma_interval(value: float, variance: float, top: float, level: float) -> tuple[float, float]:
    """Fay & Feuer's (1997) gamma interval for a positive weighted sum of rare events with estimated variance
    ``variance`` and largest single term ``top``: the lower end is the gamma quantile of mean ``value`` and
    variance ``variance``; the upper end adds one more event of size ``top`` to both, so a few hits give a
    long right tail (where a heavy-tailed estimate's misses are) and never a normal interval's symmetric one."""
    alpha = (1 - level) / 2
    rel, share = variance / value**2, top / value  # in units of value: no under- or overflow at any depth
    low = value if rel <= 0 else value * float(stats.gamma.ppf(alpha, 1 / rel, scale=rel))
    mean, var = 1 + share, rel + share**2
    return low, value * float(stats.gamma.ppf(1 - alpha, mean**2 / var, scale=var / mean))


def combine_particle_runs(runs: Sequence[ParticleRun], level: float = 0.95, zero_upper: float = 1.0,
                          zero_method: str = "trivial bound") -> ReplicateSummary:
    """Size-weighted mean ``Σ N_r Ẑ_r / Σ N_r`` of independent replicates (unbiased when the sizes are fixed in
    advance) with the standard error from every particle, ``Σ_r (N_r/N)² Ẑ_r² V_r`` (``V_r`` the genealogy
    estimate of each run), and the gamma interval of :func:`gamma_interval` with the largest particle term as
    its one extra event. When every replicate is 0 the value is 0 with ``[0, zero_upper]``."""
    if not runs:
        raise LowprobError("need at least one replicate")
    if not 0 < level < 1:
        raise LowprobError(f"confidence level must be in (0, 1), got {level}")
    if any(math.isnan(r.log_z) for r in runs):
        raise WeightError("a replicate's log estimate is NaN")
    total = sum(r.size for r in runs)
    value = math.fsum(r.size * math.exp(r.log_z) for r in runs) / total
    if value == 0:
        return ReplicateSummary(0.0, None, 0.0, zero_upper, zero_method)
    variance = math.fsum((r.size / total * math.exp(r.log_z)) ** 2 * r.relative_variance for r in runs)
    top = max(r.size / total * math.exp(r.log_top) for r in runs)
    low, high = gamma_interval(value, variance, top, level)
    return ReplicateSummary(value, math.sqrt(variance), low, high,
                            f"gamma (Fay-Feuer) on the genealogy variance of {total} particles in {len(runs)} runs")
