"""The evaluation protocol's pure functions: hand-computed losses and fits, bands, seeded target selection."""

import math

import numpy as np
import pytest

from lowprob.core.errors import LowprobError
from lowprob.core.losses import itakura_saito_loss, squared_log_error
from lowprob.protocol import (
    Band,
    LogFit,
    TuningScore,
    best_temperature,
    budget_scale,
    derived_bands,
    fit_is,
    fit_squared_log,
    min_hits,
    scaled_option,
    score,
    select_targets,
    temperature_grid,
    tuning_score,
)


def _l(p: float, q: float) -> float:
    return p / q - math.log(p / q) - 1


def test_min_hits_for_relative_error() -> None:
    assert min_hits(0.3) == 12  # 1/0.09 = 11.1
    assert min_hits(0.5) == 4
    assert min_hits(0.1) == 100
    with pytest.raises(LowprobError):
        min_hits(0)


def test_band_is_half_open() -> None:
    band = Band(1e-5, 1e-3)
    assert band.contains([1e-5, 5e-4, 1e-3, 9e-6]).tolist() == [True, True, False, False]
    with pytest.raises(LowprobError, match="0 < low < high"):
        Band(1e-3, 1e-5)


def test_derived_bands_follow_the_hit_rule() -> None:
    test, tuning = derived_bands(2**20, max_rel_error=0.3, decades=2, tuning_decades=2)
    assert test.low == pytest.approx(12 / 2**20)
    assert test.high == pytest.approx(1200 / 2**20)
    assert (tuning.low, tuning.high) == (test.high, pytest.approx(120_000 / 2**20))
    assert derived_bands(100_000, decades=2, tuning_decades=5)[1].high == 1.0  # clipped at 1
    with pytest.raises(LowprobError, match="no room for a tuning band"):
        derived_bands(1000, decades=2)


def test_is_loss_hand_computed() -> None:
    assert itakura_saito_loss([1e-4, 2e-6], [1e-4, 2e-6]).tolist() == [0.0, 0.0]
    assert itakura_saito_loss([2e-5], [1e-5])[0] == pytest.approx(2 - math.log(2) - 1)
    assert itakura_saito_loss([1e-5], [2e-5])[0] == pytest.approx(0.5 + math.log(2) - 1)
    assert itakura_saito_loss([1e-5], [0.0])[0] == math.inf


def test_squared_log_error_hand_computed() -> None:
    assert squared_log_error([1e-4], [1e-5])[0] == pytest.approx(math.log(10) ** 2)
    assert squared_log_error([1e-4], [0.0])[0] == math.inf


def test_fit_recovers_a_power_law_and_a_scale() -> None:
    p = np.array([math.exp(-2), math.exp(-4), math.exp(-7)])
    fit = fit_is(p, p**2)  # ln p = ½ ln p̂
    assert (fit.slope, fit.intercept) == (pytest.approx(0.5, abs=1e-9), pytest.approx(0.0, abs=1e-9))
    assert score(p, p**2).is_fit == pytest.approx(0.0, abs=1e-12)
    fit = fit_is(p, 10 * p)
    assert (fit.slope, fit.intercept) == (pytest.approx(1.0, abs=1e-9), pytest.approx(-math.log(10), abs=1e-9))
    sq = fit_squared_log(p, p**2)
    assert (sq.slope, sq.intercept) == (pytest.approx(0.5), pytest.approx(0.0, abs=1e-12))


def test_anticorrelated_estimates_get_slope_zero_and_the_mean() -> None:
    p, q = [1e-4, 4e-4], [1e-3, 1e-5]
    fit = fit_is(p, q)
    assert fit.slope == 0.0
    assert fit.apply(q).tolist() == pytest.approx([2.5e-4, 2.5e-4])
    assert score(p, q).is_fit == pytest.approx((_l(1e-4, 2.5e-4) + _l(4e-4, 2.5e-4)) / 2)
    sq = fit_squared_log(p, q)
    assert sq.slope == 0.0 and math.exp(sq.intercept) == pytest.approx(2e-4)  # geometric mean


def test_zero_estimates_get_a_fitted_floor() -> None:
    p, q = [1e-4, 3e-4, 2e-3], [0.0, 0.0, 5e-3]
    fit = fit_is(p, q)
    assert fit.floor == pytest.approx(2e-4)  # mean of the zeros' ground truth
    assert fit.slope == 1.0  # one positive estimate: slope not identified
    assert fit.apply(q).tolist() == pytest.approx([2e-4, 2e-4, 2e-3])
    s = score(p, q)
    assert (s.n, s.zeros) == (3, 2)
    assert s.is_fit == pytest.approx((_l(1e-4, 2e-4) + _l(3e-4, 2e-4)) / 3)
    assert s.is_raw == math.inf and s.sq_log_raw == math.inf
    assert fit_squared_log(p, q).floor == pytest.approx(math.sqrt(3e-8))
    everything_zero = fit_is(p, [0.0, 0.0, 0.0])
    assert everything_zero.floor == pytest.approx(np.mean(p))
    assert LogFit(1.0, 0.0, None).apply([0.0, 1e-3]).tolist() == pytest.approx([0.0, 1e-3])


