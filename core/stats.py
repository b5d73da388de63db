"""Confidence intervals used by estimators; all take a confidence ``level`` such as 0.95."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from scipy import optimize, stats

from lowprob.core.errors import LowprobError


def _check_level(level: float) -> None:
    if not 0 < level < 1:
        raise LowprobError(f"confidence level must be in (0, 1), got {level}")


def clopper_pearson(hits: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Exact (conservative) binomial interval for ``hits`` successes in ``n`` trials.

    With zero hits the lower end is 0 and the upper end is ``1 - (alpha/2)^(1/n)``.
    """
    _check_level(level)
    if n <= 0 or not 0 <= hits <= n:
        raise LowprobError(f"need 0 <= hits <= n and n > 0, got hits={hits}, n={n}")
    alpha = 1 - level
    low = 0.0 if hits == 0 else float(stats.beta.ppf(alpha / 2, hits, n - hits + 1))
    high = 1.0 if hits == n else float(stats.beta.ppf(1 - alpha / 2, hits + 1, n - hits))
    return low, high


def wilson(hits: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval (not conservative; better centred than Clopper–Pearson for moderate n)."""
    _check_level(level)
    if n <= 0 or not 0 <= hits <= n:
        raise LowprobError(f"need 0 <= hits <= n and n > 0, got hits={hits}, n={n}")
    z = float(stats.norm.ppf(0.5 + level / 2))
    p = hits / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def normal_interval(value: float, std_error: float, level: float = 0.95) -> tuple[float, float]:
    """``value ± z·std_error``, clipped below at 0 (probabilities are non-negative)."""
    _check_level(level)
    z = float(stats.norm.ppf(0.5 + level / 2))
    return max(0.0, value - z * std_error), value + z * std_error


def importance_sampling_interval(value: float, std_error: float | None, hits: int, samples: int,
                                 log_max_weight: float, level: float = 0.95) -> tuple[float, float, str]:
    """``(low, high, method)`` for an importance-sampling estimate p̂ = mean(w·1[hit]) with x ~ q (one fixed q).

    With hits: the normal interval. With none: p = E_q[w·1[hit]] ≤ W·Pr_q[hit] for W the largest possible
    weight, so the exact Clopper–Pearson bound on Pr_q[hit], scaled by W (capped at 1), bounds p.
    """
    if hits:
        low, high = normal_interval(value, std_error or 0.0, level)
        return low, high, "normal"
    return 0.0, adaptive_zero_hit_bound([(samples, log_max_weight)], level), "clopper-pearson x max weight"


def adaptive_zero_hit_bound(batches: Sequence[tuple[int, float]], level: float = 0.95) -> float:
    """Upper confidence bound on p when adaptive importance sampling saw no hit: ``batches`` holds, per batch,
    its draws n_b and the log of its proposal's largest weight W_b = max_x D(x)/q_b(x), fixed before it drew.

    p = E_{q_b}[w·1[hit]] ≤ W_b·Pr_{q_b}[hit], so each draw of batch b hits with probability at least p/W_b
    whatever came before, and Pr[no hit] ≤ Π_b (1 − p/W_b)^{n_b} (a non-negative martingale argument covers
    the adaptivity). The bound solves Π_b (1 − p/W_b)^{n_b} = (1 − level)/2; with every W_b = 1 (q = D) it is
    the exact Clopper–Pearson bound, and one batch of n_b draws from D never lets it exceed theirs.
    """
    _check_level(level)
    log_tail = math.log((1 - level) / 2)
    counts = [(n, math.exp(-log_w)) for n, log_w in batches if n > 0]

    def log_no_hit(p: float) -> float:
        return math.fsum(n * math.log1p(-p * inverse) if p * inverse < 1 else -math.inf for n, inverse in counts)

    if not counts or log_no_hit(1.0) >= log_tail:
        return 1.0
    return float(optimize.brentq(lambda p: log_no_hit(p) - log_tail, 0.0, 1.0, xtol=1e-300, rtol=1e-12))


@dataclass(frozen=True)
class WeightTally:
    """Running sums over importance-sampling draws — weights w and weighted hits w·1[hit] — so memory does
    not grow with the number of samples."""

    samples: int = 0
    hits: int = 0
    sum_w: float = 0.0
    sum_w2: float = 0.0
    sum_wy: float = 0.0
    sum_wy2: float = 0.0
    max_wy: float = 0.0

    def add(self, w: torch.Tensor, hit: torch.Tensor) -> WeightTally:
        """The tally after a batch of weights ``w`` (float64) with boolean ``hit``."""
        wy = torch.where(hit, w, 0.0)
        return replace(self, samples=self.samples + int(w.numel()), hits=self.hits + int(hit.sum()),
                       sum_w=self.sum_w + float(w.sum()), sum_w2=self.sum_w2 + float((w**2).sum()),
                       sum_wy=self.sum_wy + float(wy.sum()), sum_wy2=self.sum_wy2 + float((wy**2).sum()),
                       max_wy=max(self.max_wy, float(wy.max())) if wy.numel() else self.max_wy)

    @property
    def value(self) -> float:
        """p̂ = mean of w·1[hit]."""
        return self.sum_wy / self.samples if self.samples else 0.0

    @property
    def std_error(self) -> float | None:
        """Sample standard deviation of w·1[hit] over √N; ``None`` without hits or before two samples."""
        if self.samples < 2 or self.hits == 0:
            return None
        n = self.samples
        return math.sqrt(max(0.0, (self.sum_wy2 - self.sum_wy**2 / n) / (n - 1)) / n)

    def diagnostics(self) -> dict[str, float]:
        """Effective sample sizes (Σw)²/Σw² of all weights and of the hit weights, the largest hit weight's
        share of Σ w·1[hit], and the mean weight (≈ 1 when the proposal covers D)."""
        return {
            "effective_sample_size": self.sum_w**2 / self.sum_w2 if self.sum_w2 else 0.0,
            "hit_effective_sample_size": self.sum_wy**2 / self.sum_wy2 if self.hits else 0.0,
            "max_weight_share": self.max_wy / self.sum_wy if self.hits else 0.0,
            "mean_weight": self.sum_w / self.samples if self.samples else 0.0,
        }
