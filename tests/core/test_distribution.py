"""Compiled input distributions: sampling, exact log-probabilities, enumeration, mixtures."""

import math

import pytest
import torch

from lowprob.core import Block, Categorical, InputDistribution, LowprobError, WeightError


def _mixed() -> InputDistribution:
    """BOS, then ("ab" @ 0.25 | x y @ 0.75) with x∈{4,5}, then a uniform position over {5, 6, 7}."""
    pair = Block.mixture([
        (1.0, [Block.position(Categorical.constant(1)), Block.position(Categorical.uniform([2, 3]))]),
        (3.0, [Block.position(Categorical.uniform([4, 5])), Block.position(Categorical.constant(6))]),
    ])
    return InputDistribution((Block.position(Categorical.constant(0)), pair,
                              Block.position(Categorical.from_weights([5, 6, 7], [1, 2, 1]))), vocab_size=8)


def test_enumeration_sums_to_one_and_matches_log_prob() -> None:
    dist = _mixed()
    tokens, probs = dist.enumerate()
    assert tokens.shape == (4 * 3, 4)
    assert math.isclose(float(probs.sum()), 1.0, rel_tol=1e-12)
    assert torch.allclose(dist.log_prob(tokens).exp(), probs)
    assert not dist.is_factorized


def test_sampling_frequencies_match_log_prob() -> None:
    dist = _mixed()
    n = 200_000
    tokens = dist.sample(n, torch.Generator().manual_seed(0))
    outcomes, counts = torch.unique(tokens, dim=0, return_counts=True)
    expected = dist.log_prob(outcomes).exp() * n
    # every outcome within 5 binomial standard deviations of its expected count
    sd = (expected * (1 - expected / n)).sqrt()
    assert ((counts - expected).abs() <= 5 * sd).all()
    assert outcomes.shape[0] == 12


def test_single_token_alternatives_stay_factorized() -> None:
    block = Block.mixture([(0.3, [Block.position(Categorical.constant(2))]),
                           (0.7, [Block.position(Categorical.constant(3))])])
    dist = InputDistribution((block,), vocab_size=4)
    assert dist.is_factorized
    assert dist.positions[0].ids.tolist() == [2, 3]
    assert torch.allclose(dist.positions[0].probs, torch.tensor([0.3, 0.7], dtype=torch.float64))


def test_log_prob_outside_support_is_minus_inf() -> None:
    dist = _mixed()
    assert dist.log_prob(torch.tensor([[0, 1, 6, 5]]))[0] == -math.inf


def test_same_seed_same_samples() -> None:
    dist = _mixed()
    a = dist.sample(50, torch.Generator().manual_seed(3))
    b = dist.sample(50, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


@pytest.mark.parametrize("weights", [[0.0, 0.0], [float("nan"), 1.0], [-1.0, 2.0], [float("inf"), 1.0]])
def test_bad_weights_are_errors(weights: list[float]) -> None:
    with pytest.raises(WeightError):
        Categorical.from_weights([1, 2], weights)


def test_unequal_alternatives_are_an_error() -> None:
    with pytest.raises(LowprobError, match="same number of tokens"):
        Block.mixture([(1.0, [Block.position(Categorical.constant(1))]),
                       (1.0, [Block.position(Categorical.constant(1)), Block.position(Categorical.constant(2))])])


def test_out_of_vocabulary_ids_are_an_error() -> None:
    with pytest.raises(LowprobError, match="outside the vocabulary"):
        InputDistribution.independent([Categorical.constant(9)], vocab_size=4)


def test_enumeration_limit() -> None:
    dist = InputDistribution.independent([Categorical.uniform(range(10))] * 4, vocab_size=10)
    with pytest.raises(LowprobError, match="enumeration limit"):
        dist.enumerate(limit=1000)


def test_dense_log_probs_and_hash() -> None:
    dist = _mixed()
    dense = dist.dense_log_probs()
    assert dense.shape == (4, 8)
    assert torch.allclose(dense.exp().sum(dim=1), torch.ones(4, dtype=torch.float64))
    assert dist.content_hash == _mixed().content_hash
    other = InputDistribution.independent([Categorical.constant(1)], vocab_size=8)
    assert other.content_hash != dist.content_hash
