"""The ``lowprob`` command line: estimate, run experiments, inspect specs, list plugins."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import traceback
from pathlib import Path
from typing import Any, NoReturn

import click
import torch

from lowprob import __version__
from lowprob import compare as comparing
from lowprob.api import (
    SpecSource,
    compile_problem,
    compile_source,
    resolve_spec,
    run_problem,
)
from lowprob.cli_params import SEED, Count, FilePath, Number, check_device
from lowprob.core.budget import Budget
from lowprob.core.certified_argmax import PRECISIONS
from lowprob.core.errors import LowprobError
from lowprob.core.estimator import Problem
from lowprob.core.progress import progress_bar
from lowprob.core.runner import check_budget, check_runnable
from lowprob.core.vocabulary import Vocabulary
from lowprob.engine import Engine, Job
from lowprob.executors import ExecutorSettings, add_executor_options
from lowprob.experiments import open_results, plan, run
from lowprob.ground_truth import MAX_RESERVOIR, MAX_SHARD_SIZE, MAX_SHARDS
from lowprob.plugins import Registry, load_registry, plugin_infos
from lowprob.reference_cli import reference
from lowprob.report import format_table, markdown_table, summary_table
from lowprob.results import ResultRow

EXIT_USER_ERROR = 1
"""Exit status of bad input (a :class:`LowprobError`); click's own usage errors exit with 2."""
EXIT_INTERNAL_ERROR = 70
"""Exit status of a bug (an unexpected exception): ``EX_SOFTWARE`` of sysexits.h."""
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141
"""128 + SIGPIPE, what a shell reports for a writer whose reader closed the pipe."""
MAX_SHOWN_SAMPLES = 10_000
"""Decoded samples ``estimate --samples`` and ``sample -n`` print at most (more is not for reading)."""


def _echo_err(message: str) -> None:
    """Print to stderr; characters the terminal cannot take (lone surrogates from bad bytes) are escaped."""
    click.echo(message.encode("utf-8", "backslashreplace").decode("utf-8"), err=True)


def _fail(message: str) -> NoReturn:
    _echo_err(message if ": error:" in message.split("\n", 1)[0] else f"error: {message}")
    sys.exit(EXIT_USER_ERROR)


def _shown(args: list[str], width: int = 80) -> str:
    """The command line as typed, each argument cut to ``width`` characters."""
    return " ".join(a if a and a.isprintable() and " " not in a else repr(a) for a in
                    (arg if len(arg) <= width else arg[:width - 3] + "..." for arg in args))


class _Group(click.Group):
    """The one error boundary: lowprob's own errors become one clear message and exit status 1; any other
    exception is a bug, reported in one paragraph (command, input, how to see the traceback) with exit
    status 70; Ctrl-C exits 130."""

    def invoke(self, ctx: click.Context) -> Any:
        args = [*getattr(ctx, "_protected_args", ()), *ctx.args]
        try:
            return super().invoke(ctx)
        except LowprobError as exc:
            _fail(str(exc))
        except KeyboardInterrupt:
            _echo_err("interrupted; results written so far are kept (rerun to resume)")
            sys.exit(EXIT_INTERRUPTED)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except BrokenPipeError:  # the reader went away (`lowprob ... | head`): not an error of lowprob's
            with contextlib.suppress(OSError, ValueError):  # stdout onto /dev/null (when it is a real file), so
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the final flush cannot fail
            sys.exit(EXIT_BROKEN_PIPE)
        except Exception as exc:
            if ctx.params.get("verbose"):
                _echo_err(traceback.format_exc().rstrip())
            detail = str(exc).splitlines()[0][:200] if str(exc) else ""
            _echo_err(f"internal error in `lowprob {_shown(args)}`: {type(exc).__name__}"
                      f"{': ' + detail if detail else ''}. This is a bug in lowprob or one of its plugins, not a "
                      f"problem with your input; rerun as `lowprob -v {args[0] if args else ''} ...` to see the "
                      f"traceback, and include it when you report the bug.")
            sys.exit(EXIT_INTERNAL_ERROR)


def _registry() -> Registry:
    return load_registry()


def _parse_options(pairs: tuple[str, ...]) -> dict[str, Any]:
    """``key=value`` pairs; values are read as JSON when they parse (numbers, booleans), else as strings."""
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise LowprobError(f"option {pair!r} is not of the form key=value")
        try:
            options[key] = json.loads(raw)
        except json.JSONDecodeError:
            options[key] = raw
    return options


def _decoded_samples(problem: Problem, n: int, seed: int) -> list[tuple[str, float]]:
    if n <= 0:
        return []
    tokens = problem.distribution.sample(n, torch.Generator().manual_seed(seed))
    logp = problem.distribution.log_prob(tokens)
    vocab = problem.model.vocab
    return [(vocab.decode(row.tolist()), float(lp)) for row, lp in zip(tokens, logp, strict=True)]


def _show_problem(problem: Problem, samples: int, seed: int) -> None:
    dist = problem.distribution
    click.echo(f"model        {problem.model.name} (d_vocab {problem.model.d_vocab}, n_ctx {problem.model.n_ctx})")
    click.echo(f"distribution {dist.name or '(unnamed)'}: {dist.length} tokens, "
               f"{'independent positions' if dist.is_factorized else 'with alternatives'}, hash {dist.content_hash}")
    click.echo(f"target       {problem.event.describe()}")
    for text, logp in _decoded_samples(problem, samples, seed):
        shown = text if len(text) <= 100 else text[:97] + "..."
        click.echo(f"  sample     {shown!r}  (log D = {logp:.2f})")


budget_options = [
    click.option("--budget-calls", type=int, default=None,
                 help="Model calls: forward passes + backward-weight × backward passes."),
    click.option("--budget-seconds", type=float, default=None, help="Wall-clock seconds."),
    click.option("--budget-rel-error", type=float, default=None,
                 help="Stop once the relative standard error falls to this."),
    click.option("--backward-weight", type=float, default=2.0, show_default=True,
                 help="Cost of one backward pass in forward passes."),
    click.option("--paper-budget", is_flag=True,
                 help="The estimator's budget in Wu & Hilton (2025): 2^16 calls, backward passes not charged."),
]


