"""Compiled distributions are proper: log_prob matches enumeration and sampling frequencies."""

from __future__ import annotations

import math

import pytest
import torch
from dsl_vocab import RESOLVERS, make_vocab
from scipy.stats import chisquare

from lowprob.dsl import load_spec

SPECS = {
    "factorized": 'dist main = BOS [{"He": 1, "She": 3}] weighted({"a", "b", "c"}, freq("stdlib"))',
    "alternatives": 'dist main = ("He" " said" @ 0.2 | "She" [{"a", "b"}] @ 0.8) uniform({"0", "1"})',
    "nested": 'dist main = (("a" | "b") "c" @ 1 | "d" ("e" @ 1 | "f" @ 2) @ 2) * 2',
}


@pytest.mark.parametrize("name", SPECS)
def test_enumeration_sums_to_one_and_matches_log_prob(name: str) -> None:
    dist = load_spec(SPECS[name], make_vocab(), RESOLVERS).distribution()
    rows, probs = dist.enumerate()
    assert math.isclose(float(probs.sum()), 1.0, rel_tol=1e-12)
    assert torch.allclose(dist.log_prob(rows), probs.log(), atol=1e-12)


@pytest.mark.parametrize("name", SPECS)
def test_sampling_frequencies_match_probabilities(name: str) -> None:
    dist = load_spec(SPECS[name], make_vocab(), RESOLVERS).distribution()
    rows, probs = dist.enumerate()
    n = 20_000
    samples = dist.sample(n, torch.Generator().manual_seed(1234))
    index = {tuple(r): k for k, r in enumerate(rows.tolist())}
    counts = torch.zeros(len(index))
    for row in samples.tolist():
        counts[index[tuple(row)]] += 1  # a KeyError would mean a sample outside the support
    result = chisquare(counts.numpy(), (probs * n).numpy())
    assert result.pvalue > 1e-3
