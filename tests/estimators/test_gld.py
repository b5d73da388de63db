"""GLD on synthetic activations whose logit margin is exactly Gaussian: p̂ = Φ(μ/σ) within its sampling error."""

import math

import pytest
import torch
from scipy import stats

from lowprob.core.errors import LowprobError
from lowprob.plugins.builtin.gld import gld, logit_margin


def _gaussian_margin(mu: float, sigma: float, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """V = 2, d = 2: logit 1 − logit 0 = a₀ ~ N(mu, sigma²), so z for target 1 is exactly Gaussian."""
    g = torch.Generator().manual_seed(seed)
    activations = torch.randn(n, 2, generator=g, dtype=torch.float64) * torch.tensor([sigma, 1.0]) \
        + torch.tensor([mu, 0.0])
    W_U = torch.tensor([[0.0, 1.0], [1.0, 1.0]], dtype=torch.float64)  # noqa: N806
    return activations, W_U


@pytest.mark.parametrize(("mu", "sigma", "seed"), [(-2.0, 1.0, 0), (-3.0, 0.5, 1), (-1.0, 2.0, 2)])
def test_matches_the_analytic_gaussian_tail(mu: float, sigma: float, seed: int) -> None:
    n = 20_000
    result = gld(*_gaussian_margin(mu, sigma, n, seed), (1,), torch.Generator())
    exact = float(stats.norm.cdf(mu / sigma))
    # 4 delta-method standard errors of log p̂ (the reported s.e. divided by p̂)
    assert result.std_error is not None
    tolerance = 4 * result.std_error / result.value
    assert abs(math.log(result.value) - math.log(exact)) <= tolerance
    assert abs(result.diagnostics["mu"] - mu) <= 4 * sigma / math.sqrt(n)
    assert abs(result.diagnostics["sigma"] - sigma) <= 4 * sigma / math.sqrt(2 * n)


def test_reported_standard_error_matches_the_spread_of_replicates() -> None:
    values = [gld(*_gaussian_margin(-2.0, 1.0, 2000, seed), (1,), torch.Generator()) for seed in range(200)]
    spread = float(torch.tensor([v.value for v in values]).std())
    reported = sum(v.std_error or 0.0 for v in values) / len(values)
    assert 0.8 < reported / spread < 1.25


def test_tiny_probabilities_are_finite_and_positive() -> None:
    result = gld(*_gaussian_margin(-8.0, 1.0, 4096, 3), (1,), torch.Generator())
    assert 0.0 < result.value < 1e-12
    assert math.isfinite(result.diagnostics["log10_value"])
    assert result.std_error is not None and math.isfinite(result.std_error)


def test_set_margin_is_max_over_the_set_minus_max_over_the_rest() -> None:
    logits = torch.tensor([[1.0, 5.0, 2.0, 4.0], [3.0, 0.0, 1.0, 2.0]])
    assert torch.equal(logit_margin(logits, (1, 2)), torch.tensor([1.0, -2.0]))
    with pytest.raises(LowprobError, match="outside the target"):
        logit_margin(logits, (0, 1, 2, 3))


def test_constant_margin_gives_a_step() -> None:
    activations = torch.ones(10, 2, dtype=torch.float64)
    W_U = torch.tensor([[0.0, 1.0], [0.0, 0.0]], dtype=torch.float64)  # noqa: N806 - logit 1 always wins by 1
    result = gld(activations, W_U, (1,), torch.Generator())
    assert (result.value, result.std_error) == (1.0, None)


@pytest.mark.parametrize("scale", [1e-9, 1e-10, 1e-12, 1e-14])
def test_a_nearly_constant_losing_margin_is_zero_without_overflow(scale: float) -> None:
    """Issue 12 (20): a constant input gives a margin of −7 with float noise of 1e-9 (z-score ≈ −1e10): the
    tail underflows to 0 — no OverflowError, and no standard error for the zero."""
    activations = torch.ones(64, 2, dtype=torch.float64)
    activations[:, 0] += scale * torch.randn(64, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    W_U = torch.tensor([[0.0, 1.0], [-5.0, 1.0]], dtype=torch.float64)  # noqa: N806 - logit 0 loses by 7
    result = gld(activations, W_U, (0,), torch.Generator())
    assert result.value == 0.0 and result.std_error is None
    assert result.diagnostics["log10_value"] < -1e10


def test_the_delta_method_ratio_is_the_mills_ratio_deep_in_the_tail() -> None:
    """s.e.(log p̂) uses φ(m)/Φ(m), which tends to −m·(1 + 1/m²) for m → −∞ (here m ≈ −30, p̂ ≈ 1e-197)."""
    activations, W_U = _gaussian_margin(-30.0, 1.0, 4096, 4)  # noqa: N806
    result = gld(activations, W_U, (1,), torch.Generator())
    m = result.diagnostics["z_score"]
    assert result.value > 0 and result.std_error is not None
    expected = -m * (1 + 1 / m**2) * math.sqrt((1 + m * m / 2) / 4096)  # φ/Φ ≈ −m·(1 + 1/m²)
    assert result.std_error / result.value == pytest.approx(expected, rel=1e-4)
