"""The evaluation protocol of Wu & Hilton (2025) as pure functions: target bands and seeded selection, the
temperature grid, the budget scale, the log-space fits and the scores (the losses themselves are
:mod:`lowprob.core.losses`; see docs/protocol.md).

Everything here is numpy on plain arrays, with no model and no files, so every rule can be tested by hand.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from lowprob.core.errors import LowprobError
from lowprob.core.losses import itakura_saito_loss, squared_log_error

PAPER_BAND = (1e-9, 1e-5)
"""The paper's test band: 256 tokens with ground-truth probability in [1e-9, 1e-5]."""
PAPER_TUNING_BAND = (1e-5, 1e-3)
"""The paper's temperature-tuning band: 100 tokens in [1e-5, 1e-3]."""
PAPER_TEMPERATURES = (0.2, 5.0, 9)
"""The paper's temperature sweep: 9 values from 0.2 to 5, evenly spaced in log space."""

Floats = NDArray[np.float64]


def min_hits(max_rel_error: float) -> int:
    """Fewest ground-truth hits k whose binomial relative error √((1−p)/k) ≤ ``max_rel_error`` for any p.

    √((1−p)/k) ≤ √(1/k), so k ≥ 1/r² suffices: 12 hits for r = 0.3 (1/0.09 = 11.1).
    """
    if not 0 < max_rel_error < 1:
        raise LowprobError(f"max_rel_error must lie in (0, 1), got {max_rel_error}")
    return math.ceil(1 / max_rel_error**2 - 1e-9)


@dataclass(frozen=True)
class Band:
    """Ground-truth probabilities ``low ≤ p < high`` (half-open, so adjacent bands never share a token)."""

    low: float
    high: float

    def __post_init__(self) -> None:
        if not 0 < self.low < self.high <= 1:
            raise LowprobError(f"a band needs 0 < low < high ≤ 1, got [{self.low:g}, {self.high:g})")

    def contains(self, p: ArrayLike) -> NDArray[np.bool_]:
        """Which of ``p`` lie in the band."""
        p = np.asarray(p, dtype=np.float64)
        return (p >= self.low) & (p < self.high)

    def describe(self) -> str:
        return f"[{self.low:.3g}, {self.high:.3g})"


def derived_bands(samples: int, max_rel_error: float = 0.3, decades: float = 2.0,
                  tuning_decades: float = 2.0) -> tuple[Band, Band]:
    """The test band from a ground truth's sample count, and the tuning band right above it.

    The test band starts where a token has :func:`min_hits` expected hits (``low = min_hits / samples``) and
    spans ``decades`` orders of magnitude; the tuning band spans the next ``tuning_decades`` (the paper's
    bands are [1e-9, 1e-5) and [1e-5, 1e-3): 4 and 2 decades).
    """
    if samples < 1:
        raise LowprobError("a ground truth with no samples has no band")
    low = min_hits(max_rel_error) / samples
    high = low * 10**decades
    if high >= 1:
        raise LowprobError(f"with {samples} ground-truth samples a {decades:g}-decade test band from "
                           f"p = {low:.3g} leaves no room for a tuning band above it; give the bands explicitly")
    return Band(low, high), Band(high, min(high * 10**tuning_decades, 1.0))


@dataclass(frozen=True)
class Selection:
    """Test and tuning token ids of one (model, distribution), each in a seeded random order."""

    test: tuple[int, ...]
    tuning: tuple[int, ...]
    test_candidates: int
    tuning_candidates: int


def select_tokens(counts: ArrayLike, samples: int, band: Band, n: int, seed: int | Sequence[int], *,
                  min_count: int = 1, exclude: Sequence[int] = ()) -> tuple[tuple[int, ...], int]:
    """Up to ``n`` token ids with ``count / samples`` in ``band`` and at least ``min_count`` hits, drawn
    without replacement by a generator seeded with ``seed``; also returns how many tokens qualified.

    The candidates are sorted by id before the permutation, so the same seed and counts give the same tokens.
    """
    counts = np.asarray(counts, dtype=np.int64)
    ok = band.contains(counts / samples) & (counts >= min_count)
    ok[np.asarray(exclude, dtype=np.int64)] = False
    candidates = np.flatnonzero(ok)
    chosen = np.random.default_rng(seed).permutation(candidates)[:n]
    return tuple(int(t) for t in chosen), len(candidates)


