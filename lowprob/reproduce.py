"""`lowprob reproduce`: the evaluation protocol of Wu & Hilton (2025) from a TOML config (docs/protocol.md).

For every (model, distribution): read the ground truth, pick seeded test and tuning tokens from probability
bands, scale each method's paper budget to the band, tune each temperature option on the tuning tokens, run
every method on every test token, and score the estimates. Each estimate is one row of an append-only results
file, so a rerun skips what is done and a killed run loses at most the row in progress; the loss tables and
figures are rebuilt from the results file at the end of every run.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from lowprob.api import SpecSource, compile_source, resolve_spec, run_problem
from lowprob.config_files import read_toml_config
from lowprob.core.budget import Budget
from lowprob.core.distribution import InputDistribution
from lowprob.core.errors import LowprobError
from lowprob.core.estimator import Problem
from lowprob.core.meter import MeteredModel
from lowprob.core.model import ModelAdapter
from lowprob.core.target import ArgmaxIs
from lowprob.figures import ScatterPanel, bar_chart, scatter_grid
from lowprob.ground_truth import GroundTruth, load_shipped
from lowprob.plugins import Registry
from lowprob.plugins.builtin.constant import optimal_constant
from lowprob.protocol import (
    Band,
    Scores,
    Selection,
    TuningScore,
    best_temperature,
    budget_scale,
    derived_bands,
    min_hits,
    scaled_option,
    score,
    select_targets,
    temperature_grid,
    tuning_score,
)
from lowprob.report import format_table, markdown_table
from lowprob.results import ResultsFile, write_atomic

TUNED_OPTION = "temperature"
"""The option tuned over the temperature grid, for every estimator that has it and does not fix it."""
CONSTANT_ESTIMATOR = "optimal-constant"
"""The harness-fitted baseline: its ``value`` is the mean ground truth of the tuning tokens."""
QUICK, FULL = "reproduce-quick.toml", "reproduce.toml"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TargetRules(_Strict):
    """How test and tuning tokens are chosen (bands derived from the ground truth unless given)."""

    n_test: int = Field(default=256, ge=1, description="test tokens per (model, distribution); paper: 256")
    n_tuning: int = Field(default=100, ge=1, description="tuning tokens per (model, distribution); paper: 100")
    max_rel_error: float = Field(default=0.3, gt=0, lt=1, description="ground-truth relative error allowed")
    decades: float = Field(default=2.0, gt=0, description="width of the derived test band (paper: 4)")
    tuning_decades: float = Field(default=2.0, gt=0, description="width of the tuning band above it (paper: 2)")
    band: tuple[float, float] | None = Field(default=None, description="fixed test band [low, high)")
    tuning_band: tuple[float, float] | None = Field(default=None, description="fixed tuning band [low, high)")

    @model_validator(mode="after")
    def _both_or_neither(self) -> TargetRules:
        if (self.band is None) != (self.tuning_band is None):
            raise ValueError("give both 'band' and 'tuning_band', or neither (to derive them)")
        return self


class BudgetRule(_Strict):
    """Each method's paper budget times a scale: ``paper_band_high / (top of the test band)`` unless fixed."""

    paper_band_high: float = Field(default=1e-5, gt=0, lt=1, description="top of the paper's test band")
    scale: float | None = Field(default=None, gt=0, description="fixed factor on every paper budget")
    min_scale: float = Field(default=0.0, ge=0, description="floor on the derived scale, so every method can "
                             "take its first step where a high band would leave it only a few calls")


class TemperatureGrid(_Strict):
    """The grid tuned over: ``count`` log-spaced values from ``low`` to ``high``, or explicit ``values``."""

    low: float = Field(default=0.2, gt=0)
    high: float = Field(default=5.0, gt=0)
    count: int = Field(default=9, ge=1)
    values: list[float] | None = Field(default=None, min_length=1)

    def grid(self) -> tuple[float, ...]:
        return tuple(self.values) if self.values else temperature_grid(self.low, self.high, self.count)


class MethodEntry(_Strict):
    """An estimator by registered name; ``scale_options`` maps an integer option to the exponent with which
    it shrinks with the budget scale (``round(base · scale^exponent)``, base = the option's value or default)."""

    name: str
    label: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    scale_options: dict[str, float] = Field(default_factory=dict)

    @property
    def key(self) -> str:
        return self.label or self.name


