"""Reference values below brute force: two unbiased estimators of different families, run in seeded rounds until
each is precise, accepted only when they agree (docs/references.md).

A reference file is an ordinary results file (:mod:`lowprob.results`) of *rounds*: one :class:`ResultRow` per
(problem, method, round), tagged ``experiment = "lowprob-reference/1"``, written by :class:`lowprob.engine.Engine`,
so a killed run keeps every finished round and continues at the next, and files of several machines merge by
concatenation (a repeated round is counted once). Everything else — each method's pooled value, the agreement
test, the combined value — is a pure function of the rows (:func:`pool`, :func:`judge`), recomputed on read.
:func:`paper_targets` then picks the paper regime's test tokens, each with its :class:`TargetTruth`: a fresh
brute-force count where it has enough hits, else an accepted reference.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field
from scipy import stats

from lowprob.api import CompiledSource, compile_source, resolve_spec, run_problem
from lowprob.config_files import StrictModel
from lowprob.core.budget import Budget
from lowprob.core.errors import LowprobError
from lowprob.core.estimator import Problem
from lowprob.core.meter import MeteredModel
from lowprob.core.target import ArgmaxIs
from lowprob.engine import Engine, Job
from lowprob.ground_truth import GroundTruth
from lowprob.plugins import Registry
from lowprob.protocol import Band
from lowprob.results import ResultRow, ResultsFile, RowSpec, write_atomic
from lowprob.shards import compare_counts

EXPERIMENT = "lowprob-reference/1"
"""The ``experiment`` of every round row; a reference file holds nothing else."""
SEED_BASE = 1 << 62
"""Every reference seed lies in [2^62, 2^63): disjoint from every seed below 2^62 — the 60-bit seeds of
``lowprob reproduce``, the small integer seeds of ``lowprob run``, ``estimate`` and the bench."""
SPREAD_MIN_ROUNDS = 4
"""From this many rounds on, a method's standard error is at least the spread between its rounds."""
DEFAULT_METHODS = ("tsmc", "itgis")

Status = Literal["accepted", "disagree", "imprecise", "no-estimate", "single", "running"]


class ReferenceMethod(StrictModel):
    """One estimator of a reference: the registered name, a label (its key in the file) and fixed options."""

    estimator: str
    label: str = ""
    options: dict[str, Any] = Field(default_factory=dict)

    @property
    def key(self) -> str:
        return self.label or self.estimator


class ReferenceRules(StrictModel):
    """When a method stops and when two methods make a reference."""

    round_calls: int = Field(default=1 << 16, ge=1, description="model calls per round (the unit of resume)")
    max_calls: int = Field(default=1 << 21, ge=1, description="cap on one method's calls over all its rounds")
    target_rel_error: float = Field(default=0.1, gt=0, lt=1, description="a method stops once its pooled "
                                    "relative standard error is at most this")
    sigmas: float = Field(default=3.0, gt=0, description="agreement: |a − b| ≤ sigmas × √(se_a² + se_b²)")
    max_rel_error: float = Field(default=0.3, gt=0, lt=1, description="an accepted reference's combined "
                                 "relative error is at most this (a 12-hit ground truth's)")
    level: float = Field(default=0.95, gt=0, lt=1, description="level of the combined interval")


def reference_seed(model: str, distribution: str, target: str, method: str, round_calls: int, index: int) -> int:
    """Round ``index`` of ``method``'s reference on (model, distribution, target): a hash, forced into
    [2^62, 2^63) so no test run's seed can equal it (:data:`SEED_BASE`)."""
    ident = json.dumps(["lowprob-reference", model, distribution, target, method, round_calls, index])
    low = int.from_bytes(hashlib.sha256(ident.encode()).digest()[:8], "little") & (SEED_BASE - 1)
    return SEED_BASE | low


