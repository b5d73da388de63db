"""Plain-text tables of results rows (what `lowprob run` prints at the end)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from typing import Any


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


def summary_table(rows: Iterable[dict[str, Any]]) -> str:
    """Group results rows by (model, distribution, target, estimator, budget); mean estimate over seeds.

    The ± is the standard error of the mean across seeds; a group whose estimates are all zero shows the
    largest upper confidence bound instead.
    """
    groups: dict[tuple[str, str, str, str, str], list[dict[str, Any]]] = {}
    for row in rows:
        budget = ",".join(f"{k}={v}" for k, v in sorted(row["budget"].items()) if k != "backward_weight")
        key = (row["model"], row["distribution"], row["target"], row["estimator"], budget)
        groups.setdefault(key, []).append(row)
    table = []
    for key, members in groups.items():
        estimates = [m["estimate"] for m in members]
        values = [e["value"] for e in estimates]
        uppers = [e["ci"]["high"] for e in estimates if e["value"] == 0 and e.get("ci")]
        table.append([*key, str(len(members)), _value_cell(values, uppers),
                      str(sum(e["hits"] for e in estimates)),
                      f"{statistics.fmean(e['model_calls'] for e in estimates):.0f}",
                      f"{statistics.fmean(e['seconds'] for e in estimates):.2f}"])
    header = ["model", "distribution", "target", "estimator", "budget", "runs", "estimate",
              "hits", "calls/run", "s/run"]
    return format_table(header, table)
