"""Tables and reports from typed result rows: the summary `lowprob run` prints, and the loss tables
(``losses.md``, ``losses.json``) and figures `lowprob reproduce` writes."""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lowprob.protocol import min_hits
from lowprob.results import ResultRow, write_atomic
from lowprob.scoring import Cell, score_cells

if TYPE_CHECKING:
    from lowprob.reproduce import Reproduction


def format_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """Left-aligned columns separated by two spaces, with a rule under the header."""
    rows = [list(map(str, r)) for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip(),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A GitHub-flavoured Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(map(str, r)) + " |" for r in rows])


def _value_cell(values: list[float], uppers: list[float]) -> str:
    mean = statistics.fmean(values)
    if mean == 0 and uppers:
        return f"< {max(uppers):.2e}"
    if len(values) > 1:
        sem = statistics.stdev(values) / math.sqrt(len(values))
        return f"{mean:.3e} ± {sem:.1e}"
    return f"{mean:.3e}"


def summary_table(rows: Iterable[ResultRow]) -> str:
    """Group rows with an estimate by (model, distribution, target, estimator label, budget); mean over seeds.

    The ± is the standard error of the mean across seeds; a group whose estimates are all zero shows the
    largest upper confidence bound instead.
    """
    groups: dict[tuple[str, str, str, str, str], list[ResultRow]] = {}
    for row in rows:
        if row.estimate is not None:
            budget = ",".join(f"{k}={v}" for k, v in sorted(row.budget.model_dump(exclude_none=True).items())
                              if k != "backward_weight")
            key = (row.model, row.distribution, str(row.target), row.label, budget)
            groups.setdefault(key, []).append(row)
    table = []
    for key, members in groups.items():
        estimates = [m.estimate for m in members if m.estimate is not None]
        values = [e.value for e in estimates]
        uppers = [e.upper_bound for e in estimates if e.upper_bound is not None]
        table.append([*key, str(len(members)), _value_cell(values, uppers), str(sum(e.hits for e in estimates)),
                      f"{statistics.fmean(e.model_calls for e in estimates):.0f}",
                      f"{statistics.fmean(e.seconds for e in estimates):.2f}"])
    header = ["model", "distribution", "target", "estimator", "budget", "runs", "estimate",
              "hits", "calls/run", "s/run"]
    return format_table(header, table)


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
    lines += [f"**Deviation from the paper:** {d}." for d in repro.deviations()] + [""] * bool(repro.deviations())
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
                means.append(f"{statistics.fmean(got):.3f}" if got and all(math.isfinite(v) for v in got) else
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
        truths = [[p.distribution, f"#{t.token}", t.source, f"{t.value:.3g}",
                   f"{t.hits} / {t.samples}" if t.samples else "—",
                   f"{t.reference:.3g}" if t.reference is not None else "—"]
                  for p in pairs for t in p.test_truths()]
        if truths:
            hits = min_hits(repro.config.targets.max_rel_error)
            lines += ["### Test truths", "", f"Each test token's true value: a fresh brute-force count (≥ {hits} "
                      "hits, shards disjoint from the ground truth's) where there is one, else an accepted "
                      "reference (docs/references.md).", "", markdown_table(
                          ["distribution", "token", "source", "value", "fresh hits / samples", "reference"], truths),
                      ""]
    return "\n".join(lines)


def _models(repro: Reproduction) -> list[str]:
    """The config's models that have at least one planned pair, in config order."""
    return [m for m in repro.config.models if any(p.model == m for p in repro.pairs)]


def _losses_json(repro: Reproduction, cells: dict[tuple[str, str, str], Cell]) -> dict[str, Any]:
    return {"name": repro.config.name, "config": repro.config.model_dump(mode="json"),
            "deviations": repro.deviations(),
            "temperatures": list(repro.temperatures),
            "pairs": [{"model": p.model, "distribution": p.distribution, "samples": p.ground_truth.samples,
                       "test_band": [p.test_band.low, p.test_band.high],
                       "tuning_band": [p.tuning_band.low, p.tuning_band.high], "scale": p.scale,
                       "test_tokens": list(p.selection.test), "tuning_tokens": list(p.selection.tuning),
                       "test_candidates": p.selection.test_candidates,
                       "tuning_candidates": p.selection.tuning_candidates, "skipped": p.skipped,
                       "test_truths": [t.to_json() for t in p.test_truths()],
                       "methods": {m.label: {"estimator": m.estimator, "options": m.options, "tuned": m.tuned,
                                             "budget": m.budget.model_dump(mode="json", exclude_none=True),
                                             **_cell_json(cells[(p.model, p.distribution, m.label)])}
                                   for m in p.methods}}
                      for p in repro.pairs]}


def write_losses_report(repro: Reproduction, rows: Mapping[str, ResultRow]) -> list[Path]:
    """Write ``losses.json``, ``losses.md`` and the figures (PNG and SVG) of ``repro`` from its rows among
    ``rows`` (by key); returns the paths written."""
    from lowprob.figures import ScatterPanel, loss_bars, save_figure, scatter_grid  # matplotlib only when drawing

    cells = score_cells(repro, rows)
    labels = [m.key for m in repro.config.methods]
    written = [repro.output / "losses.json", repro.output / "losses.md"]
    write_atomic(written[0], json.dumps(_losses_json(repro, cells), indent=1, allow_nan=False) + "\n")
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
            figure = scatter_grid(f"{label} on {model}: estimate vs ground truth", panels)
            written += save_figure(figure, folder / f"scatter-{label}")
        values = {(p.distribution, label): c.scores.is_fit if (c := cells.get((model, p.distribution, label)))
                  and c.scores and c.unsupported is None else None for p in pairs for label in labels}
        figure = loss_bars(f"{model}: Itakura–Saito loss after fit (lower is better)",
                           [p.distribution for p in pairs], labels, values, "mean IS loss")
        written += save_figure(figure, folder / "losses")
    return written
