"""Matplotlib figures of results: what `lowprob reproduce` saves (PNG and SVG) and helpers for notebooks.

Two kinds: a grid of log–log scatter panels (estimate against ground truth, the paper's Figure 8 style, with
the y = x line and zero estimates marked below the axis) and grouped bars (loss per method). Every function
returns a :class:`matplotlib.figure.Figure` (no pyplot state), to restyle, ``savefig`` in any format, or show
in a notebook; :func:`scatter_plot` and :func:`loss_plot` draw them straight from typed rows.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from lowprob.protocol import score
from lowprob.results import ResultRow, write_atomic

FORMATS = ("png", "svg")
"""What :func:`save_figure` writes."""


@dataclass(frozen=True)
class ScatterPanel:
    """One panel: ground truths, the method's raw estimates and (optionally) the fitted ones, token by token."""

    title: str
    truth: Sequence[float]
    raw: Sequence[float]
    fitted: Sequence[float] | None = None
    note: str = ""


def _decades(values: Iterable[float]) -> tuple[int, int]:
    logs = [math.log10(v) for v in values if v > 0 and math.isfinite(v)]
    if not logs:
        return -6, 0
    low, high = math.floor(min(logs)), math.ceil(max(logs))
    return (low, high) if high > low else (low, low + 1)


def _scatter_panel(ax: Axes, panel: ScatterPanel) -> None:
    """One panel: axes in decades, y = x (dashed), raw (hollow grey), fitted (filled blue), zeros (red ×)."""
    truth, fitted = list(panel.truth), list(panel.fitted or [])
    t_low, t_high = _decades(truth)
    shown = [v for v in [*fitted, *panel.raw] if v > 0 and t_low - 2 <= math.log10(v) <= t_high + 2]
    low, high = _decades(truth + shown)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(10.0**low, 10.0**high)
    ax.set_ylim(10.0**low, 10.0**high)
    ax.plot([10.0**low, 10.0**high], [10.0**low, 10.0**high], ls="--", color="#999", lw=1)
    clip = [min(max(q, 10.0**low), 10.0**high) for q in panel.raw]  # beyond the axes: drawn on the edge
    ax.scatter([p for p, q in zip(truth, panel.raw, strict=True) if q > 0],
               [c for c, q in zip(clip, panel.raw, strict=True) if q > 0],
               s=14, facecolors="none", edgecolors="#999", clip_on=False, label="raw")
    if fitted:
        ax.scatter([p for p, q in zip(truth, fitted, strict=True) if q > 0],
                   [min(max(q, 10.0**low), 10.0**high) for q in fitted if q > 0],
                   s=12, color="#1f77b4", alpha=0.75, clip_on=False, label="fitted")
    zeros = [p for p, q in zip(truth, panel.raw, strict=True) if q <= 0]
    if zeros:
        ax.scatter(zeros, [-0.05] * len(zeros), transform=ax.get_xaxis_transform(), marker="x", color="#d62728",
                   clip_on=False, label="zero estimate")
        ax.tick_params(axis="x", pad=12)  # room for the zeros between the axis and its labels
    ax.set_title(f"{panel.title}\n{panel.note}" if panel.note else panel.title, fontsize=9)
    ax.grid(True, which="major", color="#eee")


def scatter_grid(title: str, panels: Sequence[ScatterPanel], columns: int = 4) -> Figure:
    """Panels of estimate (vertical) against ground truth (horizontal), log–log, in a grid with a legend.

    Hollow grey: raw estimates; filled blue: fitted estimates; red × under an axis: a zero estimate at that
    ground truth; dashed: y = x. Estimates beyond the axes are drawn on the edge.
    """
    columns = max(1, min(columns, len(panels)))
    rows = math.ceil(len(panels) / columns) if panels else 1
    figure = Figure(figsize=(3.2 * columns, 3.4 * rows + 0.6), layout="constrained")
    figure.suptitle(title, fontweight="bold")
    axes = figure.subplots(rows, columns, squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i < len(panels):
            _scatter_panel(ax, panels[i])
            ax.set_xlabel("ground-truth probability", fontsize=8)
            ax.set_ylabel("estimate", fontsize=8)
        else:
            ax.set_axis_off()
    handles: dict[str, Artist] = {}
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, handle)
    if handles:
        figure.legend(list(handles.values()), list(handles), loc="outside lower center", ncols=len(handles))
    return figure