@dataclass(frozen=True)
class Pooled:
    """One method's rounds pooled: the calls-weighted mean of the round values (unbiased when each round is)
    and its standard error, the larger of the rounds' own errors combined and, from :data:`SPREAD_MIN_ROUNDS`
    rounds, the spread between rounds."""

    label: str
    estimator: str
    options: dict[str, Any]
    rounds: int
    calls: float
    seconds: float
    value: float
    std_error: float | None
    errors: tuple[str, ...] = ()
    largest_round: float = 0.0

    @property
    def rel_error(self) -> float:
        """``std_error / value``; ``inf`` without a positive value or an error bar."""
        if self.std_error is None or not self.value > 0:
            return math.inf
        return self.std_error / self.value

    def settled(self, rules: ReferenceRules) -> bool:
        """Whether the run has met its stopping rule: the target relative error, the call cap (one more round of
        its largest size would pass it), or an error."""
        return (bool(self.errors) or self.rel_error <= rules.target_rel_error
                or self.calls + self.largest_round > rules.max_calls)

    def usable(self) -> bool:
        """Whether the run can enter the agreement test: a positive value with a positive error bar, no error."""
        return not self.errors and self.value > 0 and self.std_error is not None and self.std_error > 0

    def to_json(self) -> dict[str, Any]:
        return {"label": self.label, "estimator": self.estimator, "options": self.options, "rounds": self.rounds,
                "calls": self.calls, "seconds": round(self.seconds, 1), "value": self.value,
                "std_error": self.std_error, "rel_error": _finite(self.rel_error), "errors": list(self.errors)}


def pool(rows: Sequence[ResultRow]) -> Pooled:
    """The rounds of one method (same estimator, label and options) pooled into one estimate."""
    if not rows:
        raise LowprobError("no rounds to pool")
    first = rows[0]
    errors = tuple(r.error for r in rows if r.error is not None)
    done = [r.estimate for r in rows if r.estimate is not None]
    calls = sum(e.model_calls for e in done)
    seconds = sum(e.seconds for e in done)
    if not done or calls <= 0:
        return Pooled(first.label, first.estimator, first.options, len(rows), calls, seconds, 0.0, None, errors,
                      max((r.budget.model_calls or 0 for r in rows), default=0))
    weights = [e.model_calls / calls for e in done]
    value = sum(w * e.raw_value for w, e in zip(weights, done, strict=True))
    own: float | None = None
    if all(e.std_error is not None for e in done):
        own = math.sqrt(sum((w * (e.std_error or 0.0)) ** 2 for w, e in zip(weights, done, strict=True)))
    se = own
    if len(done) >= SPREAD_MIN_ROUNDS:
        n = len(done)
        spread = math.sqrt(n / (n - 1) * sum((w * (e.raw_value - value)) ** 2
                                             for w, e in zip(weights, done, strict=True)))
        se = spread if own is None else max(own, spread)
    return Pooled(first.label, first.estimator, first.options, len(rows), calls, seconds, value, se, errors,
                  max((r.budget.model_calls or 0 for r in rows), default=0))


@dataclass(frozen=True)
class Reference:
    """The verdict on one (model, distribution, target): every method's pooled run, the largest pairwise
    discrepancy in combined standard errors, and — only when ``accepted`` — the combined value.

    ``status``: ``accepted`` (every pair agrees within ``sigmas`` and the combined relative error is small
    enough), ``disagree`` (some pair does not: stored and reported, never averaged), ``imprecise`` (they agree
    but the combined value is too uncertain), ``no-estimate`` (a run has no positive value with an error bar,
    or failed), ``single`` (fewer than two estimators), ``running`` (a run has met neither its target relative
    error nor its call cap: no verdict on unfinished runs).
    """

    model: str
    distribution: str
    distribution_hash: str
    target: str
    runs: tuple[Pooled, ...]
    status: Status
    discrepancy: float | None
    value: float | None
    std_error: float | None
    ci: tuple[float, float] | None
    level: float

    @property
    def accepted(self) -> bool:
        return self.status == "accepted"

    @property
    def token(self) -> int | None:
        """The token of an ``argmax == #id`` target, else ``None``."""
        return target_token(self.target)

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "distribution": self.distribution, "distribution_hash": self.distribution_hash,
                "target": self.target, "status": self.status, "discrepancy": self.discrepancy,
                "value": self.value, "std_error": self.std_error, "ci": list(self.ci) if self.ci else None,
                "level": self.level, "runs": [r.to_json() for r in self.runs]}