class ReproduceConfig(_Strict):
    """The schema of a reproduce TOML file."""

    name: str
    output: str = Field(description="output folder, relative to the working directory")
    ground_truth: str | None = Field(default=None, description="ground-truth folder relative to this file "
                                     "(holding <model>/<distribution>.json); default: the shipped one")
    models: list[str] = Field(min_length=1)
    distributions: list[str] = Field(min_length=1, description="registered names or spec files")
    methods: list[MethodEntry] = Field(min_length=1)
    seed: int = 0
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

    def p(self, token: int) -> float:
        return self.ground_truth.probability(token)


@dataclass(frozen=True)
class Row:
    """One planned estimate: a tuning run at one temperature, or a test run."""

    phase: Literal["tune", "test"]
    pair: PairPlan
    method: MethodPlan
    token: int
    temperature: float | None
    key: str
    seed: int


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
    def results(self) -> ResultsFile:
        return ResultsFile(self.output / "results.jsonl")

    def rows(self, pair: PairPlan) -> list[Row]:
        """The pair's tuning rows (every tuned method × temperature × tuning token; none for a one-value grid,
        which fixes the temperature), then its test rows."""
        grid = self.temperatures if len(self.temperatures) > 1 else ()
        rows = [_row(self, "tune", pair, m, t, temp) for m in pair.methods if m.tuned
                for temp in grid for t in pair.selection.tuning]
        return rows + [_row(self, "test", pair, m, t, None) for m in pair.methods for t in pair.selection.test]


def shipped_config(quick: bool = False) -> Path:
    """The shipped reproduce config (``--quick``: the variant that fits in 20 minutes on a 2-core CPU)."""
    return Path(str(resources.files("lowprob").joinpath("data", QUICK if quick else FULL)))


def read_config(path: Path | str) -> ReproduceConfig:
    """Parse and validate a reproduce config; errors name the file, the key and the problem."""
    return read_toml_config(path, ReproduceConfig, "reproduce config")


def _derive_seed(*parts: object) -> int:
    """A 60-bit seed from the parts, stable across runs and machines."""
    return int(hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:15], 16)


def _row(repro: Reproduction, phase: Literal["tune", "test"], pair: PairPlan, method: MethodPlan, token: int,
         temperature: float | None) -> Row:
    tuning = repro.temperatures if method.tuned and phase == "test" else None
    seed = _derive_seed(repro.config.seed, pair.model, pair.distribution, token)
    ident = json.dumps([phase, pair.model, pair.distribution, method.label, method.estimator, method.options,
                        method.budget.model_dump(mode="json"), token, temperature, tuning, seed], sort_keys=True)
    return Row(phase, pair, method, token, temperature, hashlib.sha256(ident.encode()).hexdigest()[:24], seed)


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
        tuned = TUNED_OPTION in fields and TUNED_OPTION not in options
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
    labels = [m.key for m in config.methods]
    if len(set(labels)) != len(labels):
        raise LowprobError(f"{path}: two methods share a label; give each a distinct 'label'")
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
    scale = config.budget.scale or max(config.budget.min_scale,
                                       budget_scale(test_band.high, config.budget.paper_band_high))
    for name, tokens, band in (("test", selection.test, test_band), ("tuning", selection.tuning, tuning_band)):
        if not tokens:
            reason = (f"no {name} token has a ground truth in {band.describe()} with at least "
                      f"{min_hits(config.targets.max_rel_error)} hits in {gt.samples} samples")
            return PairPlan(model, source.name, source, gt, test_band, tuning_band, selection, scale, [], reason)
    methods = _method_plans(config, registry, scale, [gt.probability(t) for t in selection.tuning], where,
                            temperatures[0])
    return PairPlan(model, source.name, source, gt, test_band, tuning_band, selection, scale, methods)


def pending(repro: Reproduction, pairs: list[PairPlan]) -> list[Row]:
    """Rows of ``pairs`` not yet in the results file (nor skipped as unsupported)."""
    done = repro.results.keys()
    return [r for p in pairs for r in repro.rows(p)
            if r.key not in done and _unsupported_key(p, r.method) not in done]


def _unsupported_key(pair: PairPlan, method: MethodPlan) -> str:
    return f"unsupported-{_derive_seed(pair.model, pair.distribution, method.label, method.estimator)}"


def _problem(model: ModelAdapter, distribution: InputDistribution, token: int) -> Problem:
    return Problem(MeteredModel(model), distribution, ArgmaxIs(token, model.vocab.token_string(token)))


