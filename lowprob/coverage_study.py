"""`lowprob bench coverage`: does each estimator's 95 % interval hold the truth as often as it claims?

Every registered estimator that reports error bars runs many seeded times (default 200) on planted targets
(exact truth; one near 1e-6, one at 1e-9) and on trained-model targets whose shipped ground truth has at least
100 hits (the rarest such token of a model and distribution, so the rule picks it without looking at any
estimate). Rows go through :mod:`lowprob.engine` like the known-answer bench, so a killed study resumes.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from lowprob.api import compile_problem, resolve_spec
from lowprob.bench import (
    BUDGET_MODES,
    PAPER,
    ProblemKey,
    budget_for,
    coverage_cell,
    describe_budget,
    known_answers,
    run_jobs,
    runnable_estimators,
)
from lowprob.core.budget import Budget
from lowprob.core.errors import LowprobError
from lowprob.core.estimator import Problem
from lowprob.core.stats import clopper_pearson
from lowprob.engine import Engine, Job
from lowprob.executors import Executor
from lowprob.ground_truth import load_shipped
from lowprob.plugins import Registry
from lowprob.report import format_table, markdown_table
from lowprob.results import ResultRow, RowSpec, write_atomic

EXPERIMENT = "bench-coverage"
"""The ``experiment`` field of every coverage-study row (part of each row's key)."""
DEFAULT_PLANTED = ("planted-threshold-e6", "planted-threshold-e9")
"""Planted targets: the threshold family (the one where gradient methods find hits) near 1e-6 and at 1e-9."""
DEFAULT_TRAINED = (("lowprob-1l", "camel"), ("lowprob-1l", "hex"))
"""Trained-model pairs: the default model on two factorized distributions (every estimator runs on them; caps
is a mixture, which the factorized-only estimators refuse), camel as in issue 13 and hex as in docs/estimators."""
MIN_HITS = 100
DEFAULT_RUNS = 200
DEFAULT_CALLS = 4096
NOMINAL = (0.90, 0.98)
"""Coverage of a 95 % interval outside this range is flagged."""
QUICK_RUNS = 4
QUICK_CALLS = 256
QUICK_SKIP = {"tsmc-ctl": "trains its twist for ~15 s per estimate (excluded from --quick)",
              "mhis": "its default burn-in alone needs ~98k calls (excluded from --quick)"}


@dataclass(frozen=True)
class Target:
    """One problem of the study and its truth: exact (planted) or a shipped ground-truth frequency with its
    hits, samples and Clopper–Pearson interval (trained)."""

    model: str
    distribution: str
    target: str
    truth: float
    kind: str
    hits: int | None = None
    samples: int | None = None

    @property
    def name(self) -> str:
        """``planted-threshold-e9``, or ``lowprob-1l/camel #596`` for a trained-model token."""
        if self.hits is None:
            return self.distribution
        return f"{self.model}/{self.distribution} {self.target.removeprefix('argmax == ')}"

    @property
    def key(self) -> ProblemKey:
        return self.model, self.distribution, self.target

    def describe_truth(self) -> str:
        if self.hits is None or self.samples is None:
            return f"{self.truth:.6e} (exact)"
        low, high = clopper_pearson(self.hits, self.samples)
        return f"{self.truth:.4e} ({self.hits} hits in {self.samples}; 95 % CI [{low:.3e}, {high:.3e}])"


def planted_target(registry: Registry, spec: str) -> Target:
    """The known-answer problem ``spec`` (any role) as a study target."""
    for answer in known_answers(registry, ("test", "tuning", "calibration")):
        if answer.spec == spec:
            return Target(answer.model, answer.spec, answer.target, answer.exact_p, "exact")
    raise LowprobError(f"no planted problem {spec!r} (`lowprob bench known-answer --list` lists them)")


def trained_target(model: str, distribution: str, min_hits: int = MIN_HITS) -> Target:
    """The rarest token (ties: the lowest id) with at least ``min_hits`` hits in the shipped ground truth of
    ``model`` on ``distribution``: the deepest target whose truth is still known to about 1/√min_hits."""
    truth = load_shipped(model, distribution)
    eligible = np.flatnonzero(truth.counts >= min_hits)
    if not len(eligible):
        raise LowprobError(f"the ground truth of {model}/{distribution} has no token with {min_hits} hits")
    token = int(eligible[np.argmin(truth.counts[eligible])])
    return Target(model, distribution, f"argmax == #{token}", truth.probability(token), "ground truth",
                  truth.hits(token), truth.samples)


def parse_pair(text: str) -> tuple[str, str]:
    """``MODEL/DISTRIBUTION`` as a pair."""
    model, sep, dist = text.partition("/")
    if not sep or not model or not dist:
        raise LowprobError(f"--trained: expected MODEL/DISTRIBUTION like lowprob-1l/caps, got {text!r}")
    return model, dist


@dataclass(frozen=True)
class Study:
    """A planned coverage study: targets, their problems, estimators, budgets, jobs and what each scores."""

    targets: list[Target]
    problems: dict[ProblemKey, Problem]
    estimators: list[str]
    budgets: dict[str, Budget]
    runs: int
    jobs: list[Job]
    target_of: dict[str, Target]
    skipped: dict[str, str]

    def describe(self) -> str:
        budgets = sorted({describe_budget(b) for b in self.budgets.values()})
        return (f"{len(self.targets)} targets × {len(self.estimators)} estimators × {self.runs} seeded runs "
                f"(seeds 0 … {self.runs - 1}); budgets: {'; '.join(budgets)}")


def prepare(registry: Registry, planted: Sequence[str], trained: Sequence[tuple[str, str]], runs: int,
            calls: int, mode: str = PAPER, estimators: Sequence[str] = (), quick: bool = False) -> Study:
    """Targets, every runnable estimator that reports error bars (or ``estimators``) and one job per
    (target, estimator, seed); a trained target's distribution must be the one its ground truth counted."""
    if runs < 1:
        raise LowprobError(f"runs must be at least 1, got {runs}")
    if mode not in BUDGET_MODES:
        raise LowprobError(f"unknown budget {mode!r}; choose from {', '.join(BUDGET_MODES)}")
    targets = [planted_target(registry, s) for s in planted] + [trained_target(m, d) for m, d in trained]
    if not targets:
        raise LowprobError("no targets: give --planted or --trained")
    skip = {k: v for k, v in QUICK_SKIP.items() if quick and k not in estimators}
    names, skipped = runnable_estimators(registry, estimators, skip)
    for name in list(names):
        if not registry.estimator(name).capabilities.has_error_bars:
            names.remove(name)
            skipped[name] = "reports no error bars"
    if not names:
        raise LowprobError("no estimator with error bars left to run")
    problems = {}
    for t in targets:
        problem = compile_problem(registry, resolve_spec(t.distribution, registry), model=t.model, target=t.target)
        if t.kind == "ground truth":
            counted = load_shipped(t.model, t.distribution).distribution_hash
            if counted != problem.distribution.content_hash:
                raise LowprobError(f"the ground truth of {t.model}/{t.distribution} was counted on another "
                                   f"distribution (hash {counted}, the spec gives {problem.distribution.content_hash})")
        problems[t.key] = problem
    budgets = {n: budget_for(registry, n, mode, calls) for n in names}
    jobs, target_of = [], {}
    for t in targets:
        for name in names:
            for seed in range(runs):
                job = Job(RowSpec(experiment=EXPERIMENT, model=t.model, distribution=t.distribution,
                                  distribution_hash=problems[t.key].distribution.content_hash, target=t.target,
                                  estimator=name, label=name, budget=budgets[name], seed=seed))
                jobs.append(job)
                target_of[job.key] = t
    return Study(targets, problems, names, budgets, runs, jobs, target_of, skipped)


def run(study: Study, registry: Registry, results: Path, executor: Executor | None = None) -> tuple[int, Engine]:
    """Run every pending job into ``results`` (resumable); returns how many rows were new and the engine."""
    engine = Engine(results)
    new = sum(1 for _ in run_jobs(study.problems, registry, engine, study.jobs, executor))
    return new, engine


@dataclass(frozen=True)
class CoverageLine:
    """One estimator on one target (``target`` ``None``: pooled over the targets).

    ``coverage``: share of the runs with an interval whose interval holds the truth, with its Clopper–Pearson
    95 % interval; ``low``/``high``: shares of those runs whose interval lies wholly below/above the truth
    (coverage + low + high = 1); ``mean_ratio``/``median_ratio``: of estimate / truth over the runs that
    returned; ``zeros``: share of exact-zero estimates; ``flag``: why the line is out of line, if it is.
    """

    estimator: str
    target: str | None
    runs: int
    errors: int
    with_interval: int
    covered: int
    coverage: float | None
    coverage_low: float | None
    coverage_high: float | None
    low: float | None
    high: float | None
    mean_ratio: float | None
    median_ratio: float | None
    zeros: float | None
    seconds: float | None
    flag: str | None
    first_error: str | None = None


def _line(name: str, target: str | None, group: Sequence[tuple[ResultRow, Target]]) -> CoverageLine:
    done = [(r.estimate, t.truth) for r, t in group if r.estimate is not None]
    ratios = [e.value / p for e, p in done]
    with_ci = [(e.ci, p) for e, p in done if e.ci is not None]
    covered = sum(ci.low <= p <= ci.high for ci, p in with_ci)
    below = sum(ci.high < p for ci, p in with_ci)
    n = len(with_ci)
    low, high = clopper_pearson(covered, n) if n else (None, None)
    share = covered / n if n else None
    if share is None:
        flag: str | None = "no intervals"
    elif not NOMINAL[0] <= share <= NOMINAL[1]:
        flag = f"coverage {share:.3f} outside {NOMINAL[0]:.0%}–{NOMINAL[1]:.0%}"
    else:
        flag = None
    return CoverageLine(
        estimator=name, target=target, runs=len(group), errors=len(group) - len(done), with_interval=n,
        covered=covered, coverage=share, coverage_low=low, coverage_high=high,
        low=below / n if n else None, high=(n - covered - below) / n if n else None,
        mean_ratio=statistics.fmean(ratios) if ratios else None,
        median_ratio=statistics.median(ratios) if ratios else None,
        zeros=sum(e.value == 0 for e, _ in done) / len(done) if done else None,
        seconds=statistics.fmean(e.seconds for e, _ in done) if done else None, flag=flag,
        first_error=next((r.error.splitlines()[0] for r, _ in group if r.error), None))


def summarize(rows: Iterable[ResultRow], target_of: Mapping[str, Target]) -> list[CoverageLine]:
    """Per estimator: one line per target (in the study's order), then one pooled over them (rows whose key is
    not in ``target_of`` are ignored)."""
    pairs = [(row, target_of[row.key]) for row in rows if row.key in target_of]
    order = list(dict.fromkeys(t.name for t in target_of.values()))
    out = []
    for name in sorted({r.estimator for r, _ in pairs}):
        mine = [(r, t) for r, t in pairs if r.estimator == name]
        for target in order:
            group = [(r, t) for r, t in mine if t.name == target]
            if group:
                out.append(_line(name, target, group))
        out.append(_line(name, None, mine))
    return out


HEADER = ("estimator", "target", "runs", "err", "coverage (95% CI)", "low", "high", "mean p̂/p", "median p̂/p",
          "zeros", "s/run", "flag")


def _g(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}g}"