def target_token(target: str) -> int | None:
    """The token id of a target written ``argmax == #id``."""
    head, _, tail = target.partition("#")
    return int(tail) if head.replace(" ", "") == "argmax==" and tail.isdigit() else None


def judge(model: str, distribution: str, distribution_hash: str, target: str, runs: Sequence[Pooled],
          rules: ReferenceRules) -> Reference:
    """The acceptance rule: every pair of runs within ``rules.sigmas`` combined standard errors; then the
    inverse-variance weighted mean, with a log-normal interval (positive, relative error as the s.e.)."""
    runs = tuple(sorted(runs, key=lambda r: r.label))

    def verdict(status: Status, discrepancy: float | None = None, value: float | None = None,
                se: float | None = None, ci: tuple[float, float] | None = None) -> Reference:
        return Reference(model, distribution, distribution_hash, target, runs, status, discrepancy, value, se, ci,
                         rules.level)

    if len({r.estimator for r in runs}) < 2:
        return verdict("single")
    if not all(r.settled(rules) for r in runs):
        return verdict("running")
    if not all(r.usable() for r in runs):
        return verdict("no-estimate")
    worst = max(abs(a.value - b.value) / math.hypot(a.std_error or 0.0, b.std_error or 0.0)
                for i, a in enumerate(runs) for b in runs[i + 1:])
    if worst > rules.sigmas:
        return verdict("disagree", worst)
    precision = sum(1 / (r.std_error or 1.0) ** 2 for r in runs)
    value = sum(r.value / (r.std_error or 1.0) ** 2 for r in runs) / precision
    se = 1 / math.sqrt(precision)
    half = float(stats.norm.ppf(0.5 + rules.level / 2))
    ci = (value * math.exp(-half * se / value), value * math.exp(half * se / value))
    return verdict("accepted" if se / value <= rules.max_rel_error else "imprecise", worst, value, se, ci)


def _finite(x: float) -> float | str:
    return x if math.isfinite(x) else "inf"


@dataclass(frozen=True)
class ReferenceProblem:
    """A (model, distribution, target) to take a reference of: the names its rows carry and a maker of fresh
    problems (one metered model per round)."""

    model: str
    distribution: str
    distribution_hash: str
    target: str
    make: Callable[[], Problem]

    @classmethod
    def compile(cls, registry: Registry, model: str, distribution: str, target: str) -> ReferenceProblem:
        """``target`` is a spec target name or an expression such as ``argmax == #123``."""
        spec = resolve_spec(distribution, registry)
        source = compile_source(registry, spec, model=model, targets=[target])
        return cls(model, spec.name, source.spec.distribution(None).content_hash, target,
                   lambda: source.problem(None, target))

    @classmethod
    def argmax(cls, source: CompiledSource, distribution: str, token: int) -> ReferenceProblem:
        """The target ``argmax == #token`` on the default distribution of a compiled spec (no recompiling)."""
        dist, model = source.spec.distribution(None), source.model
        if not 0 <= token < model.d_vocab:
            raise LowprobError(f"token {token} is outside the vocabulary of {model.name!r} (d_vocab {model.d_vocab})")
        target = ArgmaxIs(token, model.vocab.token_string(token))
        return cls(model.name, distribution, dist.content_hash, f"argmax == #{token}",
                   lambda: Problem(MeteredModel(model), dist, target))


def check_methods(registry: Registry, methods: Sequence[ReferenceMethod]) -> None:
    """Refuse, before any model work, an unknown or biased estimator, bad options, or two methods with one label."""
    labels = [m.key for m in methods]
    if len(set(labels)) != len(labels):
        raise LowprobError(f"reference methods need distinct labels, got {labels}")
    for m in methods:
        cls = registry.estimator(m.estimator)
        if not cls.capabilities.unbiased:
            raise LowprobError(f"estimator {m.estimator!r} is not unbiased; a reference needs unbiased estimators "
                               "(e.g. tsmc, itgis, gams, naive)")
        registry.create_estimator(m.estimator, m.options)