def _tuning_scores(repro: Reproduction, pair: PairPlan, method: MethodPlan, planned: list[Row],
                   rows: dict[str, dict[str, Any]]) -> dict[float, TuningScore]:
    """The tuning score of each temperature from the tuning rows in the results file."""
    scores = {}
    for temp in repro.temperatures:
        mine = [r for r in planned if r.phase == "tune" and r.method == method and r.temperature == temp]
        ok = [rows[r.key] for r in mine if "estimate" in rows.get(r.key, {})]
        scores[temp] = tuning_score([pair.p(r["token"]) for r in ok], [r["estimate"]["value"] for r in ok],
                                    len(mine))
    return scores


def _chosen_temperature(repro: Reproduction, pair: PairPlan, method: MethodPlan, planned: list[Row]) -> float:
    """The grid's only value, or the one with the best tuning score."""
    if len(repro.temperatures) == 1:
        return repro.temperatures[0]
    rows = {r["key"]: r for r in repro.results.rows()}
    return best_temperature(_tuning_scores(repro, pair, method, planned, rows))


def _record(repro: Reproduction, row: Row, token_text: str, options: dict[str, Any],
            result: dict[str, Any]) -> dict[str, Any]:
    pair, budget = row.pair, row.method.budget.model_dump(mode="json", exclude_none=True)
    return {"key": row.key, "experiment": repro.config.name, "phase": row.phase, "model": pair.model,
            "distribution": pair.distribution, "token": row.token, "token_text": token_text,
            "p_true": pair.p(row.token), "gt_count": int(pair.ground_truth.counts[row.token]),
            "gt_samples": pair.ground_truth.samples, "method": row.method.label, "estimator": row.method.estimator,
            "options": options, "temperature": options.get(TUNED_OPTION), "budget": budget, "seed": row.seed,
            **result}


def _unsupported(repro: Reproduction, pair: PairPlan, method: MethodPlan, reason: str) -> dict[str, Any]:
    return {"key": _unsupported_key(pair, method), "experiment": repro.config.name, "phase": "unsupported",
            "model": pair.model, "distribution": pair.distribution, "method": method.label,
            "estimator": method.estimator, "error": reason}


def run(repro: Reproduction, registry: Registry, pairs: list[PairPlan],
        on_row: Callable[[dict[str, Any], float], None] | None = None) -> Iterator[dict[str, Any]]:
    """Run every pending row of ``pairs``, tuning before testing; yields each record as it is written and
    calls ``on_row(record, model calls planned for it)``. A method that cannot handle a pair's distribution
    gets one ``unsupported`` record instead of its rows."""
    results = repro.results
    todo = {r.key for r in pending(repro, pairs)}
    for pair in pairs:
        planned = repro.rows(pair)
        rows = [r for r in planned if r.key in todo]
        if not rows:
            continue
        compiled = compile_source(registry, pair.source, model=pair.model)
        dist = compiled.spec.distribution(None)
        if dist.content_hash != pair.ground_truth.distribution_hash:
            raise LowprobError(f"the ground truth of {pair.model}/{pair.distribution} was counted on a different "
                               f"distribution (hash {pair.ground_truth.distribution_hash}, the spec now gives "
                               f"{dist.content_hash}); recount it")
        vocab = compiled.model.vocab
        for method in pair.methods:
            mine = [r for r in rows if r.method == method]
            if not mine:
                continue
            first = method.options | ({TUNED_OPTION: repro.temperatures[0]} if method.tuned else {})
            try:
                registry.estimator(method.estimator)(first).check_problem(
                    _problem(compiled.model, dist, mine[0].token))
            except LowprobError as exc:
                record = _unsupported(repro, pair, method, str(exc))
                results.append(record)
                if on_row is not None:
                    on_row(record, sum(r.method.budget.model_calls or 0 for r in mine))
                yield record
                continue
            temperature: float | None = None
            for row in mine:
                if row.phase == "test" and method.tuned and temperature is None:
                    temperature = _chosen_temperature(repro, pair, method, planned)
                options = dict(method.options)
                if method.tuned:
                    options[TUNED_OPTION] = row.temperature if row.phase == "tune" else temperature
                try:
                    estimate = run_problem(registry, _problem(compiled.model, dist, row.token), method.estimator,
                                           options, method.budget, row.seed, level=repro.config.level,
                                           progress=False)
                    result: dict[str, Any] = {"estimate": estimate.model_dump(mode="json", exclude={"trace"})}
                except LowprobError as exc:
                    result = {"error": str(exc)}
                record = _record(repro, row, vocab.token_string(row.token), options, result)
                results.append(record)
                if on_row is not None:
                    on_row(record, method.budget.model_calls or 0)
                yield record