def test_fit_is_a_minimum_of_the_mean_loss() -> None:
    rng = np.random.default_rng(3)
    p = 10 ** rng.uniform(-7, -4, 40)
    q = p**0.7 * 10 ** rng.normal(0, 0.5, 40)
    fit = fit_is(p, q)
    best = itakura_saito_loss(p, fit.apply(q)).mean()
    for da, db in ((1e-3, 0), (-1e-3, 0), (0, 1e-3), (0, -1e-3)):
        moved = LogFit(fit.slope + da, fit.intercept + db, None)
        assert itakura_saito_loss(p, moved.apply(q)).mean() > best


def test_fit_rejects_bad_inputs() -> None:
    with pytest.raises(LowprobError, match="positive"):
        fit_is([0.0, 1e-3], [1e-3, 1e-3])
    with pytest.raises(LowprobError, match="non-negative"):
        fit_is([1e-3], [-1.0])
    with pytest.raises(LowprobError, match="equal-length"):
        fit_is([1e-3], [1e-3, 1e-3])


def _counts() -> tuple[np.ndarray, int]:
    rng = np.random.default_rng(0)
    samples = 2**20
    counts = np.zeros(4096, dtype=np.int64)
    counts[:4000] = (10 ** rng.uniform(-7, -1.5, 4000) * samples).astype(np.int64)
    counts[4000] = samples - counts.sum()
    return counts, samples


def test_selection_is_reproducible_by_seed_disjoint_and_in_band() -> None:
    counts, samples = _counts()
    test_band, tuning_band = derived_bands(samples)
    a = select_targets(counts, samples, test_band, tuning_band, 50, 20, seed=7)
    assert a == select_targets(counts, samples, test_band, tuning_band, 50, 20, seed=7)
    assert a.test != select_targets(counts, samples, test_band, tuning_band, 50, 20, seed=8).test
    assert (len(a.test), len(a.tuning)) == (50, 20) and not set(a.test) & set(a.tuning)
    assert test_band.contains(counts[list(a.test)] / samples).all()
    assert tuning_band.contains(counts[list(a.tuning)] / samples).all()
    assert (counts[list(a.test)] >= 12).all()


def test_selection_takes_every_candidate_and_stays_disjoint_when_bands_overlap() -> None:
    counts, samples = _counts()
    band = Band(1e-4, 1e-3)
    s = select_targets(counts, samples, band, band, 10_000, 10_000, seed=0)
    assert len(s.test) == s.test_candidates == int(band.contains(counts / samples).sum())
    assert s.tuning == () and s.tuning_candidates == 0
    low = Band(1e-9, 1e-5)  # below 12 hits in 2^20 samples: only tokens with enough hits qualify
    assert all(counts[t] >= 12 for t in select_targets(counts, samples, low, band, 100, 1, seed=0).test)


def test_temperature_grid_is_the_papers() -> None:
    grid = temperature_grid()
    assert len(grid) == 9 and grid[0] == pytest.approx(0.2) and grid[-1] == pytest.approx(5.0)
    assert grid == pytest.approx([5 ** (k / 4) for k in range(-4, 5)])  # where the paper's tuned values lie
    assert temperature_grid(1.0, 1.0, 1) == (1.0,)


def test_budget_scale_keeps_budget_times_band_top() -> None:
    assert budget_scale(1e-3) == pytest.approx(0.01)
    assert 2**16 * budget_scale(1e-3) * 1e-3 == pytest.approx(2**16 * 1e-5)
    assert scaled_option(32, 0.01, 0.5) == 3
    assert scaled_option(1024, 0.01, 1.0) == 10
    assert scaled_option(256, 1e-6, 1.0) == 1


def test_tuning_score_counts_failures_first_then_the_unfitted_loss() -> None:
    score_ = tuning_score([1e-3, 2e-3, 4e-3], [2e-3, 0.0, 4e-3], planned=4)  # one zero, one run missing
    assert score_ == TuningScore(2, pytest.approx((_l(1e-3, 2e-3) + 0.0) / 2))
    assert tuning_score([], [], planned=3) == TuningScore(3, math.inf)
    assert TuningScore(0, 5.0) < TuningScore(1, 0.1) < TuningScore(1, 0.2)


def test_best_temperature_breaks_ties_towards_one() -> None:
    def s(loss: float, failures: int = 0) -> TuningScore:
        return TuningScore(failures, loss)

    assert best_temperature({0.5: s(0.3), 1.0: s(0.2), 2.0: s(0.25)}) == 1.0
    assert best_temperature({0.5: s(0.1), 2.0: s(0.1), 4.0: s(0.1)}) == 0.5
    assert best_temperature({0.2: s(0.01, failures=1), 5.0: s(1.0)}) == 5.0