def _with_budget(fn: Any) -> Any:
    for option in reversed(budget_options):
        fn = option(fn)
    return fn


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="lowprob")
@click.option("-v", "--verbose", is_flag=True,
              help="Log what lowprob does; on an internal error, print the traceback.")
def main(verbose: bool) -> None:
    """Estimate the probability that a language model produces a rare output.

    \b
    Quick start (the built-in default model and a built-in distribution):
      lowprob estimate caps --target 'argmax == "CESS"' --budget-calls 100000
      lowprob run examples/experiments/demo.toml

    \b
    Exit status: 0 done, 1 bad input (the message says what and where), 2 bad command line, 70 internal
    error (a bug: rerun with -v for the traceback), 130 interrupted, 141 output pipe closed.
    """
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="lowprob: %(message)s")


@main.command()
@click.argument("spec")
@click.option("--model", default=None, help="Model name (default: the registry's default model).")
@click.option("--distribution", default=None, help="Which `dist` of the spec (default: main or the only one).")
@click.option("--target", default=None,
              help="A target name from the spec, or an expression like 'argmax == \" the\"'.")
@click.option("--estimator", default="naive", show_default=True, help="Registered estimator name.")
@click.option("-o", "--option", "options", multiple=True, help="Estimator option key=value (repeatable).")
@_with_budget
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--level", type=Number(0, 1, open_min=True, open_max=True), default=0.95, show_default=True,
              help="Confidence level.")
@click.option("--samples", type=click.IntRange(0, MAX_SHOWN_SAMPLES), default=3, show_default=True,
              help="Decoded input samples to show.")
@click.option("--output", type=FilePath(path_type=Path), default=None, help="Append the result to this JSONL file.")
@click.option("--json", "as_json", is_flag=True, help="Print the full result as JSON.")
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: on in a terminal, off in CI).")
@click.option("--dry-run", is_flag=True, help="Validate everything and show the problem; estimate nothing.")
def estimate(spec: str, model: str | None, distribution: str | None, target: str | None, estimator: str,
             options: tuple[str, ...], budget_calls: int | None, budget_seconds: float | None,
             budget_rel_error: float | None, backward_weight: float, paper_budget: bool, seed: int, level: float,
             samples: int,
             output: Path | None, as_json: bool, progress: bool | None, dry_run: bool) -> None:
    """Estimate one probability: SPEC is a spec file, a registered distribution, or DSL text.

    \b
    Example:
      lowprob estimate caps --target 'argmax == "CESS"' --budget-calls 100000 --seed 1
      lowprob estimate my.lp --estimator uniform-is -o batch_size=512 --budget-seconds 30
    """
    registry = _registry()
    chosen = registry.create_estimator(estimator, _parse_options(options))  # checked before the model loads
    results = Engine(output) if output is not None else None  # writable and readable, before any compute
    given = budget_calls is not None or budget_seconds is not None or budget_rel_error is not None
    if paper_budget:
        if given:
            raise LowprobError("--paper-budget replaces the other budget options; give one or the other")
        budget = registry.estimator(estimator).paper_budget()
    else:
        budget = Budget(model_calls=100_000 if not given else budget_calls, seconds=budget_seconds,
                        target_rel_error=budget_rel_error, backward_weight=backward_weight)
    check_budget(chosen, budget)  # before the model loads, like the options
    problem = compile_problem(registry, resolve_spec(spec, registry), model=model, distribution=distribution,
                              target=target)
    if not as_json:
        _show_problem(problem, samples, seed)
        click.echo(f"estimator    {estimator} with budget {budget.describe()}, seed {seed}")
    if dry_run:
        check_runnable(chosen, problem, budget, seed)
        click.echo("dry run      nothing estimated")
        return
    result = run_problem(registry, problem, chosen, None, budget, seed, level=level, progress=progress)
    written = None
    if results is not None:
        row = comparing.result_row(problem, estimator, _parse_options(options), budget, seed, result)
        written = row.key not in results.rows
        results.write(row)
    if as_json:
        click.echo(result.model_dump_json(indent=2))
        return
    click.echo(f"result       {result.summary()}")
    click.echo(f"stopped by   {result.stop_reason}")
    if written is not None:
        click.echo(f"written to   {output}" if written else f"kept         the identical row already in {output}")


@main.command(name="compare")
@click.argument("spec")
@click.option("--model", default=None, help="Model name (default: the registry's default model).")
@click.option("--distribution", default=None, help="Which `dist` of the spec (default: main or the only one).")
@click.option("--target", default=None,
              help="A target name from the spec, or an expression like 'argmax == \" the\"'.")
@click.option("--estimator", "estimators", multiple=True, required=True,
              help="Registered estimator name, default options (repeatable; each runs once).")
@_with_budget
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--level", type=Number(0, 1, open_min=True, open_max=True), default=0.95, show_default=True,
              help="Confidence level.")
