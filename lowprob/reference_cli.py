"""``lowprob reference``: reference values by two agreeing unbiased estimators, their check against brute force,
and the screening of targets below brute force (docs/references.md)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, get_args

import click
import torch

from lowprob.api import compile_source, resolve_spec
from lowprob.cli_params import SEED, Count, FilePath, Number
from lowprob.core.errors import LowprobError
from lowprob.core.progress import progress_bar
from lowprob.core.vocabulary import Vocabulary, token_strings
from lowprob.engine import Engine
from lowprob.ground_truth import load_shipped
from lowprob.plugins import load_registry
from lowprob.protocol import Band
from lowprob.references import (
    DEFAULT_METHODS,
    Pooled,
    Reference,
    ReferenceMethod,
    ReferenceProblem,
    ReferenceRules,
    ReferenceRunner,
    Status,
    load_references,
    merge_files,
)
from lowprob.report import format_table
from lowprob.results import ResultRow, write_atomic
from lowprob.target_screening import ScreenRules, brute_force_tokens, cross_check, screen


def parse_token(text: str, vocab: Vocabulary) -> int:
    """A token given as an id (``123`` or ``#123``) or as its text (``CESS``)."""
    raw = text[1:] if text.startswith("#") else text
    if raw.isdigit():
        return int(raw)
    strings = token_strings(vocab)
    if text not in strings:
        raise LowprobError(f"token {text!r} is not in the vocabulary; give its id (e.g. --token 123) instead")
    return strings.index(text)


def parse_methods(names: Sequence[str], options: Sequence[str]) -> list[ReferenceMethod]:
    """``--method`` names and ``--option NAME.key=value`` pairs as reference methods."""
    chosen = list(names) or list(DEFAULT_METHODS)
    opts: dict[str, dict[str, Any]] = {name: {} for name in chosen}
    for pair in options:
        head, sep, raw = pair.partition("=")
        name, dot, key = head.partition(".")
        if not sep or not dot or not key or name not in opts:
            raise LowprobError(f"option {pair!r} is not METHOD.key=value for one of the methods {chosen}")
        try:
            opts[name][key] = json.loads(raw)
        except json.JSONDecodeError:
            opts[name][key] = raw
    return [ReferenceMethod(estimator=name, options=opts[name]) for name in chosen]


def _rules(round_calls: int, max_calls: int, target_rel_error: float, sigmas: float) -> ReferenceRules:
    return ReferenceRules(round_calls=round_calls, max_calls=max_calls, target_rel_error=target_rel_error,
                          sigmas=sigmas)


def _g(x: float | None) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x:.3g}"


def _run_cell(run: Pooled | None) -> str:
    if run is None:
        return "-"
    if run.errors:
        return f"error ({run.rounds} rounds)"
    return f"{_g(run.value)} ±{_g(run.rel_error * 100)}% ({run.rounds}r, {run.calls:.3g} calls, {run.seconds:.0f} s)"


def reference_table(refs: Sequence[Reference]) -> str:
    """One line per reference: target, verdict, combined value and interval, discrepancy, each method's run."""
    labels = sorted({r.label for ref in refs for r in ref.runs})
    rows = []
    for ref in refs:
        by = {r.label: r for r in ref.runs}
        ci = f"[{_g(ref.ci[0])}, {_g(ref.ci[1])}]" if ref.ci else "-"
        rows.append([ref.model, ref.distribution, ref.target, ref.status, _g(ref.value), ci,
                     _g(ref.discrepancy), *(_run_cell(by.get(label)) for label in labels)])
    return format_table(["model", "distribution", "target", "status", "value", "CI", "|a-b|/se", *labels], rows)


_RULE_OPTIONS = [
    click.option("--round-calls", type=Count(1), default="2^16", show_default=True,
                 help="Model calls per round (the unit of resume)."),
    click.option("--max-calls", type=Count(1), default="2^21", show_default=True,
                 help="Cap on one method's calls over its rounds."),
    click.option("--target-rel-error", type=Number(0, 1, open_min=True), default=0.1, show_default=True,
                 help="A method stops at this pooled relative standard error."),
    click.option("--sigmas", type=Number(0, open_min=True), default=3.0, show_default=True,
                 help="Accept when the methods agree within this many combined standard errors."),
    click.option("--method", "methods", multiple=True, help="Unbiased estimator (repeat; default: tsmc, itgis)."),
    click.option("--option", "-o", "options", multiple=True, help="METHOD.key=value, e.g. tsmc.particles=512."),
    click.option("--first-round", type=click.IntRange(0), default=0, show_default=True,
                 help="First round index: give a second process a disjoint range and merge the files."),
    click.option("--threads", type=click.IntRange(1), default=1, show_default=True, help="torch threads."),
    click.option("--progress/--no-progress", default=None, help="A line per round (default: in a terminal)."),
]


def _rule_options(fn: Any) -> Any:
    for option in reversed(_RULE_OPTIONS):
        fn = option(fn)
    return fn


@click.group(name="reference")
def reference() -> None:
    """Reference values below brute force: two unbiased estimators in seeded rounds, accepted when they agree."""


