"""`lowprob reproduce`: the evaluation protocol of Wu & Hilton (2025) from a TOML config (docs/protocol.md).

For every (model, distribution): read the ground truth, pick seeded test and tuning tokens from probability
bands, scale each method's paper budget to the band, tune each temperature option on the tuning tokens, run
every method on every test token, and score the estimates. This module plans the rows (a :class:`Job` each)
and computes one when its turn comes; :mod:`lowprob.engine` skips what is done and writes each row, so a killed
run loses at most the rows in progress. :mod:`lowprob.scoring` scores the rows and :mod:`lowprob.report` writes
the loss tables and figures from them at the end of every run.

On an executor (:mod:`lowprob.executors`) the rows are :class:`RowTask` s grouped by model and run in two
phases: first every row that needs no tuned temperature (the tuning rows, and the test rows of methods that are
not tuned), then, with each temperature chosen from those rows, the test rows of the tuned methods. Each row
is computed exactly as in a serial run, so the rows are the same.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Hashable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from lowprob.api import SpecSource, compile_source, resolve_spec, run_problem
from lowprob.config_files import StrictModel, read_toml_config, reject_duplicates
from lowprob.core.budget import Budget
from lowprob.core.distribution import InputDistribution
from lowprob.core.errors import LowprobError
from lowprob.core.estimator import Estimator, Problem
from lowprob.core.losses import optimal_constant
from lowprob.core.meter import MeteredModel
from lowprob.core.model import ModelAdapter
from lowprob.core.random import Seed
from lowprob.core.target import ArgmaxIs
from lowprob.engine import Engine, Job
from lowprob.executors import Executor, ExecutorSettings, worker_state
from lowprob.ground_truth import GroundTruth, load_shipped
from lowprob.plugins import Registry, load_registry
from lowprob.protocol import (
    Band,
    Selection,
    budget_scale,
    derived_bands,
    min_hits,
    scaled_option,
    select_targets,
    temperature_grid,
)
from lowprob.references import TargetTruth, paper_targets
from lowprob.report import format_table, write_losses_report
from lowprob.results import ProtocolTags, ResultRow, RowSpec
from lowprob.scoring import chosen_temperature

TUNED_OPTION = "temperature"
"""The option tuned over the temperature grid, for every estimator where it acts (:func:`tunes_temperature`)."""
PROBE_TEMPERATURE = 2.0
"""A temperature other than the usual default of 1, offered to an estimator to ask whether its temperature acts."""
CONSTANT_ESTIMATOR = "optimal-constant"
"""The harness-fitted baseline: its ``value`` is the mean ground truth of the tuning tokens."""
QUICK, FULL, PAPER = "reproduce-quick.toml", "reproduce.toml", "reproduce-paper.toml"


def tunes_temperature(cls: type[Estimator], options: Mapping[str, Any]) -> bool:
    """Whether ``cls`` with ``options`` has a temperature to tune: it has the option, ``options`` do not fix it,
    and its options accept a temperature other than 1 (an estimator refuses one that would change nothing, as
    ``ams`` does with its ``prior`` proposal, so a grid is not spent on identical runs)."""
    if TUNED_OPTION not in cls.Options.model_fields or TUNED_OPTION in options:
        return False
    try:
        cls.parse_options({**options, TUNED_OPTION: PROBE_TEMPERATURE})
    except LowprobError:
        return False
    return True


class TargetRules(StrictModel):
    """How test and tuning tokens are chosen (bands derived from the ground truth unless given)."""

    n_test: int = Field(default=256, ge=1, description="test tokens per (model, distribution); paper: 256")
    n_tuning: int = Field(default=100, ge=1, description="tuning tokens per (model, distribution); paper: 100")
    max_rel_error: float = Field(default=0.3, gt=0, lt=1, description="ground-truth relative error allowed")
    decades: float = Field(default=2.0, gt=0, description="width of the derived test band (paper: 4)")
    tuning_decades: float = Field(default=2.0, gt=0, description="width of the tuning band above it (paper: 2)")
    band: tuple[float, float] | None = Field(default=None, description="fixed test band [low, high)")
    tuning_band: tuple[float, float] | None = Field(default=None, description="fixed tuning band [low, high)")
    references: str | None = Field(default=None, description="reference file or folder (relative to this file): "
                                   "test tokens are its accepted references in the band (docs/references.md)")
    brute_force: str | None = Field(default=None, description="folder of fresh brute-force counts (relative to "
                                    "this file; <model>/<distribution>.json, shards disjoint from the ground "
                                    "truth's): a token with at least min_hits(max_rel_error) hits there is scored "
                                    "against that count; a missing file means none (docs/references.md)")

    @property
    def paper_truths(self) -> bool:
        """Whether test tokens are scored against references or fresh counts instead of the ground truth."""
        return self.references is not None or self.brute_force is not None

    @model_validator(mode="after")
    def _both_or_neither(self) -> TargetRules:
        if (self.band is None) != (self.tuning_band is None):
            raise ValueError("give both 'band' and 'tuning_band', or neither (to derive them)")
        return self


class BudgetRule(StrictModel):
    """Each method's paper budget times a scale: ``paper_band_high / (top of the test band)`` unless fixed."""

    paper_band_high: float = Field(default=1e-5, gt=0, lt=1, description="top of the paper's test band")
    scale: float | None = Field(default=None, gt=0, description="fixed factor on every paper budget")
    min_scale: float = Field(default=0.0, ge=0, description="floor on the derived scale, so every method can "
                             "take its first step where a high band would leave it only a few calls")


