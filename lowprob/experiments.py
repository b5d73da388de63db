"""Experiments: a TOML file composing models × distributions × targets × estimators × budgets × seeds.

The plan is validated in full (file keys, duplicates, model and estimator names, options, every spec compiled,
the output writable) before the first estimate runs. Each estimate becomes one :class:`ResultRow` in the
results file; rerunning the same experiment skips rows already there (:mod:`lowprob.engine`), so a run killed
halfway resumes without losing or duplicating rows. With an executor other than serial (:mod:`lowprob.executors`)
each row is a task grouped by model, so a worker loads each model once; the driver alone writes the rows.
"""

from __future__ import annotations

import itertools
from collections.abc import Hashable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from lowprob.api import CompiledSource, SpecSource, compile_source, resolve_spec, run_problem
from lowprob.config_files import StrictModel, read_toml_config, reject_duplicates
from lowprob.core.budget import Budget
from lowprob.core.errors import LowprobError
from lowprob.core.estimator import Problem
from lowprob.core.random import Seed
from lowprob.engine import Engine, Job
from lowprob.executors import Executor, ExecutorSettings, worker_state
from lowprob.plugins import Registry, load_registry
from lowprob.results import ResultRow, RowSpec


class DistributionEntry(StrictModel):
    """One distribution: a spec (file relative to the experiment, registered name, or ``text``) and targets."""

    name: str | None = None
    spec: str | None = None
    text: str | None = None
    distribution: str | None = Field(default=None, description="which `dist` of the spec (default: main/only)")
    targets: list[str] = Field(default_factory=list,
                               description="target names in the spec or expressions; default: all of them")

    @model_validator(mode="after")
    def _one_source(self) -> DistributionEntry:
        if (self.spec is None) == (self.text is None):
            raise ValueError("give exactly one of 'spec' (a file or registered name) or 'text'")
        if self.text is not None and self.name is None:
            raise ValueError("an inline 'text' distribution needs a 'name'")
        return self


class EstimatorEntry(StrictModel):
    """An estimator by registered name with its options; ``label`` tells apart two option sets."""

    name: str
    label: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)


class BudgetPreset(StrictModel):
    """A named budget resolved per estimator: ``paper`` is each method's budget in Wu & Hilton (2025)."""

    preset: Literal["paper"]


class ExperimentFile(ExecutorSettings):
    """The schema of an experiment TOML file; the executor keys (``executor``, ``workers``, ``address``, ...)
    are those of :class:`~lowprob.executors.ExecutorSettings` (the command line overrides them)."""

    name: str
    output: str = Field(description="results file (JSON lines), relative to the experiment file")
    models: list[str] = Field(default_factory=list, description="model names; default: the default model")
    seeds: list[Seed] = Field(default_factory=lambda: [0], min_length=1)
    level: float = Field(default=0.95, gt=0, lt=1, strict=True)
    distributions: list[DistributionEntry] = Field(min_length=1)
    estimators: list[EstimatorEntry] = Field(min_length=1)
    budgets: list[Budget | BudgetPreset] = Field(min_length=1)


@dataclass
class Experiment:
    """A validated plan: the jobs to run and the compiled problems they share, by (model, distribution, target)."""

    spec: ExperimentFile
    path: Path
    jobs: list[Job]
    problems: dict[tuple[str, str, str | None], Problem]
    sources: dict[str, tuple[SpecSource, DistributionEntry]] = field(default_factory=dict)
    """Each distribution's spec and entry by name: what a worker compiles its problems from."""

    @property
    def output(self) -> Path:
        return (self.path.parent / self.spec.output).resolve()

    @property
    def executor(self) -> ExecutorSettings:
        """The executor keys of the experiment file."""
        return ExecutorSettings.model_validate(self.spec.model_dump(include=set(ExecutorSettings.model_fields)))


def read_experiment(path: Path | str) -> ExperimentFile:
    """Parse and validate an experiment file; errors name the file, the key and the problem."""
    return read_toml_config(path, ExperimentFile, "experiment file")


def _source(entry: DistributionEntry, base: Path, registry: Registry) -> SpecSource:
    if entry.text is not None:
        return SpecSource(entry.text, f"<{entry.name}>", entry.name or "inline")
    assert entry.spec is not None
    local = base / entry.spec
    source = resolve_spec(str(local) if local.is_file() else entry.spec, registry)
    return SpecSource(source.text, source.origin, entry.name or source.name)