@click.option("--output", type=FilePath(path_type=Path), default=None, help="Append the results to this JSONL file.")
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: on in a terminal, off in CI).")
def compare_command(spec: str, model: str | None, distribution: str | None, target: str | None,
                    estimators: tuple[str, ...], budget_calls: int | None, budget_seconds: float | None,
                    budget_rel_error: float | None, backward_weight: float, paper_budget: bool, seed: int,
                    level: float, output: Path | None, progress: bool | None) -> None:
    """Several estimators on one problem at the same budget and seed, side by side; on a problem with a known
    answer (a planted model) the exact value is printed and each estimate scored against it.

    \b
    Example (what `make run` runs):
      lowprob compare planted-threshold-e9 --model planted-threshold --target hit \\
          --estimator naive --estimator ams --paper-budget
    """
    registry = _registry()
    comparing.check_estimators(registry, list(estimators))  # before the model loads
    results = Engine(output) if output is not None else None
    given = budget_calls is not None or budget_seconds is not None or budget_rel_error is not None
    if paper_budget and given:
        raise LowprobError("--paper-budget replaces the other budget options; give one or the other")
    common = Budget(model_calls=100_000 if not given else budget_calls, seconds=budget_seconds,
                    target_rel_error=budget_rel_error, backward_weight=backward_weight)
    budgets = {name: registry.estimator(name).paper_budget() if paper_budget else common for name in estimators}
    for name in estimators:
        check_budget(registry.create_estimator(name, None), budgets[name])
    problem = compile_problem(registry, resolve_spec(spec, registry), model=model, distribution=distribution,
                              target=target)
    answer = comparing.known_answer(registry, problem.model.name, spec, target)
    _show_problem(problem, 0, seed)
    if answer is not None:
        click.echo(f"exact        p = {answer.exact_p:.6e} (log10 {answer.exact.log10:.4f}; {answer.family} "
                   f"planted model, computed without running it)")
    shown = {b.describe() for b in budgets.values()}
    click.echo(f"budget       {' / '.join(sorted(shown))}, seed {seed}")
    runs = comparing.compare(registry, problem, list(estimators), budgets, seed, level=level, progress=progress)
    if results is not None:
        for run in runs:
            results.write(comparing.result_row(problem, run.estimator, {}, run.budget, seed, run.estimate))
    click.echo(comparing.comparison_table(runs, answer, level))
    for run in runs:
        for warning in run.estimate.warnings:
            click.echo(f"warning      {run.estimator}: {warning}")
    if results is not None:
        click.echo(f"written to   {output}")


@main.command(name="run")
@click.argument("experiment", type=FilePath(path_type=Path))
@click.option("--dry-run", is_flag=True, help="Validate and list what would run; run nothing.")
@click.option("--progress/--no-progress", default=None, help="Progress bar over estimates.")
@add_executor_options
def run_command(experiment: Path, dry_run: bool, progress: bool | None, executor: dict[str, Any]) -> None:
    """Run an experiment file (TOML), resuming where an earlier run of it stopped.

    \b
    Example:
      lowprob run examples/experiments/demo.toml
    Results go to the file named by `output` (JSON lines, one per estimate); rows already there are skipped.
    """
    registry = _registry()
    exp = plan(experiment, registry)
    runner = exp.executor.merged(**executor).create()
    results = open_results(exp)
    todo = results.pending(exp.jobs)
    click.echo(f"experiment {exp.spec.name}: {len(exp.jobs)} estimates planned, {len(exp.jobs) - len(todo)} "
               f"already in {exp.output}, {len(todo)} to run")
    if dry_run:
        for job in todo:
            row = job.spec
            click.echo(f"  {row.model}  {row.distribution}  {row.target}  {row.label}  "
                       f"{row.budget.describe()}  seed {row.seed}")
        return
    bar = progress_bar(len(todo), "estimates", progress)
    try:
        for row in run(exp, registry, results, runner):
            bar.update(1)
            if row.estimate is not None:
                bar.write(f"  {row.distribution} / {row.target} / {row.label} / seed {row.seed}: "
                          f"{row.estimate.summary()}")
    finally:
        bar.close()
    click.echo(summary_table(results.rows.values()))
    click.echo(f"results: {exp.output}")


@main.command(name="reproduce")
@click.option("--quick", is_flag=True, help="The shipped quick variant (≤ 20 minutes on a 2-core CPU).")
@click.option("--regime", type=click.Choice(["shipped", "paper"]), default="shipped", show_default=True,
              help="paper: the paper's bands and unscaled budgets, test targets scored against references "
                   "(lowprob/data/reproduce-paper.toml, docs/references.md).")
@click.option("--config", "config_path", type=FilePath(path_type=Path), default=None,
              help="A reproduce config (TOML) instead of the shipped one.")
@click.option("--output", type=FilePath(file_okay=False, path_type=Path), default=None,
              help="Output folder (default: the config's `output`, relative to the working directory).")
@click.option("--only-model", default=None, help="Run only this model of the config (the report covers all).")
@click.option("--only-distribution", default=None, help="Run only this distribution of the config.")
@click.option("--dry-run", is_flag=True, help="Validate and show the plan (bands, budgets, pending rows); run nothing.")
@click.option("--progress/--no-progress", default=None, help="Progress bar over model calls.")
@add_executor_options
def reproduce_command(quick: bool, regime: str, config_path: Path | None, output: Path | None, only_model: str | None,
                      only_distribution: str | None, dry_run: bool, progress: bool | None,
                      executor: dict[str, Any]) -> None:
    """Run the paper's evaluation protocol: tuned temperatures, every method on seeded targets, loss tables.

    \b
    Example:
      lowprob reproduce --quick
      lowprob reproduce --only-model lowprob-1l --output results/repro
    Resumable: rerunning skips estimates already in <output>/results.jsonl. Writes losses.md, losses.json and
    figures/<model>/*.png and *.svg. See docs/protocol.md.
    """
    from lowprob import reproduce as rp

    if quick and config_path is not None:
        raise LowprobError("--quick picks the shipped quick config; give it or --config, not both")
    if regime == "paper" and (quick or config_path is not None):
        raise LowprobError("--regime paper picks the shipped paper-regime config; give it, --quick or --config")
    registry = _registry()
    repro = rp.plan(config_path or rp.shipped_config(quick, paper=regime == "paper"), registry, output, only_model,
                    only_distribution)
    runner = repro.config.merged(**executor).create()
    pairs = repro.selected
    results = repro.open()
    click.echo(rp.describe_plan(repro, pairs, results))
    todo = results.pending(repro.all_jobs(pairs))
    click.echo(f"{repro.config.name}: {len(todo)} estimates to run, output {repro.output}")
    if dry_run:
        return
    bar = progress_bar(sum(job.calls for job in todo), "reproduce", progress)
    group_calls: dict[str | None, float] = {}
    for job in todo:
        group_calls[job.group] = group_calls.get(job.group, 0) + job.calls
    current: list[str] = []

    def report(job: Job, row: ResultRow) -> None:
        bar.update(group_calls[job.group] if row.key == job.group else job.calls)  # a marker stands for its group
        pair = f"{row.model} / {row.distribution}"
        if current != [pair]:
            current[:] = [pair]
            bar.write(f"  {pair}")
        if row.error is not None:
            bar.write(f"    {row.label}: {row.error.splitlines()[0]}")

    try:
        for job, row in rp.run(repro, registry, pairs, results, runner):
            report(job, row)
    finally:
        bar.close()
    for path in rp.write_report(repro, results)[:2]:
        click.echo(f"wrote {path}")
    click.echo(f"figures: {repro.output / 'figures'}")


