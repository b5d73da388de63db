"""`lowprob bench known-answer`: every registered estimator on every problem with an exact answer (the planted
models, docs/known-answer.md), R seeded replicates each, at the paper budget and at a FLOP-fair budget, scored
against the exact value per estimator and depth.

Estimators with a ``temperature`` option first run the temperature grid on the ``tuning`` problems of each
family; the temperature the protocol's criterion picks there (:func:`lowprob.protocol.best_temperature`) is the
one they run the ``test`` problems at. Rows are ordinary :class:`ResultRow` s in one results file driven by
:mod:`lowprob.engine`, so a killed bench resumes where it stopped (the tuning rows too) and rows can be read with
``lowprob.read_results``. The summary is computed from the rows and the exact values only.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from lowprob.api import compile_problem, resolve_spec, run_problem
from lowprob.core.budget import Budget
from lowprob.core.errors import LowprobError
from lowprob.core.estimator import PAPER_MODEL_CALLS, Problem
from lowprob.core.exact import KnownAnswer, KnownAnswerSource
from lowprob.core.losses import itakura_saito_loss
from lowprob.core.stats import clopper_pearson
from lowprob.engine import Engine, Job
from lowprob.executors import Executor
from lowprob.experiments import RowTask
from lowprob.plugins import Registry
from lowprob.protocol import TuningScore, best_temperature, fit_is, temperature_grid, tuning_score
from lowprob.report import format_table, markdown_table
from lowprob.reproduce import TUNED_OPTION, tunes_temperature
from lowprob.results import ProtocolTags, ResultRow, RowSpec, write_atomic

EXPERIMENT = "bench-known-answer"
"""The ``experiment`` field of every bench row (part of each row's key)."""
PAPER, FLOP_FAIR = "paper", "flop-fair"
BUDGET_MODES = (PAPER, FLOP_FAIR)
"""The two budgets every estimate can run at (:func:`budget_for`)."""
FLOP_FAIR_BACKWARD_WEIGHT = 2.0
"""Forward-pass equivalents one backward pass costs in the FLOP-fair budget (the :class:`Budget` default: a
backward pass through a transformer costs about two forwards)."""
DEFAULT_REPLICATES = 16
DEFAULT_TUNING_REPLICATES = 2
"""Seeded runs per (tuning problem, temperature); each family has two tuning problems (1e-6 and 1e-10)."""
QUICK_EXPONENTS = (5, 9)
"""Depths of the ``--quick`` subset: 1e-5 and 1e-9, every family."""
QUICK_CALLS = 4096
QUICK_REPLICATES = 4
QUICK_TEMPERATURES = (0.5, 1.0, 2.0)
QUICK_TUNING_REPLICATES = 1
QUICK_SKIP = {"tsmc-ctl": "trains its twist for ~15 s per estimate (excluded from --quick)",
              "mhis": "its default burn-in alone needs ~98k calls (excluded from --quick)"}


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


def budget_for(registry: Registry, estimator: str, mode: str, calls: int = PAPER_MODEL_CALLS) -> Budget:
    """One estimator's budget under ``mode``, at ``calls`` model calls where the paper gives 2^16.

    ``paper``: the estimator's own :meth:`~lowprob.core.estimator.Estimator.paper_budget` scaled by
    ``calls / 2^16`` (2^16 calls with backward passes free for most, MHIS's 98 336). ``flop-fair``: ``calls``
    forward-pass equivalents for every estimator, a backward pass counting as ``FLOP_FAIR_BACKWARD_WEIGHT``
    forwards, so every estimator spends the same compute at the meter.
    """
    if mode == PAPER:
        paper = registry.estimator(estimator).paper_budget()
        scaled = round((paper.model_calls or PAPER_MODEL_CALLS) * calls / PAPER_MODEL_CALLS)
        return Budget(model_calls=max(1, scaled), backward_weight=paper.backward_weight)
    if mode == FLOP_FAIR:
        return Budget(model_calls=calls, backward_weight=FLOP_FAIR_BACKWARD_WEIGHT)
    raise LowprobError(f"unknown budget {mode!r}; choose from {', '.join(BUDGET_MODES)}")


def describe_budget(budget: Budget) -> str:
    """``65536 calls, backward free`` or ``65536 calls, backward = 2 fwd``."""
    weight = "free" if budget.backward_weight == 0 else f"= {budget.backward_weight:g} fwd"
    return f"{budget.model_calls} calls, backward {weight}"


ProblemKey = tuple[str, str, str]
"""A compiled problem's model, distribution (registered name) and target expression, as in its rows."""


@dataclass(frozen=True)
class Case:
    """What a bench row is scored against: its problem's exact answer and the budget it ran at."""

    answer: KnownAnswer
    mode: str


@dataclass(frozen=True)
class TemperatureChoice:
    """The temperature one estimator runs a family's test problems at under one budget, and the tuning score
    of every grid value it was chosen from over ``runs`` tuning runs each (no scores when the grid has a single
    value, which fixes it). ``temperature`` is ``None`` when the family has no tuning problems (the estimator's
    default is used)."""

    estimator: str
    family: str
    mode: str
    temperature: float | None
    scores: Mapping[float, TuningScore]
    runs: int = 0


@dataclass(frozen=True)
class Selection:
    """What to run: replicates, model calls at the paper's scale, budget modes, the temperature grid and its
    tuning replicates, estimators (all when empty), depths (all when empty), estimators left out on purpose and
    families (all when empty)."""

    replicates: int
    calls: int = PAPER_MODEL_CALLS
    modes: tuple[str, ...] = BUDGET_MODES
    temperatures: tuple[float, ...] = temperature_grid()
    tuning_replicates: int = DEFAULT_TUNING_REPLICATES
    estimators: tuple[str, ...] = ()
    exponents: tuple[int, ...] = ()
    skip: tuple[tuple[str, str], ...] = ()
    families: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.replicates < 1 or self.tuning_replicates < 1:
            raise LowprobError(f"replicates must be at least 1, got {self.replicates} and {self.tuning_replicates}")
        if unknown := sorted(set(self.modes) - set(BUDGET_MODES)):
            raise LowprobError(f"unknown budgets {unknown}; choose from {', '.join(BUDGET_MODES)}")
        if not self.temperatures or not all(0 < t < math.inf for t in self.temperatures):
            raise LowprobError(f"temperatures must be positive numbers, got {list(self.temperatures)}")

    @staticmethod
    def of(quick: bool, replicates: int | None, budget_calls: int | None, estimators: Sequence[str],
           exponents: Sequence[int], budget: str = "both", temperatures: Sequence[float] = (),
           tuning_replicates: int | None = None, families: Sequence[str] = ()) -> Selection:
        """The ``--quick`` subset or the full default, with any explicit choice taking precedence."""
        modes = BUDGET_MODES if budget == "both" else (budget,)
        grid = tuple(sorted(set(temperatures)))
        if quick:
            return Selection(replicates or QUICK_REPLICATES, budget_calls or QUICK_CALLS, modes,
                             grid or QUICK_TEMPERATURES, tuning_replicates or QUICK_TUNING_REPLICATES,
                             tuple(estimators),
                             tuple(-abs(e) for e in exponents) or tuple(-e for e in QUICK_EXPONENTS),
                             tuple((k, v) for k, v in QUICK_SKIP.items() if k not in estimators), tuple(families))
        return Selection(replicates or DEFAULT_REPLICATES, budget_calls or PAPER_MODEL_CALLS, modes,
                         grid or temperature_grid(), tuning_replicates or DEFAULT_TUNING_REPLICATES,
                         tuple(estimators), tuple(-abs(e) for e in exponents), families=tuple(families))

    def describe(self) -> str:
        budgets = {PAPER: f"paper (each estimator's paper budget × {self.calls}/2^16)",
                   FLOP_FAIR: f"flop-fair ({self.calls} forward-pass equivalents, a backward pass = "
                              f"{FLOP_FAIR_BACKWARD_WEIGHT:g})"}
        tuning = (f"temperatures {', '.join(f'{t:.3g}' for t in self.temperatures)} tuned on the tuning problems "
                  f"({self.tuning_replicates} run(s) each)" if len(self.temperatures) > 1
                  else f"temperature fixed at {self.temperatures[0]:g}")
        return (f"{self.replicates} seeded replicates per (problem, estimator, budget); budgets: "
                f"{'; '.join(budgets[m] for m in self.modes)}; {tuning}")


def parse_temperatures(text: str | None) -> tuple[float, ...]:
    """``"0.5,1,2"`` as a grid (empty for ``None``); anything that is not a list of positive numbers is an error."""
    if text is None:
        return ()
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise LowprobError(f"--temperatures: expected comma-separated numbers like 0.5,1,2, got {text!r}") from None
    if not all(0 < t < math.inf for t in values):
        raise LowprobError(f"--temperatures: every temperature must be a positive number, got {text!r}")
    return values


@dataclass(frozen=True)
class Bench:
    """A planned bench: the problems, the estimators (and which are tuned), the budgets, the tuning jobs with
    what each is scored against, and the estimators left out with why."""

    selection: Selection
    tests: list[KnownAnswer]
    tuning: list[KnownAnswer]
    problems: dict[ProblemKey, Problem]
    estimators: list[str]
    tuned: list[str]
    budgets: dict[tuple[str, str], Budget]
    tuning_jobs: list[Job]
    tuning_cases: dict[str, Case]
    skipped: dict[str, str]

    @property
    def families(self) -> list[str]:
        return sorted({a.family for a in self.tests})

    def _job(self, answer: KnownAnswer, name: str, mode: str, seed: int, temperature: float | None,
             tags: ProtocolTags | None) -> Job:
        problem = self.problems[(answer.model, answer.spec, answer.target)]
        options = {TUNED_OPTION: temperature} if temperature is not None else {}
        return Job(RowSpec(experiment=EXPERIMENT, model=answer.model, distribution=answer.spec,
                           distribution_hash=problem.distribution.content_hash, target=answer.target,
                           estimator=name, label=name, options=options, budget=self.budgets[(name, mode)],
                           seed=seed, protocol=tags))

    def test_jobs(self, choices: Mapping[tuple[str, str, str], TemperatureChoice]) -> dict[str, tuple[Job, Case]]:
        """One job per (test problem, estimator, budget, replicate), a tuned estimator at its chosen temperature
        (``choices`` by (estimator, family, budget)); by key, each with what it is scored against."""
        grid = self.selection.temperatures
        out = {}
        for answer in self.tests:
            for name in self.estimators:
                for mode in self.selection.modes:
                    choice = choices.get((name, answer.family, mode))
                    temp = choice.temperature if choice is not None else None
                    tags = None if temp is None else ProtocolTags(
                        phase="test", temperature=temp, tuning_grid=grid if len(grid) > 1 else None)
                    for seed in range(self.selection.replicates):
                        job = self._job(answer, name, mode, seed, temp, tags)
                        out[job.key] = (job, Case(answer, mode))
        return out


def prepare(registry: Registry, selection: Selection) -> Bench:
    """The test problems at the selected depths, the tuning problems of their families, the selected
    estimators, and the tuning jobs: every tuned estimator × budget × tuning problem × temperature × replicate
    (none when the grid has a single value)."""
    tests = [a for a in known_answers(registry) if (not selection.exponents or exponent(a) in selection.exponents)
             and (not selection.families or a.family in selection.families)]
    if not tests:
        raise LowprobError(f"no known-answer test problems at depths {[f'1e{e}' for e in selection.exponents]}"
                           + (f" in families {list(selection.families)}" if selection.families else ""))
    names, skipped = runnable_estimators(registry, selection.estimators, dict(selection.skip))
    if not names:
        raise LowprobError("no estimator left to run")
    tuned = [n for n in names if tunes_temperature(registry.estimator(n), {})]
    tuning = [a for a in known_answers(registry, ("tuning",))
              if tuned and len(selection.temperatures) > 1 and a.family in {t.family for t in tests}]
    problems = {(a.model, a.spec, a.target): compile_problem(registry, resolve_spec(a.spec, registry), model=a.model,
                                                             target=a.target) for a in [*tests, *tuning]}
    budgets = {(n, m): budget_for(registry, n, m, selection.calls) for n in names for m in selection.modes}
    bench = Bench(selection, tests, tuning, problems, names, tuned, budgets, [], {}, skipped)
    for name in tuned:
        for mode in selection.modes:
            for answer in tuning:
                for temp in selection.temperatures:
                    tags = ProtocolTags(phase="tune", temperature=temp, p_true=answer.exact_p)
                    for seed in range(selection.tuning_replicates):
                        job = bench._job(answer, name, mode, seed, temp, tags)
                        bench.tuning_jobs.append(job)
                        bench.tuning_cases[job.key] = Case(answer, mode)
    return bench


def choose_temperatures(bench: Bench, rows: Mapping[str, ResultRow]) -> dict[tuple[str, str, str], TemperatureChoice]:
    """Per (tuned estimator, family, budget) the temperature with the best :func:`tuning_score` over the
    family's tuning rows among ``rows`` (a missing or failed run counts as a failure, as in the protocol);
    a single-value grid fixes the temperature."""
    grid = bench.selection.temperatures
    out = {}
    for name in bench.tuned:
        for mode in bench.selection.modes:
            for family in bench.families:
                if len(grid) == 1:
                    out[(name, family, mode)] = TemperatureChoice(name, family, mode, grid[0], {})
                    continue
                mine = [job for job in bench.tuning_jobs if job.spec.estimator == name
                        and bench.tuning_cases[job.key].mode == mode
                        and bench.tuning_cases[job.key].answer.family == family]
                if not mine:
                    out[(name, family, mode)] = TemperatureChoice(name, family, mode, None, {})
                    continue
                scores = {}
                for temp in grid:
                    at = [job for job in mine if job.spec.options[TUNED_OPTION] == temp]
                    ok = [(bench.tuning_cases[job.key].answer.exact_p, row.estimate.value) for job in at
                          if (row := rows.get(job.key)) is not None and row.estimate is not None]
                    scores[temp] = tuning_score([p for p, _ in ok], [v for _, v in ok], len(at))
                out[(name, family, mode)] = TemperatureChoice(name, family, mode, best_temperature(scores), scores,
                                                              len(mine) // len(grid))
    return out


@dataclass(frozen=True)
class Outcome:
    """A finished (or resumed) bench: the rows written now, every row of the file, the test rows' cases by key
    and the temperatures chosen."""

    new_rows: int
    rows: Mapping[str, ResultRow]
    cases: dict[str, Case]
    choices: dict[tuple[str, str, str], TemperatureChoice]


LEVEL = 0.95
"""The confidence level of every bench estimate."""


def run_jobs(problems: Mapping[ProblemKey, Problem], registry: Registry, engine: Engine, jobs: Sequence[Job],
             executor: Executor | None = None) -> Iterator[ResultRow]:
    """Run the pending ``jobs`` into ``engine``, each on its problem in ``problems`` (by model, distribution and
    target: what a worker compiles the row's spec to); an estimator's own error becomes an error row, and so does
    a bug in it (an exception that is not a :class:`LowprobError`, quoted as ``internal error``), so one broken
    estimator cannot stop a long bench. On an ``executor`` other than serial the rows are tasks grouped by model,
    written here as they come back."""
    if executor is not None and not executor.in_process:
        def task(job: Job) -> _Task:
            return _Task(job.spec, resolve_spec(job.spec.distribution, registry), None, (job.spec.target or "",),
                         LEVEL)

        for _, row in engine.run_tasks(jobs, task, executor):
            yield row
        return

    def compute(job: Job) -> ResultRow:
        spec = job.spec
        try:
            estimate = run_problem(registry, problems[(spec.model, spec.distribution, spec.target or "")],
                                   spec.estimator, spec.options,
                                   spec.budget, spec.seed or 0, level=LEVEL, progress=False)
        except Exception as exc:  # noqa: BLE001 - an estimator's bug becomes an error row (see the docstring)
            return _error_row(spec, exc)
        return ResultRow.of(spec, estimate=estimate)

    for _, row in engine.run(jobs, compute):
        yield row


def _error_row(spec: RowSpec, error: Exception) -> ResultRow:
    bug = "" if isinstance(error, LowprobError) else "internal error (a bug in the estimator): "
    return ResultRow.of(spec, error=f"{bug}{type(error).__name__}: {error}")


@dataclass(frozen=True)
class _Task(RowTask):
    """A bench row as a task for a worker; an estimator's own error becomes an error row, as in a serial run."""

    def run(self) -> ResultRow:
        try:
            return super().run()
        except Exception as exc:  # noqa: BLE001 - as in a serial run
            return _error_row(self.spec, exc)


SAME_RUN = "same_run_as"
"""Diagnostic of a FLOP-fair row that is its paper-budget twin's run: the twin's key (:func:`paper_twin`)."""


def paper_twin(bench: Bench, registry: Registry, job: Job) -> str | None:
    """The key of the paper-budget job whose run can stand for ``job``, a FLOP-fair job of an estimator that
    declares no gradients (``needs_gradients``) when the two budgets differ only in the price of a backward
    pass; ``None`` otherwise. Whether it does stand for it is decided by its row (:func:`shares_its_run`)."""
    name = job.spec.estimator
    if PAPER not in bench.selection.modes or job.spec.budget != bench.budgets.get((name, FLOP_FAIR)):
        return None
    if registry.estimator(name).capabilities.needs_gradients:
        return None
    paper = bench.budgets[(name, PAPER)]
    if paper.model_copy(update={"backward_weight": job.spec.budget.backward_weight}) != job.spec.budget:
        return None
    return Job(job.spec.model_copy(update={"budget": paper})).key


def shares_its_run(twin: ResultRow | None) -> bool:
    """Whether a paper-budget row is also its FLOP-fair twin's: it made no backward pass, so under either price
    of a backward pass it spent the same calls, and an estimator without gradients sees nothing else of the
    budget (tests/planted/test_bench.py runs both for every such built-in estimator and compares)."""
    return twin is not None and twin.estimate is not None and twin.estimate.backward_passes == 0


def shared_row(job: Job, twin: ResultRow) -> ResultRow:
    """``job``'s row holding its paper-budget twin's estimate, marked with the twin's key."""
    assert twin.estimate is not None
    estimate = twin.estimate.model_copy(update={"diagnostics": {**twin.estimate.diagnostics, SAME_RUN: twin.key}})
    return ResultRow.of(job.spec, key=job.key, estimate=estimate)


def run_phase(bench: Bench, registry: Registry, engine: Engine, jobs: Sequence[Job],
              executor: Executor | None = None) -> int:
    """Run ``jobs`` (tuning or test) into ``engine``: first every job that has no paper-budget twin among them
    (:func:`paper_twin`), then the twins' FLOP-fair jobs — one whose twin's row :func:`shares_its_run` gets that
    run (:func:`shared_row`), the others run. Returns how many rows were written."""
    keys = {job.key for job in jobs}
    twins = {job.key: twin for job in jobs if (twin := paper_twin(bench, registry, job)) in keys}
    new = sum(1 for _ in run_jobs(bench.problems, registry, engine, [j for j in jobs if j.key not in twins],
                                  executor))
    later = [job for job in jobs if job.key in twins]
    shared = {job.key for job in later if shares_its_run(engine.rows.get(twins[job.key]))}
    new += sum(1 for _ in engine.run([j for j in later if j.key in shared],
                                     lambda job: shared_row(job, engine.rows[twins[job.key]])))
    rest = [job for job in later if job.key not in shared]
    return new + sum(1 for _ in run_jobs(bench.problems, registry, engine, rest, executor))


def run(bench: Bench, registry: Registry, results: Path, executor: Executor | None = None) -> Outcome:
    """Tune, then test, into ``results`` (resumable: rows already there are kept and reused); the test jobs are
    planned once the tuning rows are all in, so serial and executor runs write the same rows."""
    engine = Engine(results)
    new = run_phase(bench, registry, engine, bench.tuning_jobs, executor)
    choices = choose_temperatures(bench, engine.rows)
    planned = bench.test_jobs(choices)
    new += run_phase(bench, registry, engine, [job for job, _ in planned.values()], executor)
    return Outcome(new, engine.rows, {key: case for key, (_, case) in planned.items()}, choices)


def collect(bench: Bench, results: Path) -> Outcome:
    """What :func:`run` would return from the rows already in ``results``, running nothing (the tables of a run
    still in progress or stopped; the temperatures are chosen from the tuning rows there, a missing one
    counting as a failure)."""
    rows = Engine(results).rows
    choices = choose_temperatures(bench, rows)
    return Outcome(0, rows, {key: case for key, (_, case) in bench.test_jobs(choices).items()}, choices)


def completeness(bench: Bench, outcome: Outcome) -> str:
    """How many of the planned test and tuning rows are in the results."""
    tests = sum(key in outcome.rows for key in outcome.cases)
    tuning = sum(job.key in outcome.rows for job in bench.tuning_jobs)
    return (f"{tests} of {len(outcome.cases)} test rows and {tuning} of {len(bench.tuning_jobs)} tuning rows "
            "are in the results")


@dataclass(frozen=True)
class Summary:
    """One estimator at one depth under one budget, over every family's problem there and every replicate.

    ``family`` is ``None`` when the line pools every family at that depth.
    ``is_loss``: mean Itakura–Saito loss of the raw estimates (infinite when any estimate is 0); ``is_loss_fit``:
    the same after the protocol's fit (:func:`lowprob.protocol.fit_is`, one monotone map per estimator and budget
    fitted over all its estimates at every depth, zeros mapped to a fitted floor);
    ``log10_error``: mean ``|log10(p̂/p)|`` over the non-zero estimates; ``rel_rmse``: root mean squared
    ``(p̂ - p)/p``, zeros included; ``coverage``: share of rows with an interval whose interval holds ``p``, with
    its Clopper–Pearson 95 % interval; ``reported_rel_se``: root mean square of ``std_error / p`` (compare with
    ``rel_rmse``); ``calls_per_second_vs_naive``: this estimator's model calls per second over naive's in the
    same rows and budget (estimator overhead).
    """

    estimator: str
    budget: str
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


Pair = tuple[ResultRow, Case]


def _speed(rows: Sequence[Pair]) -> float | None:
    seconds = sum(r.estimate.seconds for r, _ in rows if r.estimate is not None)
    calls = sum(r.estimate.model_calls for r, _ in rows if r.estimate is not None)
    return calls / seconds if seconds > 0 else None


def _fits(pairs: Sequence[Pair]) -> dict[tuple[str, str], dict[str, float]]:
    """Each (estimator, budget)'s fitted estimates by row key: one :func:`fit_is` over all its estimates."""
    by_estimator: dict[tuple[str, str], list[tuple[str, float, float]]] = {}
    for row, case in pairs:
        if row.estimate is not None:
            by_estimator.setdefault((row.estimator, case.mode), []).append(
                (row.key, case.answer.exact_p, row.estimate.value))
    out = {}
    for name, items in by_estimator.items():
        fit = fit_is([p for _, p, _ in items], [v for _, _, v in items])
        out[name] = dict(zip([k for k, _, _ in items], fit.apply([v for _, _, v in items]).tolist(), strict=True))
    return out


def summarize(rows: Iterable[ResultRow], cases: Mapping[str, Case], by_family: bool = False) -> list[Summary]:
    """Per (estimator, budget, depth) — or per (estimator, budget, depth, family) — scores of the bench's test
    rows (rows whose key is not in ``cases`` are ignored), the paper budget first."""
    pairs = [(row, cases[row.key]) for row in rows if row.key in cases]
    fitted = _fits(pairs)
    groups: dict[tuple[str, str, int, str | None], list[Pair]] = {}
    for row, case in pairs:
        key = (case.mode, row.estimator, exponent(case.answer), case.answer.family if by_family else None)
        groups.setdefault(key, []).append((row, case))
    naive = {mode: _speed([p for p in pairs if p[0].estimator == "naive" and p[1].mode == mode])
             for mode in BUDGET_MODES}
    order = {mode: i for i, mode in enumerate(BUDGET_MODES)}
    out = []
    for (mode, name, exp, family), group in sorted(groups.items(), key=lambda kv: (
            order[kv[0][0]], kv[0][1], -kv[0][2], kv[0][3] or "")):
        done = [(r.estimate, c.answer.exact_p, r.key) for r, c in group if r.estimate is not None]
        values = np.array([e.value for e, _, _ in done])
        truth = np.array([p for _, p, _ in done])
        fit = np.array([fitted[(name, mode)][k] for _, _, k in done])
        nonzero = values > 0
        with_ci = [(e.ci, p) for e, p, _ in done if e.ci is not None]
        covered = sum(ci.low <= p <= ci.high for ci, p in with_ci)
        low, high = clopper_pearson(covered, len(with_ci)) if with_ci else (None, None)
        se = [(e.std_error / p) ** 2 for e, p, _ in done if e.std_error is not None]
        speed, base = _speed(group), naive[mode]
        out.append(Summary(
            estimator=name, budget=mode, exponent=exp, family=family, rows=len(group), errors=len(group) - len(done),
            is_loss=float(itakura_saito_loss(truth, values).mean()) if done else math.inf,
            is_loss_fit=float(itakura_saito_loss(truth, fit).mean()) if done else None,
            log10_error=float(np.abs(np.log10(values[nonzero] / truth[nonzero])).mean()) if nonzero.any() else None,
            rel_rmse=float(np.sqrt((((values - truth) / truth) ** 2).mean())) if done else None,
            coverage=covered / len(with_ci) if with_ci else None, coverage_low=low, coverage_high=high,
            with_interval=len(with_ci), zero_rate=float((~nonzero).mean()) if done else None,
            reported_rel_se=math.sqrt(statistics.fmean(se)) if se else None,
            seconds=statistics.fmean(e.seconds for e, _, _ in done) if done else None,
            model_calls=statistics.fmean(e.model_calls for e, _, _ in done) if done else None,
            calls_per_second_vs_naive=speed / base if speed is not None and base else None,
            first_error=next((r.error.splitlines()[0] for r, _ in group if r.error), None)))
    return out


HEADER = ("estimator", "depth", "rows", "err", "IS loss", "IS fit", "|log10 err|", "rel RMSE", "coverage (95% CI)",
          "zeros", "rep. rel s.e.", "s/est", "calls", "speed vs naive")
TEMPERATURE_HEADER = ("estimator", "budget", "family", "temperature", "failed tuning runs", "IS loss of the rest")
MODE_TITLES = {PAPER: "Paper budget", FLOP_FAIR: "FLOP-fair budget"}


def _g(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else ("∞" if value == math.inf else f"{value:.{digits}g}")


def coverage_cell(share: float | None, low: float | None, high: float | None, n: int) -> str:
    """``0.95 [0.91, 0.98] of 200`` (``—`` without intervals)."""
    return "—" if share is None else f"{share:.2f} [{low:.2f}, {high:.2f}] of {n}"


def table_rows(summaries: Sequence[Summary]) -> list[list[str]]:
    """The summary as text cells, one row per (estimator, depth[, family]) (the budget is the section's)."""
    out = []
    for s in summaries:
        depth = f"1e{s.exponent}" + (f" {s.family}" if s.family else "")
        out.append([s.estimator, depth, str(s.rows), str(s.errors), _g(s.is_loss), _g(s.is_loss_fit),
                    _g(s.log10_error), _g(s.rel_rmse),
                    coverage_cell(s.coverage, s.coverage_low, s.coverage_high, s.with_interval),
                    _g(s.zero_rate, 2), _g(s.reported_rel_se), _g(s.seconds), _g(s.model_calls, 5),
                    _g(s.calls_per_second_vs_naive, 2)])
    return out


def temperature_rows(choices: Mapping[tuple[str, str, str], TemperatureChoice]) -> list[list[str]]:
    """One row per (tuned estimator, budget, family): the chosen temperature and its tuning score."""
    out = []
    for c in sorted(choices.values(), key=lambda c: (c.estimator, BUDGET_MODES.index(c.mode), c.family)):
        score = c.scores.get(c.temperature) if c.temperature is not None else None
        temp = "default (no tuning problems)" if c.temperature is None else (
            f"{c.temperature:.3g}" + ("" if c.scores else " (fixed)"))
        out.append([c.estimator, c.mode, c.family, temp, "—" if score is None else f"{score.failures} of {c.runs}",
                    "—" if score is None else _g(score.loss)])
    return out


def text_table(summaries: Sequence[Summary]) -> str:
    """The summary tables `lowprob bench known-answer` prints, one per budget."""
    return "\n\n".join(f"{MODE_TITLES[mode]}:\n{format_table(HEADER, table_rows(mine))}"
                       for mode in BUDGET_MODES if (mine := [s for s in summaries if s.budget == mode]))


def write_outputs(folder: Path, bench: Bench, outcome: Outcome) -> tuple[Path, Path, list[Summary]]:
    """``summary.md`` (problems, budgets, temperatures, skipped estimators, per budget the table pooled and per
    family, errors) and ``summary.json`` in ``folder``; returns them and the pooled summaries."""
    every = list(outcome.rows.values())
    pooled = summarize(every, outcome.cases)
    per_family = summarize(every, outcome.cases, by_family=True)
    problems = markdown_table(("spec", "family", "role", "exact p"),
                              [[f"`{a.spec}`", a.family, a.role, f"{a.exact_p:.10e}"]
                               for a in [*bench.tests, *bench.tuning]])
    modes = bench.selection.modes
    budgets = markdown_table(("estimator", *(MODE_TITLES[m] for m in modes)),
                             [[n, *(describe_budget(bench.budgets[(n, m)]) for m in modes)] for n in bench.estimators])
    left_out = "".join(f"- `{name}`: {why}\n" for name, why in sorted(bench.skipped.items())) or "- none\n"
    errors = "".join(f"- `{s.estimator}` ({s.budget}) at 1e{s.exponent}: {s.errors} of {s.rows}, e.g. "
                     f"{s.first_error}\n" for s in pooled if s.first_error) or "- none\n"
    sections = "".join(
        f"## {MODE_TITLES[mode]}\n\n### Scores per estimator and depth\n\n"
        f"{markdown_table(HEADER, table_rows([s for s in pooled if s.budget == mode]))}\n\n### Per family\n\n"
        f"{markdown_table(HEADER, table_rows([s for s in per_family if s.budget == mode]))}\n\n" for mode in modes)
    temps = (markdown_table(TEMPERATURE_HEADER, temperature_rows(outcome.choices)) if outcome.choices
             else "No estimator with a temperature option ran.")
    header = f"{describe_run(bench)} {completeness(bench, outcome)}."
    text = (f"# Known-answer bench\n\n{header}\n\n## Problems\n\n{problems}\n\n## Budgets\n\n{budgets}\n\n"
            f"## Temperatures chosen on the tuning problems\n\n{temps}\n\n## Estimators left out\n\n{left_out}\n"
            f"{sections}## Estimates that ended in an error\n\n{errors}")
    md, js = folder / "summary.md", folder / "summary.json"
    write_atomic(md, text)
    payload = {"note": describe_run(bench), "completeness": completeness(bench, outcome),
               "skipped": dict(bench.skipped),
               "problems": [{"model": a.model, "spec": a.spec, "target": a.target, "family": a.family, "role": a.role,
                             "exact_p": a.exact_p, "log10_p": a.exact.log10} for a in [*bench.tests, *bench.tuning]],
               "budgets": {n: {m: bench.budgets[(n, m)].model_dump(exclude_none=True) for m in modes}
                           for n in bench.estimators},
               "temperatures": [{"estimator": c.estimator, "budget": c.mode, "family": c.family,
                                 "temperature": c.temperature,
                                 "scores": [{"temperature": t, "failures": s.failures, "loss": _json_number(s.loss)}
                                            for t, s in sorted(c.scores.items())]}
                                for c in outcome.choices.values()],
               "summaries": [{k: _json_number(v) for k, v in asdict(s).items()} for s in [*pooled, *per_family]]}
    write_atomic(js, json.dumps(payload, indent=2, allow_nan=False) + "\n")
    return md, js, pooled


def describe_run(bench: Bench) -> str:
    """The line at the top of the summary: what ran."""
    return (f"{len(bench.tests)} test problems, {len(bench.tuning)} tuning problems; "
            f"{bench.selection.describe()}.")


def write_figures(folder: Path, outcome: Outcome, pooled: Sequence[Summary]) -> list[Path]:
    """Per budget ``estimates-<budget>-<family>`` (estimate against the exact value, log–log, one panel per
    estimator) and ``coverage-<budget>`` (95 % interval coverage per depth and estimator), as PNG and SVG."""
    from lowprob.figures import ScatterPanel, loss_bars, save_figure, scatter_grid

    pairs = [(row, outcome.cases[row.key]) for row in outcome.rows.values()
             if row.key in outcome.cases and row.estimate is not None]
    paths = []
    for mode in BUDGET_MODES:
        mine = [(r, c) for r, c in pairs if c.mode == mode]
        for family in sorted({c.answer.family for _, c in mine}):
            panels = []
            for name in sorted({r.estimator for r, c in mine if c.answer.family == family}):
                points = [(c.answer.exact_p, r.estimate.value) for r, c in mine
                          if c.answer.family == family and r.estimator == name and r.estimate is not None]
                zeros = sum(v == 0 for _, v in points)
                panels.append(ScatterPanel(name, [p for p, _ in points], [v for _, v in points], None,
                                           f"{zeros}/{len(points)} zero"))
            paths += save_figure(scatter_grid(f"{family}, {MODE_TITLES[mode]}: estimate vs exact probability",
                                              panels), folder / f"estimates-{mode}-{family}")
        lines = [s for s in pooled if s.budget == mode]
        if lines:
            depths = [f"1e{e}" for e in sorted({s.exponent for s in lines}, reverse=True)]
            values = {(f"1e{s.exponent}", s.estimator): s.coverage for s in lines}
            paths += save_figure(loss_bars(f"95 % interval coverage, {MODE_TITLES[mode]} (nominal 0.95)", depths,
                                           sorted({s.estimator for s in lines}), values, "coverage"),
                                 folder / f"coverage-{mode}")
    return paths


def _json_number(value: object) -> object:
    """Infinite losses as the string ``"inf"`` (JSON has no infinity)."""
    return "inf" if isinstance(value, float) and math.isinf(value) else value
