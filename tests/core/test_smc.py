"""The SMC engine: log-space weights, ESS, the three resampling schemes, the unbiased normalising constant
(exactly, by enumerating every draw), replicate combination, bounds, and dead populations that never give NaN."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import pytest
import torch

from lowprob.core.errors import LowprobError, WeightError
from lowprob.core.random import Enumerator, categorical, expectation
from lowprob.core.smc import (
    RESAMPLING,
    LogBound,
    LogZBracket,
    ParticleRun,
    ParticleWeights,
    Resampling,
    combine_particle_runs,
    combine_replicates,
    effective_sample_size,
    gamma_interval,
    genealogy_relative_variance,
    log_mean_exp,
    normalized_weights,
    resample,
)

DEAD = torch.full((4,), -math.inf, dtype=torch.float64)


def test_log_space_helpers() -> None:
    log_w = torch.tensor([0.0, math.log(3.0), -math.inf], dtype=torch.float64)
    assert log_mean_exp(log_w) == pytest.approx(math.log(4 / 3))
    assert normalized_weights(log_w).tolist() == pytest.approx([0.25, 0.75, 0.0])
    assert effective_sample_size(log_w) == pytest.approx(1 / (0.25**2 + 0.75**2))
    assert effective_sample_size(torch.zeros(5, dtype=torch.float64)) == pytest.approx(5)
    assert log_mean_exp(torch.tensor([1000.0, 1000.0], dtype=torch.float64)) == pytest.approx(1000.0)


def test_all_zero_weights_give_zero_never_nan() -> None:
    assert log_mean_exp(DEAD) == -math.inf
    assert normalized_weights(DEAD).tolist() == [0.0] * 4
    assert effective_sample_size(DEAD) == 0.0
    weights = ParticleWeights.start(4).reweight(DEAD)
    assert weights.dead and weights.log_evidence == -math.inf and weights.evidence == 0.0
    after, ancestors = weights.resample_if_needed(0.5, "systematic", torch.Generator().manual_seed(0))
    assert ancestors is None and after.dead and after.evidence == 0.0
    again = after.reweight(torch.tensor([math.inf, 0.0, 1.0, -1.0], dtype=torch.float64))  # dead stays dead
    assert again.evidence == 0.0 and not torch.isnan(again.log_weights).any()
    with pytest.raises(WeightError):
        resample(DEAD, "multinomial", torch.Generator())


def test_nan_and_positive_infinite_increments_are_errors() -> None:
    weights = ParticleWeights.start(2)
    with pytest.raises(WeightError):
        weights.reweight(torch.tensor([float("nan"), 0.0]))
    with pytest.raises(WeightError):
        weights.reweight(torch.tensor([math.inf, 0.0]))


@pytest.mark.parametrize("method", ["stratified", "systematic"])
def test_low_variance_schemes_give_each_particle_floor_or_ceil_of_its_share(method: Resampling) -> None:
    w = torch.tensor([0.05, 0.3, 0.0, 0.45, 0.2], dtype=torch.float64)
    for seed in range(50):
        ancestors = resample(w.log(), method, torch.Generator().manual_seed(seed))
        counts = torch.bincount(ancestors, minlength=5).double()
        share = 5 * w
        assert counts[2] == 0  # zero weight: never chosen
        if method == "systematic":
            assert ((counts == share.floor()) | (counts == share.ceil())).all(), counts
        else:
            assert ((counts - share).abs() < 2).all(), counts


@pytest.mark.parametrize("method", RESAMPLING)
def test_expected_offspring_is_n_times_the_weight(method: Resampling) -> None:
    """Mean copies over 2000 seeded resamplings within 4 binomial standard errors of N·W_n."""
    w = torch.tensor([0.1, 0.6, 0.0, 0.3], dtype=torch.float64)
    runs = 2000
    counts = torch.zeros(4, dtype=torch.float64)
    for seed in range(runs):
        counts += torch.bincount(resample(w.log(), method, torch.Generator().manual_seed(seed)), minlength=4)
    mean = counts / runs
    se = torch.sqrt(4 * w * (1 - w) / runs)  # multinomial's; the low-variance schemes spread less
    assert ((mean - 4 * w).abs() <= 4 * se + 1e-12).all(), (mean, 4 * w)


def test_conditional_resampling_keeps_the_reference() -> None:
    log_w = torch.tensor([-50.0, 0.0, 0.0], dtype=torch.float64)
    for seed in range(20):
        ancestors = resample(log_w, "multinomial", torch.Generator().manual_seed(seed), keep=0)
        assert ancestors[0] == 0 and (ancestors[1:] > 0).all()
    with pytest.raises(LowprobError, match="multinomial"):
        resample(log_w, "systematic", torch.Generator(), keep=0)


def test_resampling_banks_the_mean_weight() -> None:
    weights = ParticleWeights.start(3).reweight(torch.tensor([0.0, math.log(2.0), math.log(6.0)]))
    assert weights.evidence == pytest.approx(3.0)
    after, ancestors = weights.resample_if_needed(1.0, "multinomial", torch.Generator().manual_seed(1))
    assert ancestors is not None and after.resamples == 1
    assert after.evidence == pytest.approx(3.0) and torch.equal(after.log_weights, torch.zeros(3, dtype=torch.float64))
    kept, none = after.resample_if_needed(0.5, "multinomial", torch.Generator())
    assert none is None and kept is after  # equal weights: ESS = N, no resampling
    never, none = weights.resample_if_needed(0.0, "multinomial", torch.Generator())
    assert none is None and never is weights


def _chain_smc(enumerator: Enumerator, threshold: float) -> float:
    """A generic two-step SMC for Z = Σ_{a,b} μ(a)·g1(a)·K(b|a)·g2(a,b) on three states, proposing from μ and K:
    two particles, multinomial resampling when ESS < threshold·N."""
    mu = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    kernel = torch.tensor([[0.6, 0.3, 0.1], [0.2, 0.2, 0.6], [0.1, 0.8, 0.1]], dtype=torch.float64)
    g1 = torch.tensor([0.2, 1.0, 3.0], dtype=torch.float64)
    g2 = torch.tensor([[1.0, 0.0, 2.0], [0.5, 0.5, 0.0], [0.0, 4.0, 1.0]], dtype=torch.float64)
    a = categorical(mu, 2, enumerator)
    weights = ParticleWeights.start(2).reweight(g1[a].log())
    weights, ancestors = weights.resample_if_needed(threshold, "multinomial", enumerator)
    if ancestors is not None:
        a = a[ancestors]
    b = categorical(kernel[a], 1, enumerator)[:, 0]
    return weights.reweight(g2[a, b].log()).evidence


@pytest.mark.parametrize("threshold", [1.0, 0.9, 0.0])
def test_the_estimate_is_exactly_unbiased(threshold: float) -> None:
    """Every outcome of every draw enumerated: E[Ẑ] equals Z to rounding, with and without resampling."""
    mu = [0.5, 0.3, 0.2]
    kernel = [[0.6, 0.3, 0.1], [0.2, 0.2, 0.6], [0.1, 0.8, 0.1]]
    g1 = [0.2, 1.0, 3.0]
    g2 = [[1.0, 0.0, 2.0], [0.5, 0.5, 0.0], [0.0, 4.0, 1.0]]
    exact = math.fsum(mu[a] * g1[a] * kernel[a][b] * g2[a][b] for a in range(3) for b in range(3))
    result = expectation(lambda e: _chain_smc(e, threshold), max_paths=10_000)
    assert result.mass == pytest.approx(1.0, abs=1e-12)
    assert result.value == pytest.approx(exact, rel=1e-12)


def test_dropping_the_banked_mean_is_biased(monkeypatch: pytest.MonkeyPatch) -> None:
    """The exact check has teeth: forgetting the mean weight banked at resampling changes E[Ẑ]."""
    exact = expectation(lambda e: _chain_smc(e, 0.0), 10_000).value
    original = ParticleWeights.resample_if_needed

    def no_bank(self: ParticleWeights, *args: Any, **kwargs: Any) -> tuple[ParticleWeights, torch.Tensor | None]:
        new, ancestors = original(self, *args, **kwargs)
        return (replace(new, log_banked=0.0) if ancestors is not None else new), ancestors

    monkeypatch.setattr(ParticleWeights, "resample_if_needed", no_bank)
    biased = expectation(lambda e: _chain_smc(e, 1.0), 10_000).value
    assert abs(biased - exact) > 0.05 * exact


def _chain_smc_variance(enumerator: Enumerator, threshold: float, extra: int = 1) -> float:
    """``Ẑ² · V`` of :func:`_chain_smc`'s run, V the genealogy estimate (its exponent ``resamples + extra``)."""
    mu = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    kernel = torch.tensor([[0.6, 0.3, 0.1], [0.2, 0.2, 0.6], [0.1, 0.8, 0.1]], dtype=torch.float64)
    g1 = torch.tensor([0.2, 1.0, 3.0], dtype=torch.float64)
    g2 = torch.tensor([[1.0, 0.0, 2.0], [0.5, 0.5, 0.0], [0.0, 4.0, 1.0]], dtype=torch.float64)
    a, eve = categorical(mu, 2, enumerator), torch.arange(2)
    weights = ParticleWeights.start(2).reweight(g1[a].log())
    weights, ancestors = weights.resample_if_needed(threshold, "multinomial", enumerator)
    if ancestors is not None:
        a, eve = a[ancestors], eve[ancestors]
    b = categorical(kernel[a], 1, enumerator)[:, 0]
    final = weights.reweight(g2[a, b].log())
    relative = genealogy_relative_variance(final.log_weights, eve, final.resamples + extra - 1)
    return final.evidence**2 * relative