@main.command()
@click.argument("spec")
@click.option("--model", default=None, help="Model whose tokenizer and context the spec compiles against.")
@click.option("--distribution", default=None)
@click.option("-n", "count", type=click.IntRange(1, MAX_SHOWN_SAMPLES), default=5, show_default=True)
@click.option("--seed", type=SEED, default=0, show_default=True)
def sample(spec: str, model: str | None, distribution: str | None, count: int, seed: int) -> None:
    """Show decoded samples of a distribution with their log-probabilities.

    \b
    Example:
      lowprob sample hex -n 10 --seed 3
    """
    registry = _registry()
    compiled = compile_source(registry, resolve_spec(spec, registry), model=model)
    dist = compiled.spec.distribution(distribution)
    tokens = dist.sample(count, torch.Generator().manual_seed(seed))
    for row, logp in zip(tokens, dist.log_prob(tokens), strict=True):
        ids = row.tolist()
        click.echo(f"{float(logp):9.3f}  {compiled.model.vocab.decode(ids)!r}")


@main.command()
@click.argument("spec")
@click.option("--model", default=None, help="Model whose tokenizer and context the spec compiles against.")
def check(spec: str, model: str | None) -> None:
    """Parse and compile a spec; report errors with line, column and a caret (exit status 1).

    \b
    Example:
      lowprob check caps
    """
    registry = _registry()
    source: SpecSource = resolve_spec(spec, registry)
    compiled = compile_source(registry, source, model=model)
    click.echo(f"{source.origin}: ok (compiled for model {compiled.model.name})")
    for name, dist in compiled.spec.distributions.items():
        click.echo(f"  dist {name}: {dist.describe()}")
    for name, target in compiled.spec.targets.items():
        click.echo(f"  target {name}: {target.describe()}")
    for name, tokens in compiled.spec.token_sets.items():
        click.echo(f"  tokens {name}: {len(tokens)} tokens{' (weighted)' if tokens.weighted else ''}")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def plugins(as_json: bool) -> None:
    """List plugins: name, version and what each provides.

    \b
    Example:
      lowprob plugins --json
    Block a plugin with LOWPROB_BLOCK_PLUGINS=name1,name2.
    """
    infos = plugin_infos(_registry())
    if as_json:
        click.echo(json.dumps([info.model_dump() for info in infos], indent=2))
        return
    rows = [[info.name, info.version or "-",
             "; ".join(f"{kind}: {', '.join(names)}" for kind, names in info.provides.items() if names)]
            for info in infos]
    click.echo(format_table(["plugin", "version", "provides"], rows))


@main.command()
@click.option("--options", "show_options", is_flag=True, help="Also print each estimator's options.")
def estimators(show_options: bool) -> None:
    """List registered estimators with their capabilities (and options).

    \b
    Example:
      lowprob estimators --options
    """
    registry = _registry()
    for entry in registry.entries("estimators"):
        cls = entry.obj
        caps = cls.capabilities
        flags = ", ".join(k for k in ("unbiased", "has_error_bars", "needs_gradients", "needs_factorized",
                                      "output_events") if getattr(caps, k))
        click.echo(f"{entry.name}  ({entry.plugin} {entry.version})  [{flags}]")
        doc = (cls.__doc__ or "").strip().splitlines()
        if doc:
            click.echo(f"    {doc[0]}")
        if show_options:
            for field_name, field in cls.Options.model_fields.items():
                ann = getattr(field.annotation, "__name__", str(field.annotation))
                default = ("required" if field.is_required()
                           else f"default {field.get_default(call_default_factory=True)!r}")
                click.echo(f"    --option {field_name}=...  ({ann}, {default})  {field.description or ''}")


@main.command()
def models() -> None:
    """List registered models (nothing is loaded).

    \b
    Example:
      lowprob models
    """
    registry = _registry()
    rows = [[e.name + (" (default)" if e.name == registry.default_model_name else ""), e.plugin, e.description]
            for e in registry.entries("models")]
    click.echo(format_table(["model", "plugin", "description"], rows))


@main.command()
def distributions() -> None:
    """List registered distributions (named specs usable wherever a SPEC is asked for).

    \b
    Example:
      lowprob distributions
    """
    rows = [[e.name, e.plugin, e.description] for e in _registry().entries("distributions")]
    click.echo(format_table(["distribution", "plugin", "description"], rows))


@main.group(name="ground-truth")
def ground_truth() -> None:
    """Count how often each token is the argmax over many sampled inputs (sharded, resumable, mergeable)."""


@ground_truth.command(name="run")
@click.argument("spec")
@click.option("--model", default=None, help="Model name (default: the registry's default model).")
@click.option("--distribution", default=None, help="Which `dist` of the spec (default: main or the only one).")
@click.option("--samples", type=Count(1, MAX_SHARDS * MAX_SHARD_SIZE), required=True,
              help="Inputs to count, an integer or 2^k (a multiple of the shard size, at most 2^20 shards).")
@click.option("--shard-size", type=Count(1, MAX_SHARD_SIZE), default="2^16", show_default=True,
              help="Inputs per shard (the unit of resume).")
@click.option("--first-seed", type=SEED, default=0, show_default=True,
              help="First shard seed; give other machines disjoint seed ranges and merge their files.")
@click.option("--reservoir", type=click.IntRange(0, MAX_RESERVOIR), default=8, show_default=True,
              help="Hitting inputs kept per rare token.")