class ReferenceRunner:
    """Runs the rounds of references into one results file through the engine; every round already there is
    reused, so a rerun (or a second process with ``first_round`` past the first's) continues."""

    def __init__(self, registry: Registry, engine: Engine, methods: Sequence[ReferenceMethod],
                 rules: ReferenceRules | None = None, first_round: int = 0) -> None:
        check_methods(registry, methods)
        self.registry, self.engine, self.methods = registry, engine, tuple(methods)
        self.rules, self.first_round = rules or ReferenceRules(), first_round

    def spec(self, problem: ReferenceProblem, method: ReferenceMethod, index: int) -> RowSpec:
        """The row spec of round ``index`` (its seed from :func:`reference_seed`)."""
        backward = self.registry.estimator(method.estimator).paper_budget().backward_weight
        seed = reference_seed(problem.model, problem.distribution, problem.target, method.key,
                              self.rules.round_calls, index)
        return RowSpec(experiment=EXPERIMENT, model=problem.model, distribution=problem.distribution,
                       distribution_hash=problem.distribution_hash, target=problem.target,
                       estimator=method.estimator, label=method.key, options=method.options,
                       budget=Budget(model_calls=self.rules.round_calls, backward_weight=backward), seed=seed)

    def rounds(self, problem: ReferenceProblem, method: ReferenceMethod) -> list[ResultRow]:
        """Every round of ``method`` on ``problem`` in the file, whatever its round size."""
        return [r for r in self.engine.rows.values() if r.experiment == EXPERIMENT and _same_run(r, problem, method)]

    def finished(self, pooled: Pooled) -> bool:
        """A method stops when settled (:meth:`Pooled.settled`) or when this runner's next round would pass the cap."""
        return pooled.settled(self.rules) or pooled.calls + self.rules.round_calls > self.rules.max_calls

    def run(self, problem: ReferenceProblem, on_round: Callable[[ResultRow, Pooled], None] | None = None
            ) -> Reference:
        """Run each method's rounds until it is finished, then judge."""
        for method in self.methods:
            index = self.first_round
            while True:
                rows = self.rounds(problem, method)
                if rows and self.finished(pool(rows)):
                    break
                job = Job(self.spec(problem, method, index))
                index += 1
                if self.engine.done(job):
                    continue
                row = self._compute(problem, method, job)
                self.engine.write(row)
                if on_round is not None:
                    on_round(row, pool(self.rounds(problem, method)))
        return self.judge(problem)

    def judge(self, problem: ReferenceProblem) -> Reference:
        """The verdict from the rounds in the file now."""
        runs = [pool(rows) for m in self.methods if (rows := self.rounds(problem, m))]
        return judge(problem.model, problem.distribution, problem.distribution_hash, problem.target, runs,
                     self.rules)

    def _compute(self, problem: ReferenceProblem, method: ReferenceMethod, job: Job) -> ResultRow:
        spec = job.spec
        try:
            estimate = run_problem(self.registry, problem.make(), method.estimator,
                                   method.options, spec.budget, spec.seed or 0, level=self.rules.level,
                                   progress=False)
        except LowprobError as exc:
            return ResultRow.of(spec, error=f"{type(exc).__name__}: {exc}")
        return ResultRow.of(spec, estimate=estimate.model_copy(update={"trace": []}))


def _same_run(row: ResultRow, problem: ReferenceProblem, method: ReferenceMethod) -> bool:
    return (row.model, row.distribution, row.distribution_hash, row.target, row.estimator, row.label,
            row.options) == (problem.model, problem.distribution, problem.distribution_hash, problem.target,
                             method.estimator, method.key, method.options)