@pytest.mark.parametrize("threshold", [1.0, 0.0])
def test_the_genealogy_variance_is_exactly_unbiased(threshold: float) -> None:
    """Lee & Whiteley (2018): E[Ẑ²·V] = Var Ẑ, every draw enumerated, resampling always or never; with the
    exponent one too small (ignoring the resampling) it is biased."""
    mean = expectation(lambda e: _chain_smc(e, threshold), max_paths=10_000).value
    second = expectation(lambda e: _chain_smc(e, threshold) ** 2, max_paths=10_000).value
    estimate = expectation(lambda e: _chain_smc_variance(e, threshold), max_paths=10_000).value
    assert estimate == pytest.approx(second - mean**2, rel=1e-10)
    if threshold == 1.0:
        wrong = expectation(lambda e: _chain_smc_variance(e, threshold, extra=0), max_paths=10_000).value
        assert abs(wrong - (second - mean**2)) > 0.1 * (second - mean**2)


def test_genealogy_variance_without_resampling_is_the_iid_formula() -> None:
    w = torch.tensor([0.5, 0.0, 2.0, 1.5], dtype=torch.float64)
    iid = float(w.var() / 4) / float(w.mean()) ** 2  # the sample variance of the mean, relative
    assert genealogy_relative_variance(w.log(), torch.arange(4), 0) == pytest.approx(iid, rel=1e-12)
    assert genealogy_relative_variance(w.log(), torch.zeros(4, dtype=torch.int64), 2) == pytest.approx(1.0)
    assert genealogy_relative_variance(DEAD, torch.arange(4), 0) == 0.0