@click.option("--reservoir-max-p", type=Number(0, 1), default=1e-3, show_default=True,
              help="Tokens more frequent than this keep no hitting inputs.")
@click.option("--batch-size", type=click.IntRange(1, 1 << 24), default=4096, show_default=True,
              help="Inputs per forward pass.")
@click.option("--device", default=None, callback=check_device,
              help="torch device (default: cuda when available, else cpu).")
@click.option("--precision", type=click.Choice(list(PRECISIONS)), default="fp32", show_default=True,
              help="Unembedding precision; counts stay the float32 ones (rows the error bound cannot certify are "
                   "recomputed in float32). Faster on GPUs; tf32 is CUDA only.")
@click.option("--output", type=FilePath(path_type=Path), required=True, help="Ground-truth file (resumed if there).")
@click.option("--target", default=None,
              help="Count the hits of this output event (a spec target name or an expression such as "
                   "'sample(8) contains \" the\"') by generating a continuation per input, instead of argmax tokens.")
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: on in a terminal, off in CI).")
@click.option("--dry-run", is_flag=True, help="Validate everything and show what would be counted; count nothing.")
@add_executor_options
def ground_truth_run(spec: str, model: str | None, distribution: str | None, samples: int, shard_size: int,
                     first_seed: int, reservoir: int, reservoir_max_p: float, batch_size: int, device: str | None,
                     precision: str, output: Path, target: str | None, progress: bool | None, dry_run: bool,
                     executor: dict[str, Any]) -> None:
    """Count argmax tokens of SPEC's inputs (a registered distribution, a spec file or DSL text), or with
    --target the hits of an output event.

    \b
    Example:
      lowprob ground-truth run caps --model lowprob-1l --samples 2^20 --output gt/lowprob-1l/caps.json
      lowprob ground-truth run english --target 'sample(2) == " of the"' --samples 2^16 --shard-size 2^12 \\
        --output gt/of-the.json
    """
    if target is not None:
        _output_ground_truth(spec, model, distribution, target, output, samples=samples, shard_size=shard_size,
                             first_seed=first_seed, reservoir_size=reservoir, batch_size=batch_size,
                             progress=progress, dry_run=dry_run, executor=executor)
        return
    from lowprob.core.model import ModelAdapter
    from lowprob.ground_truth import check_run, pending_seeds
    from lowprob.ground_truth_tasks import ShardSettings, count_ground_truth

    runner = ExecutorSettings().merged(**executor).create()
    settings = {"samples": samples, "shard_size": shard_size, "first_seed": first_seed}
    existing = check_run(output, **settings, reservoir_size=reservoir, reservoir_max_p=reservoir_max_p,
                         batch_size=batch_size)
    registry = _registry()
    source = resolve_spec(spec, registry)
    compiled = compile_source(registry, source, model=model)
    adapter = compiled.model
    dist = compiled.spec.distribution(distribution)
    name = source.name if distribution is None else distribution
    if dry_run:
        todo = pending_seeds(existing, adapter, dist, name, output, **settings)
        click.echo(f"{output}: {adapter.name} on {name} (hash {dist.content_hash}): {samples // shard_size} shards "
                   f"of {shard_size} wanted, {samples // shard_size - len(todo)} already there, {len(todo)} to count")
        return
    if runner.in_process:  # workers of other executors load the model on their own device
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if device != "cpu":
            adapter = ModelAdapter(adapter.model.to(device), adapter.vocab, adapter.name, device=device)
    total = count_ground_truth(runner, adapter, dist, name, output, source=source, dist_name=distribution,
                               samples=samples, first_seed=first_seed, device=device, progress=progress,
                               settings=ShardSettings(shard_size, reservoir, reservoir_max_p, batch_size, precision))
    _show_ground_truth(total, output)


def _output_ground_truth(spec: str, model: str | None, distribution: str | None, target: str, output: Path, *,
                         samples: int, shard_size: int, first_seed: int, reservoir_size: int, batch_size: int,
                         progress: bool | None, dry_run: bool, executor: dict[str, Any]) -> None:
    """``ground-truth run --target``: count an output event's hits by brute-force generation, on the executor."""
    from lowprob.core.output_target import OutputTarget
    from lowprob.ground_truth_tasks import ShardSettings, count_output_ground_truth
    from lowprob.output_ground_truth import check_output_run, pending_output_seeds

    runner = ExecutorSettings().merged(**executor).create()
    settings = {"samples": samples, "shard_size": shard_size, "first_seed": first_seed}
    existing = check_output_run(output, **settings, reservoir_size=reservoir_size, batch_size=batch_size)
    registry = _registry()
    source = resolve_spec(spec, registry)
    compiled = compile_source(registry, source, model=model, targets=[target])
    event = compiled.spec.target(compiled.target_names.get(target, target))
    if not isinstance(event, OutputTarget):
        raise LowprobError(f"--target {target!r} is a next-token target ({event.describe()}); argmax ground truths "
                           "count every token at once: run without --target")
    dist = compiled.spec.distribution(distribution)
    name = source.name if distribution is None else distribution
    if dry_run:
        todo = pending_output_seeds(existing, compiled.model, dist, name, event, output, **settings)
        click.echo(f"{output}: {compiled.model.name} on {name} (hash {dist.content_hash}), {event.describe()}: "
                   f"{samples // shard_size} shards of {shard_size} wanted, {samples // shard_size - len(todo)} "
                   f"already there, {len(todo)} to count")
        return
    total = count_output_ground_truth(runner, compiled.model, dist, name, event, output, source=source,
                                      dist_name=distribution, target=target, samples=samples, first_seed=first_seed,
                                      settings=ShardSettings(shard_size, reservoir_size, batch_size=batch_size),
                                      progress=progress)
    click.echo(f"{output}: {total.describe()}")