def read_rounds(path: Path | str) -> list[ResultRow]:
    """The rounds of a reference file, validated: every line a results row (``file:line`` otherwise, see
    :class:`ResultsFile`), every row a reference round (its experiment, a seed in the reference range, an
    unbiased estimate, one option set per label and target)."""
    path = Path(path)
    if not path.is_file():
        raise LowprobError(f"no reference file at {path}")
    rows = ResultsFile(path).rows()
    lines = _line_numbers(path)
    seen: dict[tuple[str, ...], tuple[str, dict[str, Any]]] = {}
    for row in rows:
        where = f"{path}:{lines.get(row.key, '?')}"
        if row.experiment != EXPERIMENT:
            raise LowprobError(f"{where}: not a reference round (experiment {row.experiment!r}, expected "
                               f"{EXPERIMENT!r}); reference files hold only `lowprob reference` rounds")
        if row.seed is None or not SEED_BASE <= row.seed < 2 * SEED_BASE or row.target is None:
            raise LowprobError(f"{where}: seed {row.seed} is outside the reference range [2^62, 2^63) "
                               "(it could coincide with a test run's)")
        if row.estimate is not None and not row.estimate.unbiased:
            raise LowprobError(f"{where}: estimator {row.estimator!r} is not unbiased; it cannot be a reference")
        ident = (*_problem_key(row), row.label)
        if seen.setdefault(ident, (row.estimator, row.options)) != (row.estimator, row.options):
            raise LowprobError(f"{where}: label {row.label!r} names two estimators or option sets on one "
                               "target; give them distinct labels")
    return rows


def _problem_key(row: ResultRow) -> tuple[str, str, str, str]:
    return row.model, row.distribution, row.distribution_hash, row.target or ""


def _line_numbers(path: Path) -> dict[str, int]:
    lines: dict[str, int] = {}
    for number, raw in enumerate(path.read_bytes().split(b"\n"), start=1):
        try:
            key = json.loads(raw).get("key")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            continue
        if isinstance(key, str):
            lines.setdefault(key, number)
    return lines


def read_all(paths: Iterable[Path | str]) -> list[ResultRow]:
    """The rounds of several reference files together, a round repeated across files once."""
    rows: dict[str, ResultRow] = {}
    for path in paths:
        for row in read_rounds(path):
            rows.setdefault(row.key, row)
    return list(rows.values())


def references(rows: Iterable[ResultRow], rules: ReferenceRules | None = None) -> list[Reference]:
    """One verdict per (model, distribution, target) of the rounds, sorted."""
    rules = rules or ReferenceRules()
    problems: dict[tuple[str, str, str, str], dict[str, list[ResultRow]]] = {}
    for row in rows:
        problems.setdefault(_problem_key(row), {}).setdefault(row.label, []).append(row)
    return [judge(*key, [pool(rounds) for rounds in by_label.values()], rules)
            for key, by_label in sorted(problems.items())]


def load_references(paths: Iterable[Path | str], rules: ReferenceRules | None = None) -> list[Reference]:
    """The verdicts of one or more reference files (their rounds pooled)."""
    return references(read_all(paths), rules)


def merge_files(paths: Sequence[Path | str], output: Path | str) -> int:
    """Write the rounds of every file (validated) into ``output`` atomically, each round once; returns the count."""
    rows = read_all(paths)
    write_atomic(Path(output), "".join(json.dumps(r.model_dump(mode="json"), sort_keys=True, allow_nan=False) + "\n"
                                       for r in rows))
    return len(rows)


def reference_files(path: Path | str) -> list[Path]:
    """A reference file, or every ``*.jsonl`` under a folder (sorted); none for a path that does not exist."""
    path = Path(path)
    if path.is_dir():
        return sorted(path.rglob("*.jsonl"))
    return [path] if path.exists() else []


def accepted_references(path: Path | str, model: str, distribution: str, distribution_hash: str
                        ) -> dict[int, float]:
    """The accepted reference value of every ``argmax == #id`` target of (model, distribution) under ``path``."""
    return {r.token: float(r.value) for r in load_references(reference_files(path))
            if r.accepted and r.token is not None and r.value is not None
            and (r.model, r.distribution, r.distribution_hash) == (model, distribution, distribution_hash)}


TruthSource = Literal["brute-force", "reference"]