def plan(path: Path | str, registry: Registry) -> Experiment:
    """Validate everything an experiment needs and list its jobs, before any estimate runs."""
    path = Path(path)
    if path.is_dir():
        raise LowprobError(f"experiment file {path} is a folder; name a TOML file")
    spec = read_experiment(path)
    for est in spec.estimators:
        try:
            registry.estimator(est.name).parse_options(est.options)
        except LowprobError as exc:
            raise LowprobError(f"{path}: estimators '{est.label or est.name}': {exc}") from None
    models = spec.models or [registry.default_model_name]
    for what, values in (("estimators (by label)", [e.label or e.name for e in spec.estimators]),
                         ("models", models), ("seeds", spec.seeds),
                         ("budgets", [b.model_dump_json() for b in spec.budgets])):
        reject_duplicates(path, what, values)
    sources = [_source(entry, path.parent, registry) for entry in spec.distributions]
    reject_duplicates(path, "distributions (by name)", [s.name for s in sources])
    jobs: list[Job] = []
    problems: dict[tuple[str, str, str | None], Problem] = {}
    for model, (entry, source) in itertools.product(models, zip(spec.distributions, sources, strict=True)):
        try:
            compiled = compile_source(registry, source, model=model, targets=entry.targets)
            targets = entry.targets or list(compiled.spec.targets)
            if not targets:
                raise LowprobError("the spec defines no targets; list some in 'targets'")
            reject_duplicates(path, "targets", targets)
            for target in targets:
                problem = problems[(model, source.name, target)] = compiled.problem(entry.distribution, target)
                for est, budget, seed in itertools.product(spec.estimators, spec.budgets, spec.seeds):
                    if isinstance(budget, BudgetPreset):
                        budget = registry.estimator(est.name).paper_budget()
                    jobs.append(Job(RowSpec(
                        experiment=spec.name, model=model, distribution=source.name,
                        distribution_hash=problem.distribution.content_hash, target=target, estimator=est.name,
                        label=est.label or est.name, options=est.options, budget=budget, seed=seed)))
        except LowprobError as exc:
            raise LowprobError(f"{path}: distribution '{source.name}' on model '{model}':\n{exc}") from None
    reject_duplicates(path, "the plan (a preset budget equal to a listed one?)", [job.key for job in jobs])
    return Experiment(spec, path, jobs, problems,
                      {s.name: (s, entry) for s, entry in zip(sources, spec.distributions, strict=True)})


def open_results(experiment: Experiment) -> Engine:
    """The experiment's results file, checked writable and read (fails before any compute)."""
    try:
        return Engine(experiment.output)
    except LowprobError as exc:
        raise LowprobError(f"{experiment.path}: output: {exc}") from None


@dataclass(frozen=True)
class RowTask:
    """One estimate as a task for a worker: the row, the spec text it is compiled from, the level; no weights."""

    spec: RowSpec
    source: SpecSource
    distribution: str | None
    targets: tuple[str, ...]
    level: float

    @property
    def group(self) -> Hashable:
        return "experiment-model", self.spec.model

    @property
    def description(self) -> str:
        return f"{self.spec.model} / {self.spec.distribution} / {self.spec.target} / {self.spec.label}"

    def run(self) -> ResultRow:
        models = worker_state(self.group, lambda: _ModelProblems(self.spec.model))
        row = self.spec
        problem = models.compiled(self.source, self.targets).problem(self.distribution, row.target)
        estimate = run_problem(models.registry, problem, row.estimator, row.options, row.budget, row.seed or 0,
                               level=self.level, progress=False)
        return ResultRow.of(row, estimate=estimate)


class _ModelProblems:
    """A worker's registry with one model loaded, and the specs compiled against it so far."""

    def __init__(self, model: str) -> None:
        self.registry, self.model = load_registry(), model
        self._compiled: dict[tuple[SpecSource, tuple[str, ...]], CompiledSource] = {}

    def compiled(self, source: SpecSource, targets: tuple[str, ...]) -> CompiledSource:
        key = (source, targets)
        if key not in self._compiled:
            self._compiled[key] = compile_source(self.registry, source, model=self.model, targets=targets)
        return self._compiled[key]


def run(experiment: Experiment, registry: Registry, engine: Engine | None = None,
        executor: Executor | None = None) -> Iterator[ResultRow]:
    """Run every pending job, appending each row as soon as it exists; yields the rows written.

    Serially (the default) the estimates run here on the plan's compiled problems; on another ``executor``
    each is a :class:`RowTask`, and rows are written here as they come back.
    """
    engine = engine or open_results(experiment)
    if executor is not None and not executor.in_process:
        for _, row in engine.run_tasks(experiment.jobs, lambda job: _task(experiment, job), executor):
            yield row
        return

    def compute(job: Job) -> ResultRow:
        row = job.spec
        estimate = run_problem(registry, experiment.problems[(row.model, row.distribution, row.target)],
                               row.estimator, row.options, row.budget, row.seed or 0, level=experiment.spec.level,
                               progress=False)
        return ResultRow.of(row, estimate=estimate)

    for _, row in engine.run(experiment.jobs, compute):
        yield row


def _task(experiment: Experiment, job: Job) -> RowTask:
    source, entry = experiment.sources[job.spec.distribution]
    return RowTask(job.spec, source, entry.distribution, tuple(entry.targets), experiment.spec.level)