@ground_truth.command(name="merge")
@click.argument("files", nargs=-1, required=True, type=FilePath(path_type=Path, exists=True, dir_okay=False))
@click.option("--output", type=FilePath(path_type=Path), required=True)
def ground_truth_merge(files: tuple[Path, ...], output: Path) -> None:
    """Merge ground-truth files with disjoint shard seeds (e.g. from several machines) into one."""
    from lowprob.ground_truth import check_output
    from lowprob.output_ground_truth import OutputGroundTruth, load_any

    check_output(output)
    total = load_any(files[0])
    for path in files[1:]:
        other = load_any(path)
        if type(other) is not type(total):
            kind = "an output-event" if isinstance(other, OutputGroundTruth) else "an argmax"
            raise LowprobError(f"cannot merge {path}, {kind} ground truth, with {files[0]}, which is not")
        total = total.merge(other)
    total.save(output)
    if isinstance(total, OutputGroundTruth):
        click.echo(f"{output}: {total.describe()}")
    else:
        _show_ground_truth(total, output)


@ground_truth.command(name="show")
@click.argument("file", type=FilePath(path_type=Path, exists=True, dir_okay=False))
@click.option("--top", type=click.IntRange(0), default=10, show_default=True,
              help="Most frequent argmax tokens to list.")
def ground_truth_show(file: Path, top: int) -> None:
    """Summarise a ground-truth file: its provenance and the most frequent argmax tokens (id and token)."""
    from lowprob.output_ground_truth import OutputGroundTruth, load_any

    gt = load_any(file)
    if isinstance(gt, OutputGroundTruth):
        click.echo(f"{file}: {gt.describe()}")
        return
    vocab = None
    if top:
        try:
            vocab = _registry().model(gt.model).vocab
        except LowprobError as exc:
            click.echo(f"(tokens not shown: {exc})", err=True)
        if vocab is not None and vocab.size != gt.d_vocab:
            click.echo(f"(tokens not shown: model {gt.model!r} now has {vocab.size} tokens, the file {gt.d_vocab})",
                       err=True)
            vocab = None
    _show_ground_truth(gt, file, top, vocab)


@ground_truth.command(name="list")
@click.option("--root", type=FilePath(path_type=Path, file_okay=False), default=None,
              help="A folder of <model>/<distribution>.json files (default: the shipped ones).")
def ground_truth_list(root: Path | None) -> None:
    """The shipped ground truths as a Markdown table (samples, tokens seen, tokens with >= 12 hits)."""
    from lowprob.ground_truth import load_shipped, shipped_pairs

    click.echo(markdown_table(
        ["model", "distribution", "samples", "tokens seen", "tokens with ≥ 12 hits", "counting seconds"],
        [[gt.model, gt.distribution, f"2^{gt.samples.bit_length() - 1}" if gt.samples & (gt.samples - 1) == 0
          else str(gt.samples), str(int((gt.counts > 0).sum())), str(int((gt.counts >= 12).sum())),
          str(gt.metadata.get("seconds", "?"))]
         for gt in (load_shipped(m, d, root) for m, d in shipped_pairs(root))]))


def _show_ground_truth(gt: Any, path: Path, top: int = 0, vocab: Vocabulary | None = None) -> None:
    click.echo(f"{path}: {gt.model} on {gt.distribution} (hash {gt.distribution_hash[:16]}), {gt.samples} samples "
               f"in {len(gt.seeds)} shards of {gt.shard_size}, {int((gt.counts > 0).sum())} tokens seen, "
               f"{gt.metadata.get('seconds', '?')} s counting")
    if gt.metadata.get("precision", "fp32") != "fp32":
        click.echo(f"unembedding in {gt.metadata['precision']}, certified; {gt.metadata.get('rechecked', 0)} rows "
                   f"recomputed in float32")
    order = gt.counts.argsort(kind="stable")[::-1][:top]
    for t in order:
        if gt.counts[t]:
            token = f"  {vocab.token_string(int(t))!r}" if vocab is not None else ""
            click.echo(f"  {int(t):>6}{token}  {int(gt.counts[t]):>12}  p = {gt.probability(int(t)):.3e}")


@main.command()
@click.argument("model")
@click.argument("distribution")
@click.option("--estimator", default="tsmc", show_default=True,
              help="tsmc or tsmc-ctl (its default twist); output-tsmc or output-tsmc-ctl for output events.")
@click.option("--ground-truth", "gt_file", type=FilePath(path_type=Path, exists=True, dir_okay=False), default=None,
              help="A ground-truth file instead of the shipped one; an output-event file needs --target.")
@click.option("--target", default=None,
              help="With an output-event --ground-truth: the event it counted (a target name of DISTRIBUTION's "
                   "spec or an expression); its reservoir's hits are the positives.")
@click.option("--tokens", "n_tokens", type=click.IntRange(1), default=4, show_default=True,
              help="The rarest tokens with at least --min-hits ground-truth hits and stored hitting inputs.")
@click.option("--min-hits", type=click.IntRange(1), default=12, show_default=True)
@click.option("--runs", type=click.IntRange(1), default=8, show_default=True,
              help="Forward SMC runs for the lower bound.")
@click.option("--particles", type=click.IntRange(1), default=None, help="Particles per run (default: the estimator's).")
@click.option("--rejection-draws", type=click.IntRange(1, 1 << 20), default=4096, show_default=True,
              help="Generations searched for positives when an output ground truth's reservoir is empty.")