@dataclass(frozen=True)
class TargetTruth:
    """A paper-regime test token's true value and where it comes from: a fresh brute-force count with enough
    hits (preferred) or an accepted reference; ``hits``/``samples`` are the fresh count's (also for a
    reference-scored token, when a count exists) and ``reference`` the accepted reference (also when brute
    force is preferred), so both are reported."""

    token: int
    source: TruthSource
    value: float
    hits: int | None = None
    samples: int | None = None
    reference: float | None = None

    def describe(self) -> str:
        count = f"{self.hits}/{self.samples} fresh hits" if self.samples else "no fresh count"
        ref = f"reference {self.reference:.3g}" if self.reference is not None else "no reference"
        return f"#{self.token} {self.value:.3g} ({self.source}; {count}; {ref})"

    def to_json(self) -> dict[str, Any]:
        return {"token": self.token, "source": self.source, "value": self.value, "hits": self.hits,
                "samples": self.samples, "reference": self.reference}


@dataclass(frozen=True)
class PaperTargets:
    """The test tokens of one (model, distribution) in the paper regime: chosen in seeded order, how many
    qualified, each chosen token's :class:`TargetTruth`, and what was read (for ``--dry-run``)."""

    tokens: tuple[int, ...]
    candidates: int
    truths: dict[int, TargetTruth]
    sources: str


def fresh_count(path: Path, shipped: GroundTruth) -> GroundTruth:
    """A brute-force file of the same model and distribution as ``shipped`` whose shards are disjoint from it
    (the shipped counts chose the test tokens; reusing their inputs would carry that selection over)."""
    fresh = GroundTruth.load(path)
    name, shared = compare_counts(fresh, shipped, ("model", "distribution", "distribution_hash", "d_vocab"))
    if name is not None:
        raise LowprobError(f"{path}: brute-force file has {name} {getattr(fresh, name)!r}, the shipped ground "
                           f"truth {getattr(shipped, name)!r}; it counts something else")
    if shared:
        raise LowprobError(f"{path}: brute-force file shares {len(shared)} shard seed(s) with the shipped ground "
                           f"truth (first {shared[0]}); its inputs chose the test tokens, so count fresh shards "
                           "(`lowprob ground-truth run --first-seed` past the shipped seeds)")
    return fresh


def paper_targets(shipped: GroundTruth, band: Band, n: int, seed: int | Sequence[int], min_count: int,
                  references: Path | str | None = None, brute_force: Path | str | None = None) -> PaperTargets:
    """Test tokens of the paper regime, drawn by a seeded permutation of the sorted ids of every token whose
    truth lies in ``band``: a fresh brute-force count (``brute_force/<model>/<distribution>.json``, checked by
    :func:`fresh_count`) with at least ``min_count`` hits is the truth where it exists, else an accepted
    reference under ``references``; a missing brute-force file means no brute-force truths."""
    refs = ({} if references is None else
            accepted_references(references, shipped.model, shipped.distribution, shipped.distribution_hash))
    said = [] if references is None else [f"{len(refs)} accepted reference(s) under {references}"]
    fresh: GroundTruth | None = None
    if brute_force is not None:
        path = Path(brute_force) / shipped.model / f"{shipped.distribution}.json"
        fresh = fresh_count(path, shipped) if path.is_file() else None
        said.append(f"brute force {path}: {fresh.samples} samples" if fresh else f"no brute-force file at {path}")
    truths: dict[int, TargetTruth] = {}
    for token in sorted(set(refs) | (set(np.flatnonzero(fresh.counts >= min_count).tolist()) if fresh else set())):
        hits, samples = (fresh.hits(token), fresh.samples) if fresh else (None, None)
        if fresh and fresh.hits(token) >= min_count:
            truth = TargetTruth(token, "brute-force", fresh.probability(token), hits, samples, refs.get(token))
        else:
            truth = TargetTruth(token, "reference", refs[token], hits, samples, refs[token])
        if band.contains(truth.value):
            truths[token] = truth
    chosen = np.random.default_rng(seed).permutation(np.array(sorted(truths), dtype=np.int64))[:n]
    tokens = tuple(int(t) for t in chosen)
    counted = sum(t.source == "brute-force" for t in truths.values())
    said.append(f"{len(truths)} in {band.describe()}: {counted} by brute force (≥ {min_count} hits), "
                f"{len(truths) - counted} by reference")
    return PaperTargets(tokens, len(truths), {t: truths[t] for t in tokens}, "; ".join(said))