@dataclass
class Cell:
    """One method on one (model, distribution) in the report."""

    planned: int
    scores: Scores | None = None
    errors: int = 0
    unsupported: str | None = None
    temperature: float | None = None
    tuning: dict[float, TuningScore] = field(default_factory=dict)
    seconds: float | None = None
    truth: list[float] = field(default_factory=list)
    estimates: list[float] = field(default_factory=list)


def _cells(repro: Reproduction) -> dict[tuple[str, str, str], Cell]:
    """Score every (model, distribution, method) from the rows of the current plan in the results file."""
    rows = {r["key"]: r for r in repro.results.rows()}
    cells = {}
    for pair in repro.pairs:
        planned = repro.rows(pair)
        for method in pair.methods:
            cell = Cell(planned=len(pair.selection.test))
            skipped = rows.get(_unsupported_key(pair, method))
            if skipped is not None:
                cell.unsupported = skipped["error"]
            test = [rows[r.key] for r in planned if r.phase == "test" and r.method == method and r.key in rows]
            ok = [r for r in test if "estimate" in r]
            cell.errors = len(test) - len(ok)
            if method.tuned and any(r.phase == "tune" and r.method == method and r.key in rows for r in planned):
                cell.tuning = _tuning_scores(repro, pair, method, planned, rows)
            if ok:
                cell.temperature = ok[0].get("temperature")
                cell.truth = [pair.p(r["token"]) for r in ok]
                cell.estimates = [r["estimate"]["value"] for r in ok]
                cell.scores = score(cell.truth, cell.estimates)
                cell.seconds = float(np.mean([r["estimate"]["seconds"] for r in ok]))
            cells[(pair.model, pair.distribution, method.label)] = cell
    return cells


def _number(value: float) -> str | float:
    return value if math.isfinite(value) else ("inf" if value > 0 else "nan")


def _cell_json(cell: Cell) -> dict[str, Any]:
    out: dict[str, Any] = {"planned": cell.planned, "errors": cell.errors, "unsupported": cell.unsupported,
                           "temperature": cell.temperature, "seconds_mean": cell.seconds,
                           "tuning": {f"{t:.4g}": {"failures": v.failures, "is_raw": _number(v.loss)}
                                      for t, v in cell.tuning.items()}}
    s = cell.scores
    if s is not None:
        out |= {"n": s.n, "zeros": s.zeros, "is_fit": _number(s.is_fit), "is_fit_se": _number(s.is_fit_se),
                "is_raw": _number(s.is_raw), "sq_log_fit": _number(s.sq_log_fit), "sq_log_raw": _number(s.sq_log_raw),
                "fit": vars(s.fit), "sq_fit": vars(s.sq_fit)}
    return out


def _cell_text(cell: Cell | None, metric: str) -> str:
    if cell is not None and cell.unsupported is not None:
        return "n/a"
    if cell is None or cell.scores is None:
        return "—"
    value = getattr(cell.scores, metric)
    zeros = cell.scores.zeros
    text = f"{value:.3f}" if math.isfinite(value) else f"∞ ({zeros} zero{'s' if zeros != 1 else ''})"
    return text + ("*" if cell.scores.n < cell.planned else "")


METRICS = (("is_fit", "Itakura–Saito loss after the log-space fit"),
           ("is_raw", "Itakura–Saito loss without a fit"),
           ("sq_log_fit", "Squared error in log space (after its least-squares fit)"))


def _markdown(repro: Reproduction, cells: dict[tuple[str, str, str], Cell]) -> str:
    labels = [m.key for m in repro.config.methods]
    lines = [f"# {repro.config.name}: losses", "",
             "Mean loss over the test tokens of each (model, distribution); lower is better. `*`: fewer tokens "
             "scored than planned (run in progress or errors); `—`: not run yet; `n/a`: the estimator cannot "
             "handle the distribution; `mean`: over the distributions the method ran on. See docs/protocol.md.", ""]
    for model in _models(repro):
        pairs = [p for p in repro.pairs if p.model == model]
        lines += [f"## {model}", ""]
        for metric, title in METRICS:
            rows = []
            for pair in pairs:
                rows.append([pair.distribution, *(_cell_text(cells.get((model, pair.distribution, m)), metric)
                                                  for m in labels)])
            means = []
            for m in labels:
                got = [getattr(c.scores, metric) for p in pairs if (c := cells.get((model, p.distribution, m)))
                       and c.scores is not None and c.unsupported is None]
                means.append(f"{np.mean(got):.3f}" if got and all(math.isfinite(v) for v in got) else
                             ("∞" if got else "—"))
            rows.append(["mean", *means])
            lines += [f"### {title}", "", markdown_table(["distribution", *labels], rows), ""]
        lines += ["### Protocol", "", markdown_table(
            ["distribution", "samples", "test band", "tokens (in band)", "tuning band", "tokens (in band)",
             "budget scale", "temperatures (or why skipped)"],
            [[p.distribution, str(p.ground_truth.samples), p.test_band.describe(),
              f"{len(p.selection.test)} ({p.selection.test_candidates})", p.tuning_band.describe(),
              f"{len(p.selection.tuning)} ({p.selection.tuning_candidates})", f"{p.scale:.4g}",
              p.skipped or ", ".join(f"{m.label} {t:.3g}" for m in p.methods if m.tuned
                                     and (t := cells[(model, p.distribution, m.label)].temperature) is not None)
              or "—"]
             for p in pairs]), ""]
    return "\n".join(lines)