@click.option("--seed", type=SEED, default=0, show_default=True)
def brackets(model: str, distribution: str, estimator: str, gt_file: Path | None, target: str | None, n_tokens: int,
             min_hits: int, runs: int, particles: int | None, rejection_draws: int, seed: int) -> None:
    """Twisted-SMC log-Z brackets [lower, upper] on targets of a ground truth, with the KL gaps.

    DISTRIBUTION names a shipped ground truth of MODEL, or with an output-event --ground-truth the spec (a
    registered distribution, spec file or DSL text) whose distribution it counted.

    \b
    Example:
      lowprob brackets lowprob-1l hex --tokens 3 --runs 8
      lowprob brackets lowprob-1l english --ground-truth gt/of-the.json --target 'sample(2) == " of the"' \\
        --estimator output-tsmc --particles 64
    """
    from lowprob.brackets import bracket_output_event, bracket_targets
    from lowprob.ground_truth import load_shipped
    from lowprob.output_ground_truth import OutputGroundTruth, load_any

    gt = load_shipped(model, distribution) if gt_file is None else load_any(gt_file)
    if gt.model != model:
        raise LowprobError(f"{gt_file}: a ground truth of model {gt.model!r}, not {model!r}")
    if isinstance(gt, OutputGroundTruth):
        if target is None:
            raise LowprobError(f"{gt_file}: counts the output event {gt.target}; name it with --target")
        rows = [bracket_output_event(_registry(), gt, distribution, target, estimator, runs=runs,
                                     particles=particles, seed=seed, rejection_draws=rejection_draws)]
    else:
        if target is not None:
            raise LowprobError(f"--target {target!r} needs an output-event --ground-truth file; "
                               f"{gt_file or 'the shipped ground truth'} counts argmax tokens")
        candidates = sorted((t for t in range(gt.d_vocab) if gt.hits(t) >= min_hits and gt.hitting_inputs(t)),
                            key=gt.hits)[:n_tokens]
        if not candidates:
            raise LowprobError(f"no token of {model}/{gt.distribution} has {min_hits} ground-truth hits and stored "
                               "hitting inputs")
        rows = bracket_targets(_registry(), gt, estimator, candidates, runs=runs, particles=particles, seed=seed)
    click.echo(markdown_table(
        ["target", "p (ground truth)", "log p", "lower (forward SMC)", "forward runs with no hit",
         "upper (conditional SMC)", "positives", "log p − lower", "upper − log p"],
        [[r.target, f"{r.p_true:.3g}", f"{r.log_p_true:.2f}", f"{r.lower:.2f}", f"{r.zero_runs}/{r.runs}",
          f"{r.upper:.2f}", f"{r.positives} ({r.source})", f"{r.kl_forward:.2f}", f"{r.kl_reverse:.2f}"]
         for r in rows]))


@main.command(name="freq-table")
@click.argument("textfiles", nargs=-1, required=True, type=FilePath(exists=True, dir_okay=False, path_type=Path))
@click.option("--tokenizer", "tokenizer_path", required=True, type=FilePath(exists=True, dir_okay=False,
              path_type=Path), help="A Hugging Face tokenizer.json.")
@click.option("--output", required=True, type=FilePath(dir_okay=False, path_type=Path), help="Table file to write.")
@click.option("--bos", default="<|BOS|>", show_default=True, help="The tokenizer's BOS token string.")
@click.option("--eos", default="<|EOS|>", show_default=True, help="The tokenizer's EOS token string.")
def freq_table(textfiles: tuple[Path, ...], tokenizer_path: Path, output: Path, bos: str, eos: str) -> None:
    """Count tokens of local text files (one document each, as [BOS] + tokens + [EOS], truncated to 2^14 tokens).

    Writes a frequency table (JSON, one count per token id) like the built-in ones, e.g. from your own C4 text
    for the gelu models' tokenizer.

    \b
    Example:
      lowprob freq-table --tokenizer tokenizer.json --output freq-c4.json c4/*.txt
    """
    from lowprob.plugins.frequency_tables import (
        FrequencyTable,
        build_frequency_table,
        save_table,
        vocabulary_fingerprint,
    )
    from lowprob.plugins.tokenizer_vocabulary import TokenizerVocabulary

    try:
        vocab = TokenizerVocabulary.from_file(tokenizer_path, {"BOS": bos, "EOS": eos})
    except ValueError as exc:
        raise LowprobError(f"{exc} (set --bos/--eos to the tokenizer's special tokens)") from exc
    counts = build_frequency_table(vocab, textfiles)
    save_table(output, FrequencyTable(output.stem, len(textfiles), vocabulary_fingerprint(vocab), counts))
    click.echo(f"{output}: {len(textfiles)} documents, {int(counts.sum())} tokens, "
               f"{int((counts > 0).sum())} of {vocab.size} token ids seen")

@main.group()
def bench() -> None:
    """Benchmarks that score every estimator against known answers."""


@bench.command(name="known-answer")
@click.option("--quick", is_flag=True, help="A small subset: depths 1e-5 and 1e-9, 4 replicates, 4096 calls, "
              "temperatures 0.5, 1, 2.")
@click.option("--replicates", type=click.IntRange(1), default=None, help="Seeded replicates (default 16).")
@click.option("--budget-calls", type=click.IntRange(1), default=None,
              help="Model calls where the paper gives 2^16 (default 2^16; paper budgets scale with it).")
@click.option("--budget", "budget_mode", type=click.Choice(["paper", "flop-fair", "both"]), default="both",
              show_default=True, help="paper: each estimator's paper budget (backward passes free); flop-fair: the "
              "same forward-pass equivalents for all, a backward pass = 2.")
@click.option("--temperatures", default=None, metavar="T,T,...",
              help="Temperature grid tuned on the tuning problems (default: the paper's 9 values 0.2 … 5; one "
              "value fixes it).")
@click.option("--tuning-replicates", type=click.IntRange(1), default=None,
              help="Seeded runs per tuning problem and temperature (default 2).")
@click.option("--estimator", "estimators", multiple=True, help="Only this estimator (repeatable).")
@click.option("--depth", "depths", type=click.IntRange(1, 300), multiple=True,
              help="Only this depth, as an exponent: 9 for 1e-9 (repeatable).")
@click.option("--family", "families", multiple=True,
              help="Only this planted family, e.g. threshold (repeatable; --list shows them).")
@click.option("--output", type=click.Path(file_okay=False, path_type=Path), default=Path("bench-known-answer"),
              show_default=True, help="Folder for results.jsonl, summary.md and summary.json.")
@click.option("--list", "list_only", is_flag=True, help="List the problems and their exact values; run nothing.")
@click.option("--report", "report_only", is_flag=True,
              help="Write the summary and figures from the rows already in OUTPUT/results.jsonl; run nothing "
              "(the tables of a run in progress or stopped).")