def select_targets(counts: ArrayLike, samples: int, test_band: Band, tuning_band: Band, n_test: int,
                   n_tuning: int, seed: int | Sequence[int], max_rel_error: float = 0.3) -> Selection:
    """Seeded test tokens from ``test_band`` and disjoint tuning tokens from ``tuning_band``; every token has
    enough ground-truth hits for ``max_rel_error`` (:func:`min_hits`)."""
    k = min_hits(max_rel_error)
    rng = np.random.default_rng(seed)
    test_seed, tuning_seed = (int(s) for s in rng.integers(2**63, size=2))
    test, n_test_ok = select_tokens(counts, samples, test_band, n_test, test_seed, min_count=k)
    tuning, n_tuning_ok = select_tokens(counts, samples, tuning_band, n_tuning, tuning_seed, min_count=k,
                                        exclude=test)
    return Selection(test, tuning, n_test_ok, n_tuning_ok)


def temperature_grid(low: float = 0.2, high: float = 5.0, count: int = 9) -> tuple[float, ...]:
    """``count`` temperatures from ``low`` to ``high`` evenly spaced in log space (the paper: 0.2 … 5, 9)."""
    if count < 1 or not 0 < low <= high:
        raise LowprobError(f"a temperature grid needs count ≥ 1 and 0 < low ≤ high, got {count}, {low}, {high}")
    if count == 1:
        return (low,)
    return tuple(float(t) for t in np.geomspace(low, high, count))


def budget_scale(band_high: float, paper_band_high: float = PAPER_BAND[1]) -> float:
    """The factor on each method's paper budget that keeps budget × (top of the test band) as in the paper.

    The paper's 2^16 calls × 1e-5 ≈ 0.66 expected hits at the top of its band; a band ending at ``band_high``
    keeps that with ``paper_budget × paper_band_high / band_high`` calls.
    """
    if not band_high > 0:
        raise LowprobError(f"the top of the test band must be positive, got {band_high}")
    return paper_band_high / band_high


def scaled_option(base: float, scale: float, exponent: float) -> int:
    """An integer option (batch size, chains, burn-in) shrunk with the budget: ``round(base · scale^exponent)``,
    at least 1. Exponent 1 shrinks only that axis; ½ splits a shrink between two axes (e.g. chains and steps)."""
    return max(1, round(base * scale**exponent))


@dataclass(frozen=True)
class LogFit:
    """A monotone map of estimates: ``ln p̂' = slope · ln p̂ + intercept`` for p̂ > 0, and ``p̂' = floor`` for
    p̂ = 0 (``floor`` is ``None`` when the fit saw no zero estimate)."""

    slope: float
    intercept: float
    floor: float | None

    def apply(self, p_hat: ArrayLike) -> Floats:
        """The fitted estimates; a zero estimate stays 0 when the fit has no floor."""
        p_hat = _floats(p_hat)
        positive = p_hat > 0
        logs = np.log(np.where(positive, p_hat, 1.0))
        fitted = np.exp(self.slope * logs + self.intercept)
        return np.where(positive, fitted, self.floor if self.floor is not None else 0.0)


def fit_is(p: ArrayLike, p_hat: ArrayLike) -> LogFit:
    """The :class:`LogFit` minimising the mean IS loss of the fitted estimates, with ``slope ≥ 0``.

    The loss separates: zeros only see the floor, whose minimiser is the mean of their p (the IS loss is
    minimised by the arithmetic mean). For the positives, with x = ln p̂ the loss is convex in (a, b); for a
    fixed slope a the best intercept is b(a) = ln mean(p·e^{−a·x}), leaving the convex profile
    ln Σ p·e^{−a·x} + a·mean(x), minimised over a ≥ 0 by bisection on its derivative. When the positive
    estimates are all equal the slope is not identified and is set to 1.
    """
    p, p_hat = _checked(p, p_hat)
    zero = p_hat == 0
    floor = float(p[zero].mean()) if zero.any() else None
    if zero.all():
        return LogFit(1.0, 0.0, floor)
    lp, x = np.log(p[~zero]), np.log(p_hat[~zero])
    slope = 1.0 if np.ptp(x) < 1e-9 else _profile_minimiser(lp, x)
    return LogFit(slope, float(_log_mean_exp(lp - slope * x)), floor)


def fit_squared_log(p: ArrayLike, p_hat: ArrayLike) -> LogFit:
    """The :class:`LogFit` minimising the mean squared log error: least squares of ln p on ln p̂ with
    ``slope ≥ 0`` (slope 0 gives the mean of ln p), zeros at the geometric mean of their p."""
    p, p_hat = _checked(p, p_hat)
    zero = p_hat == 0
    floor = float(np.exp(np.log(p[zero]).mean())) if zero.any() else None
    if zero.all():
        return LogFit(1.0, 0.0, floor)
    lp, x = np.log(p[~zero]), np.log(p_hat[~zero])
    if np.ptp(x) < 1e-9:
        return LogFit(1.0, float(np.mean(lp - x)), floor)
    dx = x - x.mean()
    slope = max(0.0, float(np.dot(dx, lp - lp.mean()) / np.dot(dx, dx)))
    return LogFit(slope, float(lp.mean() - slope * x.mean()), floor)