def _models(repro: Reproduction) -> list[str]:
    """The config's models that have at least one planned pair, in config order."""
    return [m for m in repro.config.models if any(p.model == m for p in repro.pairs)]



def write_report(repro: Reproduction) -> list[Path]:
    """Write ``losses.md``, ``losses.json`` and the SVG figures from the results file; returns their paths."""
    cells = _cells(repro)
    labels = [m.key for m in repro.config.methods]
    data = {"name": repro.config.name, "config": repro.config.model_dump(mode="json"),
            "temperatures": list(repro.temperatures),
            "pairs": [{"model": p.model, "distribution": p.distribution, "samples": p.ground_truth.samples,
                       "test_band": [p.test_band.low, p.test_band.high],
                       "tuning_band": [p.tuning_band.low, p.tuning_band.high], "scale": p.scale,
                       "test_tokens": list(p.selection.test), "tuning_tokens": list(p.selection.tuning),
                       "test_candidates": p.selection.test_candidates,
                       "tuning_candidates": p.selection.tuning_candidates, "skipped": p.skipped,
                       "methods": {m.label: {"estimator": m.estimator, "options": m.options, "tuned": m.tuned,
                                             "budget": m.budget.model_dump(mode="json", exclude_none=True),
                                             **_cell_json(cells[(p.model, p.distribution, m.label)])}
                                   for m in p.methods}}
                      for p in repro.pairs]}
    written = [repro.output / "losses.json", repro.output / "losses.md"]
    write_atomic(written[0], json.dumps(data, indent=1, allow_nan=False) + "\n")
    write_atomic(written[1], _markdown(repro, cells) + "\n")
    for model in _models(repro):
        pairs = [p for p in repro.pairs if p.model == model]
        folder = repro.output / "figures" / model
        for label in labels:
            panels = []
            for p in pairs:
                cell = cells.get((model, p.distribution, label), Cell(planned=0))
                s = cell.scores
                note = (f"IS loss {s.is_fit:.3f} fit, {_cell_text(cell, 'is_raw')} raw; {s.zeros}/{s.n} zero"
                        if s is not None else "n/a" if cell.unsupported else p.skipped and "no tokens" or "not run")
                panels.append(ScatterPanel(p.distribution, cell.truth, cell.estimates,
                                           list(s.fit.apply(cell.estimates)) if s is not None else None, note))
            path = folder / f"scatter-{label}.svg"
            write_atomic(path, scatter_grid(f"{label} on {model}: estimate vs ground truth", panels))
            written.append(path)
        values = {(p.distribution, label): c.scores.is_fit if (c := cells.get((model, p.distribution, label)))
                  and c.scores and c.unsupported is None else None for p in pairs for label in labels}
        path = folder / "losses.svg"
        write_atomic(path, bar_chart(f"{model}: Itakura–Saito loss after fit (lower is better)",
                                     [p.distribution for p in pairs], labels, values, "mean IS loss"))
        written.append(path)
    return written


def describe_plan(repro: Reproduction, pairs: list[PairPlan]) -> str:
    """A table of what each pair will run: bands, tokens, scale, per-method budgets and pending rows."""
    todo = pending(repro, pairs)
    rows = []
    for p in pairs:
        mine = [r for r in todo if r.pair is p]
        calls = sum(r.method.budget.model_calls or 0 for r in mine)
        rows.append([p.model, p.distribution, str(p.ground_truth.samples), p.test_band.describe(),
                     f"{len(p.selection.test)}/{len(p.selection.tuning)}", f"{p.scale:.3g}",
                     p.skipped or " ".join(f"{m.label}={m.budget.model_calls}" for m in p.methods), str(len(mine)),
                     str(calls)])
    return format_table(["model", "distribution", "samples", "test band", "test/tune", "scale",
                         "budgets (model calls)", "pending", "pending calls"], rows)
