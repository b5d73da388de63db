"""`lowprob compare`: several estimators on one problem at one budget, side by side, and — when the problem has a
known answer (a planted model, docs/known-answer.md) — scored against its exact value.

This is the product's point in one table: at a budget where naive sampling sees nothing and can only bound the
probability, an estimator built for the tail gives a value, and on a planted model the exact answer is beside it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lowprob.api import run_problem
from lowprob.core.budget import Budget
from lowprob.core.errors import LowprobError
from lowprob.core.estimate import Estimate
from lowprob.core.estimator import Problem
from lowprob.core.exact import KnownAnswer, KnownAnswerSource
from lowprob.plugins import Registry
from lowprob.report import format_table
from lowprob.results import ResultRow, RowSpec

ROLES = ("test", "tuning", "calibration")


def known_answer(registry: Registry, model: str, spec: str, target: str | None) -> KnownAnswer | None:
    """The registered known answer for (``model``, registered distribution ``spec``, ``target``), if any."""
    for entry in registry.entries("models"):
        if not isinstance(entry.obj, KnownAnswerSource):
            continue
        for answer in entry.obj.known_answers():
            if (answer.model, answer.spec) == (model, spec) and target in (None, answer.target):
                return answer
    return None


def result_row(problem: Problem, estimator: str, options: Mapping[str, Any], budget: Budget, seed: int,
               estimate: Estimate) -> ResultRow:
    """The typed results row of one estimate on a compiled problem (what ``estimate --output`` appends)."""
    spec = RowSpec(model=problem.model.name, distribution=problem.distribution.name or "",
                   distribution_hash=problem.distribution.content_hash, target=problem.event.describe(),
                   estimator=estimator, label=estimator, options=dict(options), budget=budget, seed=seed)
    return ResultRow.of(spec, estimate=estimate)


@dataclass(frozen=True)
class Compared:
    """One estimator's run in a comparison."""

    estimator: str
    budget: Budget
    estimate: Estimate


def compare(registry: Registry, problem: Problem, estimators: Sequence[str], budgets: Mapping[str, Budget],
            seed: int, *, level: float = 0.95, progress: bool | None = None) -> list[Compared]:
    """Run each estimator (default options) on the same problem and seed, each with its budget."""
    return [Compared(name, budgets[name], run_problem(registry, problem, name, None, budgets[name], seed,
                                                      level=level, progress=progress))
            for name in estimators]


def _shown(value: float | None) -> str:
    return "—" if value is None else f"{value:.3e}"


def _interval(estimate: Estimate) -> str:
    if estimate.ci is None:
        return "—"
    note = "" if estimate.ci.coverage else " (fit)"
    return f"[{estimate.ci.low:.2e}, {estimate.ci.high:.2e}]{note}"


def _error(estimate: Estimate, exact: float) -> str:
    """``log10(p̂ / p)``: how many orders of magnitude off (a zero estimate has no log error)."""
    return "—" if estimate.value <= 0 else f"{math.log10(estimate.value / exact):+.2f}"


def _covers(estimate: Estimate, exact: float) -> str:
    if estimate.ci is None:
        return "—"
    return "yes" if estimate.ci.low <= exact <= estimate.ci.high else "no"


def comparison_table(runs: Sequence[Compared], answer: KnownAnswer | None, level: float = 0.95) -> str:
    """One line per estimator: estimate (or, for a zero, its upper bound), interval, hits, cost, and — with a
    known answer — the log10 error and whether the interval covers the exact value."""
    header = ["estimator", "estimate", f"{level:.0%} CI", "hits", "model calls", "seconds"]
    if answer is not None:
        header += ["log10(p̂/p)", "covers p"]
    rows = []
    for run in runs:
        e = run.estimate
        shown = f"< {e.upper_bound:.3e} (bound)" if e.upper_bound is not None else _shown(e.value)
        row = [run.estimator, shown, _interval(e), f"{e.hits}/{e.samples}", f"{e.model_calls:.0f}",
               f"{e.seconds:.1f}"]
        if answer is not None:
            row += [_error(e, answer.exact_p), _covers(e, answer.exact_p)]
        rows.append(row)
    return format_table(header, rows)


def check_estimators(registry: Registry, estimators: Sequence[str]) -> None:
    """Refuse an empty or repeated list, and unknown names (before any model loads)."""
    if not estimators:
        raise LowprobError("compare needs at least one --estimator")
    repeated = sorted({name for name in estimators if estimators.count(name) > 1})
    if repeated:
        raise LowprobError(f"--estimator {repeated[0]!r} is given twice; each estimator runs once")
    for name in estimators:
        registry.create_estimator(name, None)