def test_gamma_interval_is_skewed_and_normal_in_the_limit() -> None:
    """One hit of weight 1: [0.025, 5.57] (the gamma quantiles of shapes 1 and 2), far to the right of
    the normal ±1.96; with many small terms the interval approaches the normal one."""
    low, high = gamma_interval(1.0, 1.0, 1.0, 0.95)
    assert low == pytest.approx(0.0253, abs=1e-3) and high == pytest.approx(5.572, abs=1e-3)
    low, high = gamma_interval(1.0, 1e-4, 1e-4, 0.95)
    assert low == pytest.approx(1 - 1.96e-2, abs=1e-3) and high == pytest.approx(1 + 1.96e-2, abs=1e-3)
    runs = [ParticleRun(math.log(0.2), 10, 0.25, math.log(0.05)), ParticleRun(math.log(0.4), 30, 0.04, math.log(0.02))]
    summary = combine_particle_runs(runs)
    assert summary.value == pytest.approx((10 * 0.2 + 30 * 0.4) / 40)
    assert summary.std_error == pytest.approx(math.sqrt((0.25 * 0.2) ** 2 * 0.25 + (0.75 * 0.4) ** 2 * 0.04))
    assert summary.low is not None and summary.high is not None and summary.low < summary.value < summary.high
    zero = combine_particle_runs([ParticleRun(-math.inf, 5, 0.0, -math.inf)], zero_upper=0.01, zero_method="draws")
    assert (zero.value, zero.std_error, zero.low, zero.high, zero.method) == (0.0, None, 0.0, 0.01, "draws")


def test_combining_replicates() -> None:
    log_z = [math.log(v) for v in (0.1, 0.3, 0.2, 0.2)]
    summary = combine_replicates(log_z, [10] * 4)
    assert summary.value == pytest.approx(0.2)
    assert summary.std_error == pytest.approx(math.sqrt(((0.1**2 + 0.1**2) / 3) / 4))
    assert summary.low is not None and summary.high is not None and summary.low < 0.2 < summary.high
    assert "student-t" in summary.method
    weighted = combine_replicates([math.log(0.1), math.log(0.4)], [30, 10])
    assert weighted.value == pytest.approx((30 * 0.1 + 10 * 0.4) / 40)
    zero = combine_replicates([-math.inf] * 3, [5] * 3, zero_upper=0.01, zero_method="pilot")
    assert (zero.value, zero.std_error, zero.low, zero.high, zero.method) == (0.0, None, 0.0, 0.01, "pilot")
    single = combine_replicates([math.log(0.2)], [8])
    assert single.value == pytest.approx(0.2) and single.std_error is None and single.low is None
    with pytest.raises(WeightError):
        combine_replicates([float("nan")], [1])


def test_log_bounds_and_implied_divergences() -> None:
    lower = LogBound.of([-3.0, -2.0, -1.0])
    assert (lower.mean, lower.runs, lower.zero_runs) == (-2.0, 3, 0)
    assert lower.std_error == pytest.approx(1 / math.sqrt(3))
    assert LogBound.of([-1.0, -math.inf]).mean == -math.inf
    bracket = LogZBracket(lower, LogBound.of([0.0, 0.0]))
    assert bracket.width == 2.0
    assert bracket.kl(-0.5) == (1.5, 0.5)
