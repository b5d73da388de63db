"""Naive sampling and ITGIS are unbiased on a planted target with an exact answer (p ~ 1e-3)."""

from __future__ import annotations

import math

import pytest

import lowprob
from lowprob.core.exact import KnownAnswerSource
from lowprob.plugins import load_registry

SPEC, MODEL = "planted-threshold-e3", "planted-threshold"
BUDGET = 2**14


@pytest.mark.statistical
@pytest.mark.parametrize(("estimator", "replicates"), [("naive", 4), ("itgis", 8)])
def test_mean_of_seeded_estimates_is_within_4_standard_errors_of_the_exact_value(estimator: str,
                                                                                  replicates: int) -> None:
    """The mean of seeded estimates at 2^14 calls each is within 4 of its own standard errors of the exact value
    (a 2x bias would be ~8 standard errors off for naive and ~5 for ITGIS)."""
    registry = load_registry(entry_points=False)
    source = registry.entry("models", MODEL).obj
    assert isinstance(source, KnownAnswerSource)
    (answer,) = [a for a in source.known_answers() if a.spec == SPEC]
    estimates = [lowprob.estimate(SPEC, model=MODEL, target=answer.target, estimator=estimator, budget=BUDGET,
                                  seed=seed, registry=registry) for seed in range(replicates)]
    assert all(e.std_error is not None and e.std_error > 0 for e in estimates)
    mean = sum(e.value for e in estimates) / replicates
    error = math.sqrt(sum(e.std_error**2 for e in estimates if e.std_error is not None)) / replicates
    assert abs(mean - answer.exact_p) <= 4 * error, (mean, answer.exact_p, error)