class TemperatureGrid(StrictModel):
    """The grid tuned over: ``count`` log-spaced values from ``low`` to ``high``, or explicit ``values``."""

    low: float = Field(default=0.2, gt=0)
    high: float = Field(default=5.0, gt=0)
    count: int = Field(default=9, ge=1)
    values: list[float] | None = Field(default=None, min_length=1)
    tune: bool = Field(default=True, description="false: no tuning rows, every method at its own default "
                       "temperature (a deviation from the paper, for CPU budgets)")

    def grid(self) -> tuple[float, ...]:
        return tuple(self.values) if self.values else temperature_grid(self.low, self.high, self.count)


class MethodEntry(StrictModel):
    """An estimator by registered name; ``scale_options`` maps an integer option to the exponent with which
    it shrinks with the budget scale (``round(base · scale^exponent)``, base = the option's value or default)."""

    name: str
    label: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    scale_options: dict[str, float] = Field(default_factory=dict)

    @property
    def key(self) -> str:
        return self.label or self.name


class ReproduceConfig(ExecutorSettings):
    """The schema of a reproduce TOML file; the executor keys (``executor``, ``workers``, ``address``, ...) are
    those of :class:`~lowprob.executors.ExecutorSettings` (the command line overrides them)."""

    name: str
    output: str = Field(description="output folder, relative to the working directory")
    ground_truth: str | None = Field(default=None, description="ground-truth folder relative to this file "
                                     "(holding <model>/<distribution>.json); default: the shipped one")
    models: list[str] = Field(min_length=1)
    distributions: list[str] = Field(min_length=1, description="registered names or spec files")
    methods: list[MethodEntry] = Field(min_length=1)
    seed: Seed = 0
    level: float = Field(default=0.95, gt=0, lt=1)
    targets: TargetRules = Field(default_factory=TargetRules)
    budget: BudgetRule = Field(default_factory=BudgetRule)
    temperatures: TemperatureGrid = Field(default_factory=TemperatureGrid)


@dataclass(frozen=True)
class MethodPlan:
    """One method on one (model, distribution): options after scaling, budget, and whether it is tuned."""

    label: str
    estimator: str
    options: dict[str, Any]
    budget: Budget
    tuned: bool