def _runner(output: Path, methods: Sequence[str], options: Sequence[str], round_calls: int, max_calls: int,
            target_rel_error: float, sigmas: float, first_round: int, threads: int) -> ReferenceRunner:
    torch.set_num_threads(threads)
    return ReferenceRunner(load_registry(), Engine(output), parse_methods(methods, options),
                           _rules(round_calls, max_calls, target_rel_error, sigmas), first_round)


def _reporter(progress: bool | None) -> Any:
    bar = progress_bar(None, "reference", progress, unit="round")

    def on_round(row: ResultRow, pooled: Pooled) -> None:
        bar.update(1)
        if not bar.disable:
            bar.write(f"  {row.target} {row.label}: round {pooled.rounds}, {_g(pooled.value)} "
                      f"±{_g(pooled.rel_error * 100)}%")
    return bar, on_round


@reference.command(name="run")
@click.argument("model")
@click.argument("distribution")
@click.option("--token", "tokens", multiple=True, help="Target token: an id (123, #123) or its text (repeat).")
@click.option("--target", "targets", multiple=True, help="Or a target: a spec target name or an expression.")
@click.option("--output", type=FilePath(path_type=Path, dir_okay=False), required=True,
              help="Reference file (JSON lines of rounds); resumed if there.")
@_rule_options
def reference_run(model: str, distribution: str, tokens: tuple[str, ...], targets: tuple[str, ...], output: Path,
                  round_calls: int, max_calls: int, target_rel_error: float, sigmas: float, methods: tuple[str, ...],
                  options: tuple[str, ...], first_round: int, threads: int, progress: bool | None) -> None:
    """Take references of MODEL on DISTRIBUTION (a registered name or spec file) for each token or target.

    \b
    Example:
      lowprob reference run lowprob-1l camel --token 4021 --output refs/lowprob-1l-camel.jsonl
    Rerunning continues every unfinished method at its next round. See docs/references.md.
    """
    if not tokens and not targets:
        raise LowprobError("give at least one --token or --target")
    runner = _runner(output, methods, options, round_calls, max_calls, target_rel_error, sigmas, first_round,
                     threads)
    registry = runner.registry
    source = compile_source(registry, resolve_spec(distribution, registry), model=model)
    name = resolve_spec(distribution, registry).name
    problems = [ReferenceProblem.argmax(source, name, parse_token(t, source.model.vocab)) for t in tokens]
    problems += [ReferenceProblem.compile(registry, model, distribution, t) for t in targets]
    bar, on_round = _reporter(progress)
    try:
        refs = [runner.run(p, on_round) for p in problems]
    finally:
        bar.close()
    click.echo(reference_table(refs))


@reference.command(name="show")
@click.argument("files", nargs=-1, required=True, type=FilePath(path_type=Path, exists=True, dir_okay=False))
@click.option("--sigmas", type=Number(0, open_min=True), default=3.0, show_default=True)
@click.option("--max-calls", type=Count(1), default="2^21", show_default=True,
              help="The call cap the runs were made under (a run below it and above its error target is running).")
@click.option("--target-rel-error", type=Number(0, 1, open_min=True), default=0.1, show_default=True,
              help="The relative error the runs stop at.")
@click.option("--json", "as_json", type=FilePath(path_type=Path, dir_okay=False), default=None,
              help="Also write the verdicts as JSON (atomically).")
def reference_show(files: tuple[Path, ...], sigmas: float, max_calls: int, target_rel_error: float,
                   as_json: Path | None) -> None:
    """The verdict on every target in reference FILES (their rounds pooled); no verdict on unfinished runs."""
    refs = load_references(files, ReferenceRules(sigmas=sigmas, max_calls=max_calls,
                                                 target_rel_error=target_rel_error))
    click.echo(reference_table(refs))
    counts = {s: sum(r.status == s for r in refs) for s in get_args(Status)}
    click.echo(", ".join(f"{n} {s}" for s, n in counts.items()))
    if as_json is not None:
        write_atomic(as_json, json.dumps([r.to_json() for r in refs], indent=1) + "\n")


@reference.command(name="merge")
@click.argument("files", nargs=-1, required=True, type=FilePath(path_type=Path, exists=True, dir_okay=False))
@click.option("--output", type=FilePath(path_type=Path, dir_okay=False), required=True)
def reference_merge(files: tuple[Path, ...], output: Path) -> None:
    """Merge reference files (e.g. two processes on disjoint rounds) into one, each round once."""
    click.echo(f"wrote {merge_files(files, output)} rounds to {output}")


@reference.command(name="cross-check")
@click.argument("model")
@click.argument("distribution")
@click.option("--tokens", "n_tokens", type=click.IntRange(1), default=4, show_default=True,
              help="Tokens with ≥ 12 shipped ground-truth hits, by a seeded permutation.")