@dataclass(frozen=True)
class Scores:
    """The losses of one method on one set of tokens (means over tokens), with the fits that produced them."""

    n: int
    zeros: int
    is_fit: float
    is_raw: float
    sq_log_fit: float
    sq_log_raw: float
    is_fit_se: float
    fit: LogFit
    sq_fit: LogFit


def score(p: ArrayLike, p_hat: ArrayLike) -> Scores:
    """Mean IS loss after :func:`fit_is` and without a fit, mean squared log error after
    :func:`fit_squared_log` and without; ``is_fit_se`` is the standard error of the fitted mean over tokens."""
    p, p_hat = _checked(p, p_hat)
    fit, sq_fit = fit_is(p, p_hat), fit_squared_log(p, p_hat)
    fitted = itakura_saito_loss(p, fit.apply(p_hat))
    se = float(fitted.std(ddof=1) / math.sqrt(len(p))) if len(p) > 1 else math.nan
    return Scores(n=len(p), zeros=int((p_hat == 0).sum()), is_fit=float(fitted.mean()),
                  is_raw=float(itakura_saito_loss(p, p_hat).mean()),
                  sq_log_fit=float(squared_log_error(p, sq_fit.apply(p_hat)).mean()),
                  sq_log_raw=float(squared_log_error(p, p_hat).mean()), is_fit_se=se, fit=fit, sq_fit=sq_fit)


@dataclass(frozen=True, order=True)
class TuningScore:
    """How one temperature did on the tuning tokens, compared in this order: how many tokens got no positive
    estimate (a zero, a failed or a missing run: each an infinite loss), then the mean IS loss of the rest,
    without a fit (a fit through a handful of tuning tokens would be exact and rank nothing)."""

    failures: int
    loss: float


def tuning_score(p: ArrayLike, p_hat: ArrayLike, planned: int) -> TuningScore:
    """The :class:`TuningScore` of the estimates ``p_hat`` that came back out of ``planned`` tuning runs."""
    p, p_hat = _floats(p), _floats(p_hat)
    positive = p_hat > 0
    loss = float(itakura_saito_loss(p[positive], p_hat[positive]).mean()) if positive.any() else math.inf
    return TuningScore(planned - int(positive.sum()), loss)


def best_temperature(scores: Mapping[float, TuningScore]) -> float:
    """The temperature with the best :class:`TuningScore`; ties go to the one closest to 1 in log space, then
    the lower."""
    if not scores:
        raise LowprobError("no temperatures to choose from")
    return min(scores, key=lambda t: (scores[t], abs(math.log(t)), t))


def _floats(a: ArrayLike) -> Floats:
    return np.asarray(a, dtype=np.float64)


def _checked(p: ArrayLike, p_hat: ArrayLike) -> tuple[Floats, Floats]:
    p, p_hat = _floats(p), _floats(p_hat)
    if p.shape != p_hat.shape or p.ndim != 1 or len(p) == 0:
        raise LowprobError(f"a fit needs two equal-length non-empty vectors, got shapes {p.shape} and {p_hat.shape}")
    if not (np.isfinite(p).all() and (p > 0).all()):
        raise LowprobError("ground-truth probabilities must be finite and positive")
    if not (np.isfinite(p_hat).all() and (p_hat >= 0).all()):
        raise LowprobError("estimates must be finite and non-negative")
    return p, p_hat


def _log_mean_exp(v: Floats) -> float:
    top = float(v.max())
    return top + math.log(float(np.mean(np.exp(v - top))))


def _profile_slope(lp: Floats, x: Floats, a: float) -> float:
    """d/da of ln Σ p·e^{−a·x} + a·mean(x): mean(x) minus the mean of x under weights ∝ p·e^{−a·x}."""
    v = lp - a * x
    w = np.exp(v - v.max())
    return float(x.mean() - np.dot(w, x) / w.sum())


def _profile_minimiser(lp: Floats, x: Floats) -> float:
    if _profile_slope(lp, x, 0.0) >= 0:
        return 0.0
    high = 1.0
    for _ in range(200):  # the slope tends to mean(x) − min(x) > 0 as a grows, so this ends
        if _profile_slope(lp, x, high) >= 0:
            break
        high *= 2
    low = 0.0
    for _ in range(200):
        mid = (low + high) / 2
        if _profile_slope(lp, x, mid) < 0:
            low = mid
        else:
            high = mid
        if high - low <= 1e-12 * high:
            break
    return (low + high) / 2