@dataclass
class PairPlan:
    """Everything decided for one (model, distribution) before any estimate runs; ``skipped`` says why a pair
    without usable tokens has no methods (and so no rows)."""

    model: str
    distribution: str
    source: SpecSource
    ground_truth: GroundTruth
    test_band: Band
    tuning_band: Band
    selection: Selection
    scale: float
    methods: list[MethodPlan]
    skipped: str | None = None
    truth: dict[int, TargetTruth] = field(default_factory=dict)
    """Test tokens scored against a fresh brute-force count or a reference instead of the ground truth."""
    truth_sources: str | None = None
    """What the paper regime's test truths were read from (for ``--dry-run``)."""

    def p(self, token: int) -> float:
        return self.truth[token].value if token in self.truth else self.ground_truth.probability(token)

    def test_truths(self) -> list[TargetTruth]:
        """The truth of each test token scored against a fresh count or a reference, in test order."""
        return [self.truth[t] for t in self.selection.test if t in self.truth]

    def method(self, label: str) -> MethodPlan:
        return next(m for m in self.methods if m.label == label)


@dataclass
class Reproduction:
    """A validated plan: the config, where it writes, every (model, distribution) pair with ground truth, and
    the pairs selected to run."""

    config: ReproduceConfig
    path: Path
    output: Path
    temperatures: tuple[float, ...]
    pairs: list[PairPlan]
    selected: list[PairPlan]

    @property
    def results_path(self) -> Path:
        return self.output / "results.jsonl"

    def open(self) -> Engine:
        """The results file, checked writable and read (before any compute)."""
        return Engine(self.results_path)

    def deviations(self) -> list[str]:
        """How this plan departs from the paper's protocol, for the report."""
        if self.config.temperatures.tune:
            return []
        return ["temperatures not tuned (`temperatures.tune = false`): every method runs at its own default "
                "temperature and there are no tuning rows; the paper tunes each temperature on the tuning tokens"]

    def pair(self, model: str, distribution: str) -> PairPlan:
        return next(p for p in self.pairs if (p.model, p.distribution) == (model, distribution))

    def jobs(self, pair: PairPlan) -> list[Job]:
        """The pair's tuning rows (every tuned method × temperature × tuning token; none for a one-value grid,
        which fixes the temperature), then its test rows."""
        grid = self.temperatures if len(self.temperatures) > 1 else ()
        tune = [self._job(pair, m, t, ProtocolTags(phase="tune", temperature=temp, **_truth(pair, t)))
                for m in pair.methods if m.tuned for temp in grid for t in pair.selection.tuning]
        test = [self._job(pair, m, t, ProtocolTags(phase="test", tuning_grid=self.temperatures if m.tuned else None,
                                                   **_truth(pair, t)))
                for m in pair.methods for t in pair.selection.test]
        return tune + test

    def all_jobs(self, pairs: list[PairPlan]) -> list[Job]:
        return [job for pair in pairs for job in self.jobs(pair)]

    def waits_for_tuning(self, job: Job) -> bool:
        """Whether the job is a test row whose temperature is chosen from tuning rows (a tuned method, a grid of
        more than one value)."""
        assert job.spec.protocol is not None
        pair = self.pair(job.spec.model, job.spec.distribution)
        return (job.spec.protocol.phase == "test" and pair.method(job.spec.label).tuned
                and len(self.temperatures) > 1)

    def task(self, job: Job, temperature: float | None) -> RowTask:
        """The job as a task, with the temperature it runs at (``None`` for a method that is not tuned)."""
        pair = self.pair(job.spec.model, job.spec.distribution)
        return RowTask(job, pair.source, pair.method(job.spec.label), self.marker(pair, pair.method(job.spec.label)),
                       self.temperatures[0], temperature, self.config.level)

    def marker(self, pair: PairPlan, method: MethodPlan) -> RowSpec:
        """The ``unsupported`` row that stands for every row of a method the estimator cannot run on the pair."""
        return self._spec(pair, method, None, None, ProtocolTags(phase="unsupported"))

    def _spec(self, pair: PairPlan, method: MethodPlan, target: str | None, seed: int | None,
              tags: ProtocolTags) -> RowSpec:
        return RowSpec(experiment=self.config.name, model=pair.model, distribution=pair.distribution,
                       distribution_hash=pair.ground_truth.distribution_hash, target=target,
                       estimator=method.estimator, label=method.label, options=method.options,
                       budget=method.budget, seed=seed, protocol=tags)

    def _job(self, pair: PairPlan, method: MethodPlan, token: int, tags: ProtocolTags) -> Job:
        seed = _derive_seed(self.config.seed, pair.model, pair.distribution, token)
        return Job(self._spec(pair, method, f"argmax == #{token}", seed, tags),
                   group=self.marker(pair, method).digest())