def loss_bars(title: str, groups: Sequence[str], series: Sequence[str],
              values: Mapping[tuple[str, str], float | None], y_label: str) -> Figure:
    """Grouped bars: one group per ``groups`` entry, one coloured bar per ``series`` entry, with a legend.

    A missing value is marked "n/a"; an infinite one is drawn to the top and labelled ∞.
    """
    finite = [v for v in values.values() if v is not None and math.isfinite(v)]
    top = (max(finite, default=1.0) * 1.1) or 1.0
    figure = Figure(figsize=(max(6.0, 0.25 * len(series) * len(groups) + 3), 4), layout="constrained")
    ax = figure.subplots()
    width = 0.8 / max(1, len(series))
    for s, name in enumerate(series):
        labelled = False
        for g, group in enumerate(groups):
            x = g - 0.4 + (s + 0.5) * width
            value = values.get((group, name))
            if value is None:
                ax.text(x, 0, "n/a", rotation=90, ha="center", va="bottom", fontsize=7)
                continue
            ax.bar(x, top if not math.isfinite(value) else min(value, top), width * 0.9, color=f"C{s % 10}",
                   label=None if labelled else name)
            labelled = True
            if not math.isfinite(value):
                ax.text(x, top, "∞", ha="center", va="bottom")
    ax.set_xticks(range(len(groups)), list(groups))
    ax.set_ylim(0, top * 1.08)
    ax.set_ylabel(y_label)
    ax.set_title(title, fontweight="bold")
    if ax.get_legend_handles_labels()[1]:
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    return figure


def save_figure(figure: Figure, stem: Path) -> list[Path]:
    """Write ``figure`` as ``stem.png`` and ``stem.svg`` (each atomically); returns the paths."""
    paths = []
    for fmt in FORMATS:
        buffer = io.BytesIO()
        figure.savefig(buffer, format=fmt, dpi=120, metadata={"Date": None} if fmt == "svg" else None)
        path = stem.with_name(f"{stem.name}.{fmt}")
        write_atomic(path, buffer.getvalue())
        paths.append(path)
    return paths


def _scored(rows: Iterable[ResultRow]) -> dict[tuple[str, str], list[tuple[float, float]]]:
    """(ground truth, estimate) of every row that has both, by (distribution, label)."""
    out: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for row in rows:
        if row.estimate is not None and row.protocol is not None and row.protocol.p_true is not None \
                and row.phase != "tune":
            out.setdefault((row.distribution, row.label), []).append((row.protocol.p_true, row.estimate.value))
    return out


def scatter_plot(rows: Iterable[ResultRow], label: str, title: str | None = None) -> Figure:
    """Estimate against ground truth for one method (``label``), one panel per distribution, with the fit of
    :func:`lowprob.protocol.score`; from rows carrying a ground truth (those `lowprob reproduce` writes)."""
    panels = []
    for (distribution, method), pairs in _scored(rows).items():
        if method == label:
            truth, raw = [p for p, _ in pairs], [q for _, q in pairs]
            s = score(truth, raw)
            panels.append(ScatterPanel(distribution, truth, raw, list(s.fit.apply(raw)),
                                       f"IS loss {s.is_fit:.3f} fit; {s.zeros}/{s.n} zero"))
    return scatter_grid(title or f"{label}: estimate vs ground truth", panels)


def loss_plot(rows: Iterable[ResultRow], title: str = "Itakura–Saito loss after fit (lower is better)") -> Figure:
    """Mean fitted IS loss per distribution and method from rows carrying a ground truth."""
    scored = _scored(rows)
    groups = list(dict.fromkeys(d for d, _ in scored))
    series = list(dict.fromkeys(m for _, m in scored))
    values: dict[tuple[str, str], float | None] = {
        key: score([p for p, _ in pairs], [q for _, q in pairs]).is_fit for key, pairs in scored.items()}
    return loss_bars(title, groups, series, values, "mean IS loss")
