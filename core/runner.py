"""The runner: owns the loop, the budget, the progress bar and the bookkeeping that turns state into results."""

from __future__ import annotations

import datetime as _dt
import math
import time
from dataclasses import replace
from typing import Any

import torch

from lowprob.core.budget import Budget
from lowprob.core.errors import BudgetError, WeightError
from lowprob.core.estimate import Estimate, Provenance, TracePoint
from lowprob.core.estimator import Estimator, EstimatorOutput, Problem, StepContext
from lowprob.core.progress import progress_bar
from lowprob.core.random import check_seed

MAX_TRACE = 512
"""Trace points kept per estimate; older points are thinned evenly beyond this."""


def _thin(trace: list[TracePoint]) -> list[TracePoint]:
    if len(trace) <= MAX_TRACE:
        return trace
    stride = math.ceil(len(trace) / MAX_TRACE)
    return trace[::stride] + ([trace[-1]] if (len(trace) - 1) % stride else [])


def _checked(name: str, out: EstimatorOutput) -> EstimatorOutput:
    """``out`` validated and clipped to [0, 1] once, here, for every estimator: finite and non-negative, a zero
    always with its upper bound, value and interval cut at 1 (the caller keeps the raw value as
    ``Estimate.unclipped_value``)."""
    if not (math.isfinite(out.value) and out.value >= 0):
        raise WeightError(f"estimator {name!r} produced an invalid estimate {out.value!r}")
    if out.std_error is not None and not math.isfinite(out.std_error):
        raise WeightError(f"estimator {name!r} produced an invalid standard error {out.std_error!r}")
    ci = out.ci
    if out.value == 0 and (ci is None or not math.isfinite(ci.high)):
        raise WeightError(f"estimator {name!r} returned a zero estimate without an upper bound; a zero must carry "
                          "a confidence interval whose upper end bounds p")
    if ci is not None and not (0 <= ci.low <= ci.high <= 1):
        ci = ci.model_copy(update={"low": min(max(ci.low, 0.0), 1.0), "high": min(max(ci.high, 0.0), 1.0)})
    return replace(out, value=min(out.value, 1.0), ci=ci)


def check_runnable(estimator: Estimator[Any], problem: Problem, budget: Budget, seed: int) -> None:
    """What :func:`run_estimator` checks before its first draw (seed, problem, a budget of at least one step),
    so a dry run can refuse what the run would."""
    check_seed(seed)
    estimator.check_problem(problem)
    check_budget(estimator, budget)


def check_budget(estimator: Estimator[Any], budget: Budget) -> None:
    """Raise :class:`BudgetError` when ``budget`` cannot pay for one step of ``estimator``; it needs no problem, so
    callers check it before loading a model."""
    need = estimator.min_step_calls(budget.backward_weight)
    if budget.model_calls is not None and budget.model_calls < need:
        raise BudgetError(
            f"a budget of {budget.model_calls} model calls is less than one step of estimator "
            f"{estimator.name!r} needs ({need:g}): "
            f"{estimator.budget_advice(budget.model_calls, budget.backward_weight)}")


def run_estimator(estimator: Estimator[Any], problem: Problem, budget: Budget, seed: int, *,
                  level: float = 0.95, progress: bool | None = None,
                  provenance: dict[str, Any] | None = None, generator: torch.Generator | None = None) -> Estimate:
    """Run ``estimator`` on ``problem`` until ``budget`` is spent and return an :class:`Estimate`.

    All randomness comes from one ``torch.Generator`` seeded with ``seed``: the same seed, model,
    distribution, estimator options and budget give the same estimate (except for a ``seconds`` budget).
    ``generator`` replaces that one (the conformance kit passes a ``lowprob.core.random.Enumerator`` here).
    """
    check_runnable(estimator, problem, budget, seed)
    generator = torch.Generator().manual_seed(seed) if generator is None else generator
    meter = problem.model
    start_cost = meter.cost
    started_at = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    t0 = time.perf_counter()
    trace: list[TracePoint] = []
    value: float | None = None
    std_error: float | None = None
    reason = "done"
    bar = progress_bar(budget.model_calls, f"{estimator.name}", progress)
    state = estimator.init(problem, generator)
    try:
        while True:
            spent = meter.cost - start_cost
            stop = budget.stop_reason(spent, time.perf_counter() - t0, value, std_error)
            if stop is not None:
                reason = stop
                break
            context = StepContext(budget.remaining_calls(spent), budget.backward_weight)
            state, info = estimator.step(state, problem, generator, context)
            after = meter.cost - start_cost
            calls = after.model_calls(budget.backward_weight)
            value, std_error = info.value, info.std_error
            trace.append(TracePoint(model_calls=calls, value=value, std_error=std_error))
            bar.update(calls - spent.model_calls(budget.backward_weight))
            if info.done:
                reason = "done"
                break
            if after == spent:
                reason = "budget too small for another step"
                break
            if budget.model_calls is not None and calls > budget.model_calls + 1e-9:
                raise BudgetError(f"estimator {estimator.name!r} overspent: {calls:g} calls "
                                  f"against a budget of {budget.model_calls}")
    finally:
        bar.close()
    raw = estimator.result(state, problem, level)
    out = _checked(estimator.name, raw)
    spent = meter.cost - start_cost
    info = dict(provenance or {})
    prov = Provenance(
        estimator=estimator.name,
        seed=seed,
        model=meter.name,
        distribution=problem.distribution.name,
        distribution_hash=problem.distribution.content_hash,
        target=problem.event.describe(),
        options=estimator.options.model_dump(mode="json"),
        budget=budget.model_dump(mode="json", exclude_none=True),
        torch_version=torch.__version__,
        started_at=started_at,
        **info,
    )
    return Estimate(
        value=out.value,
        log10_value=Estimate.log10(out.value),
        std_error=out.std_error,
        ci=out.ci,
        unclipped_value=raw.value if raw.value > 1 else None,
        hits=out.hits,
        samples=out.samples,
        forward_passes=spent.forward_passes,
        backward_passes=spent.backward_passes,
        model_calls=spent.model_calls(budget.backward_weight),
        seconds=time.perf_counter() - t0,
        model_seconds=spent.model_seconds,
        positions=spent.positions,
        generated_tokens=spent.generated_tokens,
        stop_reason=reason,
        unbiased=estimator.capabilities.unbiased,
        diagnostics=out.diagnostics,
        warnings=out.warnings,
        trace=_thin(trace),
        provenance=prov,
    )