def _truth(pair: PairPlan, token: int) -> dict[str, Any]:
    return {"token": token, "p_true": pair.p(token), "gt_count": int(pair.ground_truth.counts[token]),
            "gt_samples": pair.ground_truth.samples}


def shipped_config(quick: bool = False, paper: bool = False) -> Path:
    """The shipped reproduce config (``--quick``: the variant that fits in 20 minutes on a 2-core CPU; ``paper``:
    the paper's regime, scored against references)."""
    return Path(str(resources.files("lowprob").joinpath("data", PAPER if paper else QUICK if quick else FULL)))


def read_config(path: Path | str) -> ReproduceConfig:
    """Parse and validate a reproduce config; errors name the file, the key and the problem."""
    return read_toml_config(path, ReproduceConfig, "reproduce config")


def _derive_seed(*parts: object) -> int:
    """A 60-bit seed from the parts, stable across runs and machines."""
    return int(hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:15], 16)


def _method_plans(config: ReproduceConfig, registry: Registry, scale: float, tuning_p: list[float],
                  where: str, first_temperature: float) -> list[MethodPlan]:
    """Resolve each method's options and budget at ``scale``; check one step fits the budget."""
    plans = []
    for entry in config.methods:
        cls = registry.estimator(entry.name)
        fields = cls.Options.model_fields
        options = dict(entry.options)
        for name, exponent in entry.scale_options.items():
            if name not in fields:
                raise LowprobError(f"{where}: method {entry.key!r}: scale_options names {name!r}, not an option "
                                   f"of estimator {entry.name!r} (options: {', '.join(fields) or 'none'})")
            base = options.get(name, fields[name].get_default(call_default_factory=True))
            options[name] = scaled_option(float(base), scale, exponent)
        if entry.name == CONSTANT_ESTIMATOR and "value" not in options:
            options["value"] = optimal_constant(tuning_p)
        tuned = config.temperatures.tune and tunes_temperature(cls, options)
        paper = cls.paper_budget()
        budget = Budget(model_calls=max(1, round((paper.model_calls or 1) * scale)),
                        backward_weight=paper.backward_weight)
        try:
            estimator = cls({**options, TUNED_OPTION: first_temperature} if tuned else options)
        except LowprobError as exc:
            raise LowprobError(f"{where}: method {entry.key!r} at budget scale {scale:.4g}: {exc}") from None
        need = estimator.min_step_calls(budget.backward_weight)
        if budget.model_calls is not None and budget.model_calls < need:
            raise LowprobError(f"{where}: method {entry.key!r}: the scaled budget of {budget.model_calls} model "
                               f"calls (scale {scale:.4g}) is less than one step needs ({need:g}); raise "
                               "budget.scale or shrink its options with scale_options")
        plans.append(MethodPlan(entry.key, entry.name, options, budget, tuned))
    return plans


def _bands(config: ReproduceConfig, samples: int) -> tuple[Band, Band]:
    rules = config.targets
    if rules.band is not None and rules.tuning_band is not None:
        return Band(*rules.band), Band(*rules.tuning_band)
    return derived_bands(samples, rules.max_rel_error, rules.decades, rules.tuning_decades)