@click.option("--band", type=(float, float), default=None, help="Only tokens with ground truth in [LOW, HIGH).")
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--output", type=FilePath(path_type=Path, dir_okay=False), required=True)
@_rule_options
def reference_cross_check(model: str, distribution: str, n_tokens: int, band: tuple[float, float] | None, seed: int,
                          output: Path, round_calls: int, max_calls: int, target_rel_error: float, sigmas: float,
                          methods: tuple[str, ...], options: tuple[str, ...], first_round: int, threads: int,
                          progress: bool | None) -> None:
    """Run the reference procedure where the shipped ground truth is good and report agreement and coverage."""
    gt = load_shipped(model, distribution)
    runner = _runner(output, methods, options, round_calls, max_calls, target_rel_error, sigmas, first_round,
                     threads)
    source = compile_source(runner.registry, resolve_spec(distribution, runner.registry), model=model)
    tokens = brute_force_tokens(gt, n_tokens, seed, Band(*band) if band else None)
    bar, on_round = _reporter(progress)
    try:
        check = cross_check(runner, source, gt, tokens, on_round)
    finally:
        bar.close()
    click.echo(reference_table(check.references))
    click.echo(f"ground truth ({gt.samples} samples): " + ", ".join(
        f"#{t} {_g(p)}" for t, p in check.truth.items()))
    click.echo(f"{check.accepted}/{len(tokens)} accepted; agreement with brute force {_g(check.agreement_rate)}; "
               f"coverage of the {runner.rules.level:.0%} interval {_g(check.coverage)}")


@reference.command(name="screen")
@click.argument("model")
@click.argument("distribution")
@click.option("--screen", "n_screen", type=click.IntRange(1), default=64, show_default=True,
              help="Never-seen candidates to pilot (the first of a seeded permutation).")
@click.option("--band", type=(float, float), default=(1e-9, 1e-5), show_default=True)
@click.option("--max-hits", type=click.IntRange(0), default=11, show_default=True,
              help="Candidates: tokens with at most this many shipped ground-truth hits.")
@click.option("--pilot", default="tsmc", show_default=True, help="Pilot estimator (unbiased; tsmc sees more).")
@click.option("--pilot-option", "pilot_options", multiple=True, help="key=value for the pilot, e.g. batch_size=64.")
@click.option("--pilot-calls", type=Count(1), default="2^12", show_default=True)
@click.option("--choose", "n_choose", type=click.IntRange(0), default=0, help="Also choose this many test tokens.")
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--output", type=FilePath(path_type=Path, dir_okay=False), required=True,
              help="Pilot rows (results file); resumed if there.")
@click.option("--threads", type=click.IntRange(1), default=1, show_default=True)
@click.option("--json", "as_json", type=FilePath(path_type=Path, dir_okay=False), default=None,
              help="Also write the screening (rules, kept tokens with their evidence, chosen, cost) as JSON.")
def reference_screen(model: str, distribution: str, n_screen: int, band: tuple[float, float], max_hits: int,
                     pilot: str, pilot_options: tuple[str, ...], pilot_calls: int, n_choose: int, seed: int,
                     output: Path, threads: int, as_json: Path | None) -> None:
    """Screen tokens the shipped ground truth barely saw for targets: keep a few-hit token whose ground-truth
    interval meets BAND, and a never-seen token whose positive pilot's interval does."""
    torch.set_num_threads(threads)
    registry = load_registry()
    (method,) = parse_methods([pilot], [f"{pilot}.{o}" for o in pilot_options])
    rules = ScreenRules(band=band, max_hits=max_hits, screen=n_screen, pilot=method, pilot_calls=pilot_calls,
                        seed=seed)
    gt = load_shipped(model, distribution)
    source = compile_source(registry, resolve_spec(distribution, registry), model=model)
    result = screen(registry, Engine(output), source, gt, rules)
    piloted = [t for t in result.kept if t in result.pilots]
    chosen = result.choose(n_choose, seed) if n_choose else ()
    click.echo(f"{result.candidates} candidates (≤ {max_hits} hits in {gt.samples}); "
               f"{len(result.by_ground_truth)} few-hit kept by their ground-truth interval; piloted "
               f"{len(result.screened)} never-seen, {len(piloted)} kept (a positive pilot whose interval meets "
               f"[{band[0]:g}, {band[1]:g})); pilot cost {result.calls:.0f} calls, {result.seconds:.0f} s")
    click.echo("kept: " + " ".join([f"#{t}={gt.probability(t):.2g}(gt)" for t in result.by_ground_truth]
                                   + [f"#{t}={result.pilots[t]:.2g}(pilot)" for t in piloted]))
    if n_choose:
        click.echo("chosen: " + " ".join(f"#{t}" for t in chosen))
    if as_json is not None:
        summary = {"model": model, "distribution": gt.distribution, "distribution_hash": gt.distribution_hash,
                   "ground_truth_samples": gt.samples, "rules": rules.model_dump(mode="json"),
                   "candidates": result.candidates,
                   "kept_by_ground_truth": {str(t): int(gt.counts[t]) for t in result.by_ground_truth},
                   "piloted": list(result.screened), "pilots": {str(t): v for t, v in result.pilots.items()},
                   "kept_by_pilot": piloted, "kept": list(result.kept), "chosen": list(chosen),
                   "pilot_calls": result.calls, "pilot_seconds": round(result.seconds, 1)}
        write_atomic(as_json, json.dumps(summary, indent=1) + "\n")
