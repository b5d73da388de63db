"""Experiments: a TOML file composing models × distributions × targets × estimators × budgets × seeds.

The plan is validated in full (file keys, model and estimator names, options, every spec compiled) before the
first estimate runs. Each estimate becomes one JSON line in the results file; rerunning the same experiment
skips rows already there, so a run killed halfway resumes without losing or duplicating rows.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from lowprob.api import SpecSource, compile_source, resolve_spec, run_problem
from lowprob.config_files import read_toml_config
from lowprob.core.budget import Budget
from lowprob.core.errors import LowprobError
from lowprob.core.estimate import Estimate
from lowprob.core.estimator import Problem
from lowprob.plugins import Registry
from lowprob.results import ResultsFile


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DistributionEntry(_Strict):
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


class EstimatorEntry(_Strict):
    """An estimator by registered name with its options; ``label`` tells apart two option sets."""

    name: str
    label: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)


class BudgetPreset(_Strict):
    """A named budget resolved per estimator: ``paper`` is each method's budget in Wu & Hilton (2025)."""

    preset: Literal["paper"]


class ExperimentFile(_Strict):
    """The schema of an experiment TOML file."""

    name: str
    output: str = Field(description="results file (JSON lines), relative to the experiment file")
    models: list[str] = Field(default_factory=list, description="model names; default: the default model")
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    level: float = Field(default=0.95, gt=0, lt=1)
    distributions: list[DistributionEntry] = Field(min_length=1)
    estimators: list[EstimatorEntry] = Field(min_length=1)
    budgets: list[Budget | BudgetPreset] = Field(min_length=1)


@dataclass(frozen=True)
class Row:
    """One planned estimate."""

    model: str
    distribution: str
    target: str
    estimator: EstimatorEntry
    budget: Budget
    seed: int
    problem_key: tuple[str, str, str]

    @property
    def label(self) -> str:
        return self.estimator.label or self.estimator.name

    @property
    def key(self) -> str:
        ident = json.dumps([self.model, self.distribution, self.target, self.label,
                            self.estimator.options, self.budget.model_dump(mode="json"), self.seed],
                           sort_keys=True)
        return hashlib.sha256(ident.encode()).hexdigest()[:20]


@dataclass
class Experiment:
    """A validated plan: rows to run and the compiled problems they share."""

    spec: ExperimentFile
    path: Path
    rows: list[Row]
    problems: dict[tuple[str, str, str], Problem]

    @property
    def output(self) -> Path:
        return (self.path.parent / self.spec.output).resolve()


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
    """Validate everything an experiment needs and list its rows, before any estimate runs."""
    path = Path(path)
    spec = read_experiment(path)
    for est in spec.estimators:
        try:
            registry.estimator(est.name).parse_options(est.options)
        except LowprobError as exc:
            raise LowprobError(f"{path}: estimators '{est.label or est.name}': {exc}") from None
    labels = [e.label or e.name for e in spec.estimators]
    if len(set(labels)) != len(labels):
        raise LowprobError(f"{path}: two estimators share a label; give each a distinct 'label'")
    models = spec.models or [registry.default_model_name]
    rows: list[Row] = []
    problems: dict[tuple[str, str, str], Problem] = {}
    for model, entry in itertools.product(models, spec.distributions):
        source = _source(entry, path.parent, registry)
        try:
            compiled = compile_source(registry, source, model=model, targets=entry.targets)
            targets = entry.targets or list(compiled.spec.targets)
            if not targets:
                raise LowprobError("the spec defines no targets; list some in 'targets'")
            for target in targets:
                key = (model, source.name, target)
                problems[key] = compiled.problem(entry.distribution, target)
                for est, budget, seed in itertools.product(spec.estimators, spec.budgets, spec.seeds):
                    if isinstance(budget, BudgetPreset):
                        budget = registry.estimator(est.name).paper_budget()
                    rows.append(Row(model, source.name, target, est, budget, seed, key))
        except LowprobError as exc:
            raise LowprobError(f"{path}: distribution '{source.name}' on model '{model}':\n{exc}") from None
    return Experiment(spec, path, rows, problems)


def pending(experiment: Experiment) -> list[Row]:
    """Rows not yet in the results file."""
    done = ResultsFile(experiment.output).keys()
    return [row for row in experiment.rows if row.key not in done]


def result_row(experiment: Experiment, row: Row, estimate: Estimate) -> dict[str, Any]:
    """The JSON line written for one estimate."""
    return {
        "key": row.key,
        "experiment": experiment.spec.name,
        "model": row.model,
        "distribution": row.distribution,
        "target": row.target,
        "estimator": row.label,
        "budget": row.budget.model_dump(mode="json", exclude_none=True),
        "seed": row.seed,
        "estimate": estimate.model_dump(mode="json"),
    }


def run(experiment: Experiment, registry: Registry,
        on_row: Callable[[Row, Estimate], None] | None = None) -> Iterator[dict[str, Any]]:
    """Run every pending row, appending each result as soon as it exists; yields the rows written."""
    results = ResultsFile(experiment.output)
    for row in pending(experiment):
        problem = experiment.problems[row.problem_key]
        estimate = run_problem(registry, problem, row.estimator.name, row.estimator.options, row.budget,
                               row.seed, level=experiment.spec.level, progress=False)
        record = result_row(experiment, row, estimate)
        results.append(record)
        if on_row is not None:
            on_row(row, estimate)
        yield record