def _source(name: str, base: Path, registry: Registry) -> SpecSource:
    local = base / name
    return resolve_spec(str(local) if local.is_file() else name, registry)


def plan(path: Path | str, registry: Registry, output: Path | None = None, only_model: str | None = None,
         only_distribution: str | None = None) -> Reproduction:
    """Validate the config, read the ground truths and decide every pair's bands, tokens, budgets and options,
    before any model is loaded.

    ``only_model`` / ``only_distribution`` select the pairs to run (:attr:`Reproduction.selected`); those need
    ground truth, while other pairs are planned only where theirs exists, so the report still covers them.
    """
    path = Path(path)
    config = read_config(path)
    relative = {key: os.path.normpath(path.parent / value) for key in ("references", "brute_force")  # as ground_truth
                if (value := getattr(config.targets, key)) is not None}
    config = config.model_copy(update={"targets": config.targets.model_copy(update=relative)})
    reject_duplicates(path, "methods (by label)", [m.key for m in config.methods])
    reject_duplicates(path, "models", config.models)
    reject_duplicates(path, "distributions", config.distributions)
    known_models = [e.name for e in registry.entries("models")]
    for model in config.models:
        if model not in known_models:
            raise LowprobError(f"{path}: unknown model {model!r}; known models: {', '.join(known_models)}")
    for entry in config.methods:
        try:
            registry.estimator(entry.name)
        except LowprobError as exc:
            raise LowprobError(f"{path}: methods: {exc}") from None
    try:
        sources = [_source(dist, path.parent, registry) for dist in config.distributions]
    except LowprobError as exc:
        raise LowprobError(f"{path}: distributions: {exc}") from None
    for value, kind, known in ((only_model, "model", config.models),
                               (only_distribution, "distribution", [s.name for s in sources])):
        if value is not None and value not in known:
            raise LowprobError(f"{kind} {value!r} is not in {path}; its {kind}s: {', '.join(known)}")
    temperatures = config.temperatures.grid()
    root = (path.parent / config.ground_truth).resolve() if config.ground_truth else None
    pairs, selected = [], []
    for model in config.models:
        for source in sources:
            chosen = only_model in (None, model) and only_distribution in (None, source.name)
            try:
                gt = load_shipped(model, source.name, root)
            except LowprobError:
                if chosen:
                    raise
                continue
            pairs.append(_pair(config, registry, f"{path}: model {model!r}, distribution {source.name!r}", model,
                               source, gt, temperatures))
            if chosen:
                selected.append(pairs[-1])
    out = output if output is not None else Path(config.output)
    return Reproduction(config, path, out, temperatures, pairs, selected)


def _pair(config: ReproduceConfig, registry: Registry, where: str, model: str, source: SpecSource,
          gt: GroundTruth, temperatures: tuple[float, ...]) -> PairPlan:
    """Bands, seeded tokens, budget scale and method plans of one (model, distribution)."""
    try:
        test_band, tuning_band = _bands(config, gt.samples)
    except LowprobError as exc:
        raise LowprobError(f"{where}: {exc}") from None
    selection = select_targets(gt.counts, gt.samples, test_band, tuning_band, config.targets.n_test,
                               config.targets.n_tuning, _derive_seed("select", config.seed, model, source.name),
                               config.targets.max_rel_error)
    truth: dict[int, TargetTruth] = {}
    sources = None
    rules = config.targets
    if rules.paper_truths:
        try:
            chosen = paper_targets(gt, test_band, rules.n_test,
                                   _derive_seed("select-references", config.seed, model, source.name),
                                   min_hits(rules.max_rel_error), rules.references, rules.brute_force)
        except LowprobError as exc:
            raise LowprobError(f"{where}: {exc}") from None
        selection = replace(selection, test=chosen.tokens, test_candidates=chosen.candidates)
        truth, sources = chosen.truths, chosen.sources
    scale = config.budget.scale or max(config.budget.min_scale,
                                       budget_scale(test_band.high, config.budget.paper_band_high))
    for name, tokens, band in (("test", selection.test, test_band), ("tuning", selection.tuning, tuning_band)):
        if not tokens:
            reason = (f"no {name} token has a ground truth in {band.describe()} with at least "
                      f"{min_hits(config.targets.max_rel_error)} hits in {gt.samples} samples")
            if name == "test" and rules.paper_truths:
                reason = (f"no accepted reference or fresh brute-force count (≥ {min_hits(rules.max_rel_error)} "
                          f"hits) in {band.describe()}; see the test truths")
            return PairPlan(model, source.name, source, gt, test_band, tuning_band, selection, scale, [], reason,
                            truth, sources)
    methods = _method_plans(config, registry, scale, [gt.probability(t) for t in selection.tuning], where,
                            temperatures[0])
    return PairPlan(model, source.name, source, gt, test_band, tuning_band, selection, scale, methods, truth=truth,
                    truth_sources=sources)


