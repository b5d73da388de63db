"""`lowprob bench known-answer`: every registered estimator on every problem with an exact answer (the planted
models, docs/known-answer.md), R seeded replicates each, scored against the exact value per estimator and depth.

Rows are ordinary :class:`ResultRow` s in one results file driven by :mod:`lowprob.engine`, so a killed bench
resumes where it stopped and rows can be read with ``lowprob.read_results``. The summary is computed from the
rows and the exact values only.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from lowprob.api import compile_problem, resolve_spec, run_problem
from lowprob.core.budget import Budget
from lowprob.core.errors import LowprobError
from lowprob.core.estimator import Problem
from lowprob.core.exact import KnownAnswer, KnownAnswerSource
from lowprob.core.losses import itakura_saito_loss
from lowprob.core.stats import clopper_pearson
from lowprob.engine import Engine, Job
from lowprob.plugins import Registry
from lowprob.protocol import fit_is
from lowprob.report import format_table, markdown_table
from lowprob.results import ResultRow, RowSpec, write_atomic

EXPERIMENT = "bench-known-answer"
"""The ``experiment`` field of every bench row (part of each row's key)."""
QUICK_EXPONENTS = (5, 9)
"""Depths of the ``--quick`` subset: 1e-5 and 1e-9, every family."""
QUICK_BUDGET = Budget(model_calls=4096, backward_weight=0.0)
QUICK_REPLICATES = 4
QUICK_SKIP = {"tsmc-ctl": "trains its twist for ~15 s per estimate (excluded from --quick)",
              "mhis": "its default burn-in alone needs ~98k calls (excluded from --quick)"}
DEFAULT_REPLICATES = 16


def known_answers(registry: Registry, roles: Sequence[str] = ("test",)) -> list[KnownAnswer]:
    """Every known-answer problem offered by a registered model loader (``KnownAnswerSource``), of ``roles``."""
    return [a for entry in registry.entries("models") if isinstance(entry.obj, KnownAnswerSource)
            for a in entry.obj.known_answers() if a.role in roles]


def exponent(answer: KnownAnswer) -> int:
    """The nominal depth as a power of ten (``-9`` for 1e-9)."""
    return round(math.log10(answer.depth))


def runnable_estimators(registry: Registry, names: Sequence[str] = (),
                        skip: Mapping[str, str] | None = None) -> tuple[list[str], dict[str, str]]:
    """The estimators to run (``names``, or every registered one) and, by name, why the others are left out
    (they need options the bench cannot choose, or ``skip`` says so)."""
    chosen, skipped = [], dict(skip or {})
    for entry in registry.entries("estimators"):
        if names and entry.name not in names:
            continue
        if entry.name in skipped:
            continue
        try:
            entry.obj.parse_options({})
        except LowprobError as exc:
            skipped[entry.name] = f"needs options ({str(exc).splitlines()[0]})"
            continue
        chosen.append(entry.name)
    unknown = sorted(set(names) - {e.name for e in registry.entries("estimators")})
    if unknown:
        raise LowprobError(f"unknown estimators {unknown}")
    return chosen, {k: v for k, v in skipped.items() if not names or k in names}


@dataclass(frozen=True)
class Bench:
    """A planned bench: its jobs, the problems they run on and the exact answer behind each job key."""

    jobs: list[Job]
    problems: dict[str, Problem]
    answers: dict[str, KnownAnswer]
    skipped: dict[str, str]


def plan(registry: Registry, answers: Sequence[KnownAnswer], estimators: Sequence[str], replicates: int,
         budget: Budget | None = None, skipped: Mapping[str, str] | None = None) -> Bench:
    """One job per (problem, estimator, replicate); ``budget`` ``None`` gives each estimator its paper budget."""
    if replicates < 1:
        raise LowprobError(f"replicates must be at least 1, got {replicates}")
    jobs, problems, by_key = [], {}, {}
    for answer in answers:
        problem = compile_problem(registry, resolve_spec(answer.spec, registry), model=answer.model,
                                  target=answer.target)
        problems[answer.spec] = problem
        for name in estimators:
            spend = budget or registry.estimator(name).paper_budget()
            for seed in range(replicates):
                job = Job(RowSpec(experiment=EXPERIMENT, model=answer.model, distribution=answer.spec,
                                  distribution_hash=problem.distribution.content_hash, target=answer.target,
                                  estimator=name, label=name, budget=spend, seed=seed))
                jobs.append(job)
                by_key[job.key] = answer
    return Bench(jobs, problems, by_key, dict(skipped or {}))


def run(bench: Bench, registry: Registry, results: Path) -> Iterable[ResultRow]:
    """Run every pending job into ``results`` (resumable); an estimator's own error becomes an error row."""
    engine = Engine(results)

    def compute(job: Job) -> ResultRow:
        spec = job.spec
        try:
            estimate = run_problem(registry, bench.problems[spec.distribution], spec.estimator, spec.options,
                                   spec.budget, spec.seed or 0, progress=False)
        except LowprobError as exc:
            return ResultRow.of(spec, error=f"{type(exc).__name__}: {exc}")
        return ResultRow.of(spec, estimate=estimate)

    for _, row in engine.run(bench.jobs, compute):
        yield row


@dataclass(frozen=True)
class Summary:
    """One estimator at one depth, over every family's problem there and every replicate.

    ``family`` is ``None`` when the line pools every family at that depth.
    ``is_loss``: mean Itakura–Saito loss of the raw estimates (infinite when any estimate is 0); ``is_loss_fit``:
    the same after the protocol's fit (:func:`lowprob.protocol.fit_is`, one monotone map per estimator fitted over
    all its estimates at every depth, zeros mapped to a fitted floor);
    ``log10_error``: mean ``|log10(p̂/p)|`` over the non-zero estimates; ``rel_rmse``: root mean squared
    ``(p̂ - p)/p``, zeros included; ``coverage``: share of rows with an interval whose interval holds ``p``, with
    its Clopper–Pearson 95 % interval; ``reported_rel_se``: root mean square of ``std_error / p`` (compare with
    ``rel_rmse``); ``calls_per_second_vs_naive``: this estimator's model calls per second over naive's in the
    same rows (estimator overhead).
    """

    estimator: str
    exponent: int
    family: str | None
    rows: int
    errors: int
    is_loss: float
    is_loss_fit: float | None
    log10_error: float | None
    rel_rmse: float | None
    coverage: float | None
    coverage_low: float | None
    coverage_high: float | None
    with_interval: int
    zero_rate: float | None
    reported_rel_se: float | None
    seconds: float | None
    model_calls: float | None
    calls_per_second_vs_naive: float | None
    first_error: str | None = None


def _speed(rows: Sequence[tuple[ResultRow, KnownAnswer]]) -> float | None:
    seconds = sum(r.estimate.seconds for r, _ in rows if r.estimate is not None)
    calls = sum(r.estimate.model_calls for r, _ in rows if r.estimate is not None)
    return calls / seconds if seconds > 0 else None


def _fits(pairs: Sequence[tuple[ResultRow, KnownAnswer]]) -> dict[str, dict[str, float]]:
    """Each estimator's fitted estimates by row key: one :func:`fit_is` over all its estimates."""
    by_estimator: dict[str, list[tuple[str, float, float]]] = {}
    for row, answer in pairs:
        if row.estimate is not None:
            by_estimator.setdefault(row.estimator, []).append((row.key, answer.exact_p, row.estimate.value))
    out = {}
    for name, items in by_estimator.items():
        fit = fit_is([p for _, p, _ in items], [v for _, _, v in items])
        out[name] = dict(zip([k for k, _, _ in items], fit.apply([v for _, _, v in items]).tolist(), strict=True))
    return out


def summarize(rows: Iterable[ResultRow], answers: Mapping[str, KnownAnswer], by_family: bool = False) -> list[Summary]:
    """Per (estimator, depth) — or per (estimator, depth, family) — scores of the bench's rows (rows whose key is
    not in ``answers`` are ignored)."""
    pairs = [(row, answers[row.key]) for row in rows if row.key in answers]
    fitted = _fits(pairs)
    groups: dict[tuple[str, int, str | None], list[tuple[ResultRow, KnownAnswer]]] = {}
    for row, answer in pairs:
        key = (row.estimator, exponent(answer), answer.family if by_family else None)
        groups.setdefault(key, []).append((row, answer))
    naive = _speed([pair for pair in pairs if pair[0].estimator == "naive"])
    out = []
    for (name, exp, family), group in sorted(groups.items(), key=lambda kv: (kv[0][0], -kv[0][1], kv[0][2] or "")):
        done = [(r.estimate, a.exact_p, r.key) for r, a in group if r.estimate is not None]
        values = np.array([e.value for e, _, _ in done])
        truth = np.array([p for _, p, _ in done])
        fit = np.array([fitted[name][k] for _, _, k in done])
        nonzero = values > 0
        with_ci = [(e.ci, p) for e, p, _ in done if e.ci is not None]
        covered = sum(ci.low <= p <= ci.high for ci, p in with_ci)
        low, high = clopper_pearson(covered, len(with_ci)) if with_ci else (None, None)
        se = [(e.std_error / p) ** 2 for e, p, _ in done if e.std_error is not None]
        speed = _speed(group)
        out.append(Summary(
            estimator=name, exponent=exp, family=family, rows=len(group), errors=len(group) - len(done),
            is_loss=float(itakura_saito_loss(truth, values).mean()) if done else math.inf,
            is_loss_fit=float(itakura_saito_loss(truth, fit).mean()) if done else None,
            log10_error=float(np.abs(np.log10(values[nonzero] / truth[nonzero])).mean()) if nonzero.any() else None,
            rel_rmse=float(np.sqrt((((values - truth) / truth) ** 2).mean())) if done else None,
            coverage=covered / len(with_ci) if with_ci else None, coverage_low=low, coverage_high=high,
            with_interval=len(with_ci), zero_rate=float((~nonzero).mean()) if done else None,
            reported_rel_se=math.sqrt(statistics.fmean(se)) if se else None,
            seconds=statistics.fmean(e.seconds for e, _, _ in done) if done else None,
            model_calls=statistics.fmean(e.model_calls for e, _, _ in done) if done else None,
            calls_per_second_vs_naive=speed / naive if speed is not None and naive else None,
            first_error=next((r.error.splitlines()[0] for r, _ in group if r.error), None)))
    return out


HEADER = ("estimator", "depth", "rows", "err", "IS loss", "IS fit", "|log10 err|", "rel RMSE", "coverage (95% CI)",
          "zeros", "rep. rel s.e.", "s/est", "calls", "speed vs naive")


def _g(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else ("∞" if value == math.inf else f"{value:.{digits}g}")


def table_rows(summaries: Sequence[Summary]) -> list[list[str]]:
    """The summary as text cells, one row per (estimator, depth[, family])."""
    out = []
    for s in summaries:
        cover = "—" if s.coverage is None else (f"{s.coverage:.2f} [{s.coverage_low:.2f}, {s.coverage_high:.2f}]"
                                                f" of {s.with_interval}")
        depth = f"1e{s.exponent}" + (f" {s.family}" if s.family else "")
        out.append([s.estimator, depth, str(s.rows), str(s.errors), _g(s.is_loss), _g(s.is_loss_fit),
                    _g(s.log10_error), _g(s.rel_rmse), cover, _g(s.zero_rate, 2), _g(s.reported_rel_se),
                    _g(s.seconds), _g(s.model_calls, 5), _g(s.calls_per_second_vs_naive, 2)])
    return out


def text_table(summaries: Sequence[Summary]) -> str:
    """The summary table `lowprob bench known-answer` prints."""
    return format_table(HEADER, table_rows(summaries))


def write_outputs(folder: Path, pooled: Sequence[Summary], per_family: Sequence[Summary],
                  answers: Sequence[KnownAnswer], skipped: Mapping[str, str], note: str) -> tuple[Path, Path]:
    """``summary.md`` (problems, skipped estimators, the tables pooled and per family, errors) and
    ``summary.json`` in ``folder``."""
    problems = markdown_table(("spec", "family", "exact p"),
                              [[f"`{a.spec}`", a.family, f"{a.exact_p:.10e}"] for a in answers])
    left_out = "".join(f"- `{name}`: {why}\n" for name, why in sorted(skipped.items())) or "- none\n"
    errors = "".join(f"- `{s.estimator}` at 1e{s.exponent}: {s.errors} of {s.rows}, e.g. {s.first_error}\n"
                     for s in pooled if s.first_error) or "- none\n"
    text = (f"# Known-answer bench\n\n{note}\n\n## Problems\n\n{problems}\n\n## Estimators left out\n\n{left_out}\n"
            f"## Scores per estimator and depth\n\n{markdown_table(HEADER, table_rows(pooled))}\n\n"
            f"## Per family\n\n{markdown_table(HEADER, table_rows(per_family))}\n\n"
            f"## Estimates that ended in an error\n\n{errors}")
    md, js = folder / "summary.md", folder / "summary.json"
    write_atomic(md, text)
    payload = {"note": note, "skipped": dict(skipped),
               "problems": [{"model": a.model, "spec": a.spec, "target": a.target, "family": a.family,
                             "exact_p": a.exact_p, "log10_p": a.exact.log10} for a in answers],
               "summaries": [{k: _json_number(v) for k, v in asdict(s).items()} for s in [*pooled, *per_family]]}
    write_atomic(js, json.dumps(payload, indent=2, allow_nan=False) + "\n")
    return md, js


def write_figures(folder: Path, rows: Iterable[ResultRow], answers: Mapping[str, KnownAnswer],
                  pooled: Sequence[Summary]) -> list[Path]:
    """``estimates-<family>`` (estimate against the exact value, log–log, one panel per estimator) and
    ``coverage`` (95 % interval coverage per depth and estimator), as PNG and SVG."""
    from lowprob.figures import ScatterPanel, loss_bars, save_figure, scatter_grid

    pairs = [(row, answers[row.key]) for row in rows if row.key in answers and row.estimate is not None]
    paths = []
    for family in sorted({a.family for _, a in pairs}):
        panels = []
        for name in sorted({r.estimator for r, a in pairs if a.family == family}):
            mine = [(a.exact_p, r.estimate.value) for r, a in pairs
                    if a.family == family and r.estimator == name and r.estimate is not None]
            zeros = sum(v == 0 for _, v in mine)
            panels.append(ScatterPanel(name, [p for p, _ in mine], [v for _, v in mine], None,
                                       f"{zeros}/{len(mine)} zero"))
        paths += save_figure(scatter_grid(f"{family}: estimate vs exact probability", panels),
                             folder / f"estimates-{family}")
    depths = [f"1e{e}" for e in sorted({s.exponent for s in pooled}, reverse=True)]
    series = sorted({s.estimator for s in pooled})
    values = {(f"1e{s.exponent}", s.estimator): s.coverage for s in pooled}
    paths += save_figure(loss_bars("95 % interval coverage (nominal 0.95)", depths, series, values, "coverage"),
                         folder / "coverage")
    return paths


def _json_number(value: object) -> object:
    """Infinite losses as the string ``"inf"`` (JSON has no infinity)."""
    return "inf" if isinstance(value, float) and math.isinf(value) else value


@dataclass(frozen=True)
class Selection:
    """What to run: replicates, the budget (``None``: each estimator's paper budget), estimators, depths."""

    replicates: int
    budget: Budget | None
    estimators: tuple[str, ...] = ()
    exponents: tuple[int, ...] = ()
    skip: tuple[tuple[str, str], ...] = ()

    @staticmethod
    def of(quick: bool, replicates: int | None, budget_calls: int | None, estimators: Sequence[str],
           exponents: Sequence[int]) -> Selection:
        """The ``--quick`` subset or the full default, with any explicit choice taking precedence."""
        budget = Budget(model_calls=budget_calls, backward_weight=0.0) if budget_calls else None
        if quick:
            return Selection(replicates or QUICK_REPLICATES, budget or QUICK_BUDGET, tuple(estimators),
                             tuple(-abs(e) for e in exponents) or tuple(-e for e in QUICK_EXPONENTS),
                             tuple((k, v) for k, v in QUICK_SKIP.items() if k not in estimators))
        return Selection(replicates or DEFAULT_REPLICATES, budget, tuple(estimators), tuple(-abs(e) for e in exponents))

    def describe(self) -> str:
        budget = (f"{self.budget.model_calls} model calls per estimate" if self.budget is not None
                  else "each estimator's paper budget")
        return f"{self.replicates} seeded replicates per (problem, estimator), {budget}"


def prepare(registry: Registry, selection: Selection) -> tuple[Bench, list[KnownAnswer]]:
    """The known-answer test problems at the selected depths and the bench over the selected estimators."""
    answers = [a for a in known_answers(registry) if not selection.exponents or exponent(a) in selection.exponents]
    if not answers:
        raise LowprobError(f"no known-answer test problems at depths {[f'1e{e}' for e in selection.exponents]}")
    names, skipped = runnable_estimators(registry, selection.estimators, dict(selection.skip))
    if not names:
        raise LowprobError("no estimator left to run")
    return plan(registry, answers, names, selection.replicates, selection.budget, skipped), answers
