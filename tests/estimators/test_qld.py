"""QLD against brute force: the interval count equals the n² recombination count exactly, the whitening is
(a − μ)A⁻ᵀ, and the shortest accepting vector is feasible and minimal."""

import numpy as np
import pytest
import torch
from scipy import optimize

from lowprob.core.errors import LowprobError
from lowprob.plugins.builtin.qld import (
    Constraints,
    choose_direction,
    qld,
    recombination_counts,
    shortest_accepting_vector,
    whiten,
)

N, D, V = 64, 8, 12


def _data(seed: int, n: int = N, d: int = D, v: int = V) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=g, dtype=torch.float64)
    activations = torch.randn(n, d, generator=g, dtype=torch.float64) @ mix + torch.randn(d, generator=g,
                                                                                          dtype=torch.float64)
    return activations, torch.randn(d, v, generator=g, dtype=torch.float64)


def _setup(seed: int, target: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Constraints]:
    activations, W_U = _data(seed)  # noqa: N806
    whitening = whiten(activations, 1e-5)
    P, beta = whitening.readout(W_U)  # noqa: N806
    return whitening.apply(activations), P, beta, Constraints.for_target(P, beta, target)


def _brute_force(u: torch.Tensor, P: torch.Tensor, beta: torch.Tensor, target: int,  # noqa: N803
                 direction: torch.Tensor) -> torch.Tensor:
    """Per j, the number of i with argmax(P(b_j + r_i d) + β) == target, by building all n² recombinations."""
    r = u @ direction
    b = u - r[:, None] * direction
    recombined = b[:, None, :] + r[None, :, None] * direction  # [j, i, d]
    return ((recombined @ P.T + beta).argmax(dim=-1) == target).sum(dim=1)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("target", [0, 3, 7, 11])
@pytest.mark.parametrize("direction_kind", ["sav", "random"])
def test_interval_count_equals_brute_force_exactly(seed: int, target: int, direction_kind: str) -> None:
    u, P, beta, constraints = _setup(seed, target)  # noqa: N806
    if direction_kind == "sav":
        direction = choose_direction(constraints).vector
    else:
        direction = torch.randn(D, generator=torch.Generator().manual_seed(seed + 100), dtype=torch.float64)
        direction = direction / direction.norm()
    as_j, as_i = recombination_counts(u, direction, constraints)
    brute = _brute_force(u, P, beta, target, direction)
    assert torch.equal(as_j, brute)
    assert int(as_i.sum()) == int(brute.sum())


def test_some_brute_force_counts_are_strictly_between_0_and_n() -> None:
    """The equality test is not vacuous: recombination produces partial counts."""
    u, P, beta, constraints = _setup(0, 3)  # noqa: N806
    brute = _brute_force(u, P, beta, 3, choose_direction(constraints).vector)
    assert bool(((brute > 0) & (brute < N)).any())


def test_whitening_subtracts_the_mean_first_and_preserves_logits() -> None:
    activations, W_U = _data(5, n=4096)  # noqa: N806
    whitening = whiten(activations, 1e-5)
    u = whitening.apply(activations)
    assert torch.allclose(u.mean(dim=0), torch.zeros(D, dtype=torch.float64), atol=1e-9)
    assert torch.allclose(u.T @ u / u.shape[0], torch.eye(D, dtype=torch.float64), atol=1e-4)
    P, beta = whitening.readout(W_U)  # noqa: N806
    assert torch.allclose(u @ P.T + beta, activations @ W_U, atol=1e-9)


def test_shortest_accepting_vector_is_feasible_and_matches_slsqp() -> None:
    _, _, _, constraints = _setup(3, 4)
    sav = shortest_accepting_vector(constraints)
    assert sav is not None
    G, h = constraints.delta.numpy(), constraints.offset.numpy()  # noqa: N806
    assert (G @ sav.numpy() + h).min() >= -1e-9
    reference = optimize.minimize(lambda x: x @ x / 2, np.zeros(D), jac=lambda x: x, method="SLSQP",
                                  constraints=[{"type": "ineq", "fun": lambda x: G @ x + h, "jac": lambda x: G}],
                                  options={"ftol": 1e-14, "maxiter": 500})
    assert reference.success
    assert np.allclose(sav.numpy(), reference.x, atol=1e-5)
    for delta in (1e-3, 1e-2, 0.1):  # minimal: shrinking it towards 0 leaves the feasible set
        assert (G @ ((1 - delta) * sav.numpy()) + h).min() < 0


def test_direction_falls_back_when_the_target_wins_at_the_mean() -> None:
    u, P, beta, _ = _setup(0, 0)  # noqa: N806
    winner = int(beta.argmax())
    direction = choose_direction(Constraints.for_target(P, beta, winner))
    assert direction.method.startswith("strongest competitor (target is the argmax at the mean)")
    assert direction.sav_norm is None
    assert torch.isclose(direction.vector.norm(), torch.tensor(1.0, dtype=torch.float64))


def test_unreachable_target_gives_zero_with_diagnostics() -> None:
    """A target whose unembedding is the mean of two others can only tie, never win."""
    activations, W_U = _data(1)  # noqa: N806
    W_U[:, 5] = (W_U[:, 2] + W_U[:, 9]) / 2
    result = qld(activations, W_U, (5,), torch.Generator())
    assert result.value == 0.0 and result.std_error is None  # issue 12 (21): not a misleading s.e. of 0.0
    assert result.diagnostics["recombination_hits"] == 0
    assert result.diagnostics["nonempty_fraction"] == 0.0


def test_rank_deficient_and_constant_activations_do_not_crash() -> None:
    activations, W_U = _data(2)  # noqa: N806
    low_rank = activations[:, :3] @ torch.randn(3, D, generator=torch.Generator().manual_seed(0),
                                                 dtype=torch.float64)
    for sample in (low_rank, torch.ones(N, D, dtype=torch.float64)):
        result = qld(sample.float(), W_U.float(), (int((sample @ W_U).argmax(dim=1)[0]),), torch.Generator())
        assert 0.0 <= result.value <= 1.0
        assert result.std_error is not None and result.std_error >= 0


def test_value_is_the_mean_count_with_floor_one_over_n_squared() -> None:
    activations, W_U = _data(0)  # noqa: N806
    result = qld(activations, W_U, (3,), torch.Generator())
    assert result.value == result.diagnostics["recombination_hits"] / N**2
    assert result.diagnostics["floor"] == 1 / N**2
    assert result.diagnostics["direction_method"] == "shortest accepting vector"


def test_set_targets_are_rejected() -> None:
    activations, W_U = _data(0)  # noqa: N806
    with pytest.raises(LowprobError, match="single-token targets only"):
        qld(activations, W_U, (1, 2), torch.Generator())