def _problem(model: ModelAdapter, distribution: InputDistribution, token: int) -> Problem:
    return Problem(MeteredModel(model), distribution, ArgmaxIs(token, model.vocab.token_string(token)))


@dataclass(frozen=True)
class RowTask:
    """One reproduce row as a task for a worker: the job, the spec text, the method's plan and its marker, the
    temperature it runs at; never weights or ground truth (only the distribution hash travels, in the job)."""

    job: Job
    source: SpecSource
    method: MethodPlan
    marker: RowSpec
    check_temperature: float
    """The grid's first temperature, at which the method is checked against the problem once."""
    temperature: float | None
    level: float

    @property
    def group(self) -> Hashable:
        return "reproduce-model", self.job.spec.model

    @property
    def description(self) -> str:
        spec = self.job.spec
        return f"{spec.model} / {spec.distribution} / {spec.target} / {spec.label}"

    def run(self) -> ResultRow:
        return self.compute(worker_state(self.group, lambda: _Rows(load_registry())))

    def compute(self, rows: _Rows) -> ResultRow:
        """The row on ``rows``' registry: the method's ``unsupported`` marker if it cannot run on the pair, else
        its estimate (or the estimator's error) at ``temperature``."""
        spec, tags, method = self.job.spec, self.job.spec.protocol, self.method
        assert tags is not None and tags.token is not None
        model, dist = rows.load(spec.model, self.source, spec.distribution_hash)
        problem = _problem(model, dist, tags.token)
        if self.marker.digest() not in rows.supported:
            first = method.options | ({TUNED_OPTION: self.check_temperature} if method.tuned else {})
            try:
                rows.registry.create_estimator(method.estimator, first).check_problem(problem)
            except LowprobError as exc:
                return ResultRow.of(self.marker, error=str(exc))
            rows.supported.add(self.marker.digest())
        options = method.options | ({TUNED_OPTION: self.temperature} if method.tuned else {})
        as_run = spec.model_copy(update={"options": options, "protocol": tags.model_copy(update={
            "temperature": options.get(TUNED_OPTION), "token_text": model.vocab.token_string(tags.token)})})
        try:
            estimate = run_problem(rows.registry, problem, method.estimator, options, method.budget,
                                   spec.seed or 0, level=self.level, progress=False)
        except LowprobError as exc:
            return ResultRow.of(as_run, key=self.job.key, error=str(exc))
        return ResultRow.of(as_run, key=self.job.key, estimate=estimate.model_copy(update={"trace": []}))


@dataclass
class _Rows:
    """What computing rows needs on one registry (the driver's, or a worker's): each (model, spec) compiled
    once, and the markers of the methods already checked to run on their pair."""

    registry: Registry
    compiled: dict[tuple[str, str], tuple[ModelAdapter, InputDistribution]] = field(default_factory=dict)
    supported: set[str] = field(default_factory=set)

    def load(self, model: str, source: SpecSource, distribution_hash: str) -> tuple[ModelAdapter, InputDistribution]:
        """The model and the spec's distribution, checked to be the one the ground truth was counted on."""
        if (model, source.text) not in self.compiled:
            compiled = compile_source(self.registry, source, model=model)
            dist = compiled.spec.distribution(None)
            if dist.content_hash != distribution_hash:
                raise LowprobError(f"the ground truth of {model}/{source.name} was counted on a different "
                                   f"distribution (hash {distribution_hash}, the spec now gives "
                                   f"{dist.content_hash}); recount it")
            self.compiled[(model, source.text)] = compiled.model, dist
        return self.compiled[(model, source.text)]