@click.option("--threads", type=click.IntRange(1, 256), default=1, show_default=True,
              help="Torch threads (estimators run small batches; the speed column is measured on one thread).")
@add_executor_options
def bench_known_answer(quick: bool, replicates: int | None, budget_calls: int | None, budget_mode: str,
                       temperatures: str | None, tuning_replicates: int | None, estimators: tuple[str, ...],
                       depths: tuple[int, ...], families: tuple[str, ...], output: Path, list_only: bool,
                       report_only: bool, threads: int, executor: dict[str, Any]) -> None:
    """Run every registered estimator on every planted problem with an exact answer (docs/known-answer.md).

    Resumable: rerun the same command to continue; rows already in OUTPUT/results.jsonl are kept.

    \b
    Example:
      lowprob bench known-answer --quick
    """
    from lowprob import bench as known

    torch.set_num_threads(threads)
    registry = _registry()
    selection = known.Selection.of(quick, replicates, budget_calls, estimators, depths, budget_mode,
                                   known.parse_temperatures(temperatures), tuning_replicates, families)
    if list_only:
        answers = [a for a in known.known_answers(registry, ("test", "tuning", "calibration"))
                   if (not selection.exponents or known.exponent(a) in selection.exponents)
                   and (not families or a.family in families)]
        click.echo(format_table(("model", "spec", "family", "role", "exact p", "log10 p"),
                                [[a.model, a.spec, a.family, a.role, f"{a.exact_p:.12e}", f"{a.exact.log10:.4f}"]
                                 for a in answers]))
        return
    if report_only and not (output / "results.jsonl").is_file():
        raise LowprobError(f"--report: no results at {output / 'results.jsonl'}; run the bench first")
    plan_ = known.prepare(registry, selection)
    tests = len(plan_.tests) * len(plan_.estimators) * len(selection.modes) * selection.replicates
    click.echo(f"{known.describe_run(plan_)}\n{len(plan_.tuning_jobs)} tuning and {tests} test estimates; "
               f"left out: {', '.join(sorted(plan_.skipped)) or 'none'}", err=True)
    if report_only:
        outcome = known.collect(plan_, output / "results.jsonl")
    else:
        outcome = known.run(plan_, registry, output / "results.jsonl", ExecutorSettings().merged(**executor).create())
    md, js, pooled = known.write_outputs(output, plan_, outcome)
    figures = known.write_figures(output, outcome, pooled)
    if outcome.choices:
        click.echo(format_table(known.TEMPERATURE_HEADER, known.temperature_rows(outcome.choices)) + "\n")
    click.echo(known.text_table(pooled))
    click.echo(f"{outcome.new_rows} new estimates ({known.completeness(plan_, outcome)}); wrote {md}, {js} and "
               f"{len(figures)} figure files", err=True)


@bench.command(name="coverage")
@click.option("--quick", is_flag=True, help="4 runs per (estimator, target) at 256 calls; no tsmc-ctl, mhis.")
@click.option("--runs", type=click.IntRange(1), default=None, help="Seeded runs per (estimator, target) (default 200).")
@click.option("--budget-calls", type=click.IntRange(1), default=None,
              help="Model calls where the paper gives 2^16 (default 4096).")
@click.option("--budget", "budget_mode", type=click.Choice(["paper", "flop-fair"]), default="paper",
              show_default=True, help="paper: each estimator's paper budget, scaled; flop-fair: the same "
              "forward-pass equivalents for all, a backward pass = 2.")
@click.option("--estimator", "estimators", multiple=True,
              help="Only this estimator (repeatable; default: every one that reports error bars).")
@click.option("--planted", multiple=True, metavar="SPEC",
              help="Planted problem (repeatable; default planted-threshold-e6 and planted-threshold-e9).")
@click.option("--trained", multiple=True, metavar="MODEL/DIST",
              help="Shipped ground truth whose rarest token with >= 100 hits is a target (repeatable; default "
              "lowprob-1l/camel and lowprob-1l/hex).")
@click.option("--output", type=click.Path(file_okay=False, path_type=Path), default=Path("bench-coverage"),
              show_default=True, help="Folder for results.jsonl, coverage.md and coverage.json.")
@click.option("--threads", type=click.IntRange(1, 256), default=1, show_default=True, help="Torch threads.")
@add_executor_options
def bench_coverage(quick: bool, runs: int | None, budget_calls: int | None, budget_mode: str,
                   estimators: tuple[str, ...], planted: tuple[str, ...], trained: tuple[str, ...], output: Path,
                   threads: int, executor: dict[str, Any]) -> None:
    """Coverage of every error-bar estimator's 95 % interval over many seeded runs, on planted and trained-model
    targets (docs/known-answer.md). Resumable like the bench.

    \b
    Example:
      lowprob bench coverage --quick
    """
    from lowprob import coverage_study as study

    torch.set_num_threads(threads)
    registry = _registry()
    pairs = [study.parse_pair(t) for t in trained] if trained else list(study.DEFAULT_TRAINED)
    plan_ = study.prepare(registry, planted or study.DEFAULT_PLANTED, pairs,
                          runs or (study.QUICK_RUNS if quick else study.DEFAULT_RUNS),
                          budget_calls or (study.QUICK_CALLS if quick else study.DEFAULT_CALLS), budget_mode,
                          estimators, quick)
    click.echo(f"{plan_.describe()}; left out: {', '.join(sorted(plan_.skipped)) or 'none'}", err=True)
    new, engine = study.run(plan_, registry, output / "results.jsonl", ExecutorSettings().merged(**executor).create())
    lines = study.summarize(engine.rows.values(), plan_.target_of)
    paths = study.write_outputs(output, plan_, lines)
    click.echo(study.text_table(lines))
    click.echo(f"{new} new runs; wrote {', '.join(str(p) for p in paths[:2])} and {len(paths) - 2} figure files; "
               f"at {study.DEFAULT_RUNS} runs per (estimator, target) these targets and budgets take "
               f"~{study.projected_hours(lines):.2f} h of estimation", err=True)


main.add_command(reference)

if __name__ == "__main__":  # pragma: no cover
    main()