def table_rows(lines: Sequence[CoverageLine]) -> list[list[str]]:
    """The lines as text cells."""
    return [[c.estimator, c.target or "all", str(c.runs), str(c.errors),
             coverage_cell(c.coverage, c.coverage_low, c.coverage_high, c.with_interval), _g(c.low, 2),
             _g(c.high, 2), _g(c.mean_ratio), _g(c.median_ratio), _g(c.zeros, 2), _g(c.seconds), c.flag or ""]
            for c in lines]


def text_table(lines: Sequence[CoverageLine]) -> str:
    """The table `lowprob bench coverage` prints."""
    return format_table(HEADER, table_rows(lines))


def write_outputs(folder: Path, study: Study, lines: Sequence[CoverageLine]) -> list[Path]:
    """``coverage.md``, ``coverage.json`` and the figure ``coverage-study.png|svg`` in ``folder``."""
    from lowprob.figures import loss_bars, save_figure

    targets = markdown_table(("target", "truth"), [[f"`{t.name}`", t.describe_truth()] for t in study.targets])
    budgets = markdown_table(("estimator", "budget"), [[n, describe_budget(b)] for n, b in study.budgets.items()])
    left_out = "".join(f"- `{n}`: {why}\n" for n, why in sorted(study.skipped.items())) or "- none\n"
    flagged = "".join(f"- `{c.estimator}` on {c.target or 'all targets'}: {c.flag}\n" for c in lines if c.flag) or \
        "- none\n"
    errors = "".join(f"- `{c.estimator}` on {c.target}: {c.errors} of {c.runs}, e.g. {c.first_error}\n"
                     for c in lines if c.first_error and c.target) or "- none\n"
    text = (f"# Coverage study\n\n{study.describe()}.\n\n## Targets\n\n{targets}\n\n## Budgets\n\n{budgets}\n\n"
            f"## Estimators left out\n\n{left_out}\n## Coverage of the 95 % interval\n\n"
            f"{markdown_table(HEADER, table_rows(lines))}\n\n## Flagged (coverage outside "
            f"{NOMINAL[0]:.0%}–{NOMINAL[1]:.0%})\n\n{flagged}\n## Runs that ended in an error\n\n{errors}")
    md, js = folder / "coverage.md", folder / "coverage.json"
    write_atomic(md, text)
    payload = {"note": study.describe(), "skipped": dict(study.skipped),
               "targets": [asdict(t) for t in study.targets],
               "budgets": {n: b.model_dump(exclude_none=True) for n, b in study.budgets.items()},
               "lines": [asdict(c) for c in lines]}
    write_atomic(js, json.dumps(payload, indent=2, allow_nan=False) + "\n")
    per_target = [c for c in lines if c.target is not None]
    values = {(c.target, c.estimator): c.coverage for c in per_target if c.target is not None}
    figure = loss_bars(f"95 % interval coverage over {study.runs} runs (nominal 0.95)",
                       [t.name for t in study.targets], sorted({c.estimator for c in per_target}), values, "coverage")
    return [md, js, *save_figure(figure, folder / "coverage-study")]


def projected_hours(lines: Sequence[CoverageLine], runs: int = DEFAULT_RUNS) -> float:
    """Hours of estimation the measured per-target lines would take at ``runs`` runs each (their mean
    seconds per run; one thread unless the runs had more)."""
    return sum((c.seconds or 0.0) * runs for c in lines if c.target is not None) / 3600