class _Temperatures:
    """Each job's temperature: a tuning row's own, a tuned method's chosen from its tuning rows in the engine
    (once, when its first test row needs it), ``None`` for a method that is not tuned."""

    def __init__(self, repro: Reproduction, engine: Engine) -> None:
        self.repro, self.engine = repro, engine
        self.chosen: dict[tuple[str, str, str], float] = {}

    def __call__(self, job: Job) -> float | None:
        spec, tags = job.spec, job.spec.protocol
        assert tags is not None
        pair = self.repro.pair(spec.model, spec.distribution)
        method = pair.method(spec.label)
        if not method.tuned:
            return None
        if tags.phase == "tune":
            return tags.temperature
        where = (pair.model, pair.distribution, method.label)
        if where not in self.chosen:
            self.chosen[where] = chosen_temperature(self.repro, pair, method, self.engine.rows)
        return self.chosen[where]


def run(repro: Reproduction, registry: Registry, pairs: list[PairPlan], engine: Engine | None = None,
        executor: Executor | None = None) -> Iterator[tuple[Job, ResultRow]]:
    """Run every pending row of ``pairs``, tuning before testing; yields each job with the row written. A method
    that cannot handle a pair's distribution gets one ``unsupported`` row instead of its rows.

    Serially (the default) the rows run here, pair after pair, on ``registry``; on another ``executor`` they
    run as tasks in two phases (see the module's description).
    """
    engine = engine or repro.open()
    temperature = _Temperatures(repro, engine)
    jobs = repro.all_jobs(pairs)
    if executor is None or executor.in_process:
        rows = _Rows(registry)
        yield from engine.run(jobs, lambda job: repro.task(job, temperature(job)).compute(rows))
        return
    for phase in (False, True):  # rows that need no tuned temperature, then those that do
        mine = [job for job in jobs if repro.waits_for_tuning(job) == phase]
        yield from engine.run_tasks(mine, lambda job: repro.task(job, temperature(job)), executor)


def write_report(repro: Reproduction, engine: Engine | None = None) -> list[Path]:
    """Write ``losses.md``, ``losses.json`` and the figures from the rows of the results file; returns the paths."""
    return write_losses_report(repro, (engine or repro.open()).rows)


def describe_plan(repro: Reproduction, pairs: list[PairPlan], engine: Engine) -> str:
    """A table of what each pair will run (bands, tokens, scale, per-method budgets and pending rows), then the
    plan's deviations from the paper and, in the paper regime, where each test token's truth comes from."""
    rows = []
    for p in pairs:
        mine = engine.pending(repro.jobs(p))
        rows.append([p.model, p.distribution, str(p.ground_truth.samples), p.test_band.describe(),
                     f"{len(p.selection.test)}/{len(p.selection.tuning)}", f"{p.scale:.3g}",
                     p.skipped or " ".join(f"{m.label}={m.budget.model_calls}" for m in p.methods), str(len(mine)),
                     str(sum(job.calls for job in mine))])
    table = format_table(["model", "distribution", "samples", "test band", "test/tune", "scale",
                          "budgets (model calls)", "pending", "pending calls"], rows)
    notes = [f"deviation from the paper: {d}" for d in repro.deviations()]
    for p in pairs:
        if p.truth_sources is not None:
            notes.append(f"{p.model} / {p.distribution} test truths: {p.truth_sources}")
            notes += [f"  {t.describe()}" for t in p.test_truths()]
    return "\n".join([table, *notes])
