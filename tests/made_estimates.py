"""A hand-made :class:`Estimate` for tests of what reads, writes or draws estimates (no estimator runs)."""

from __future__ import annotations

from lowprob.core.estimate import ConfidenceInterval, Estimate, TracePoint


def made_estimate(value: float = 0.5, *, trace: list[TracePoint] | None = None,
                  ci: ConfidenceInterval | None = None, model_calls: float = 2) -> Estimate:
    """An estimate of ``value`` from a naive run of the model ``tiny`` (1 hit in 2 samples)."""
    return Estimate(value=value, log10_value=Estimate.log10(value), std_error=None, ci=ci, hits=1, samples=2,
                    forward_passes=2, backward_passes=0, model_calls=model_calls, seconds=0.0, model_seconds=0.0,
                    stop_reason="model_calls", unbiased=True, trace=trace or [],
                    provenance={"estimator": "naive", "seed": 0, "model": "tiny", "distribution_hash": "h",
                                "target": "t"})
