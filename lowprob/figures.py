"""Self-contained SVG figures for `lowprob reproduce`, so reports need no plotting library.

Two kinds: a grid of log–log scatter panels (estimate against ground truth, the paper's Figure 8 style, with
the y = x line and zero estimates marked on a strip below the axis) and grouped bars (loss per method).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html import escape

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf")
FONT = 'font-family="DejaVu Sans, Arial, sans-serif"'


@dataclass(frozen=True)
class ScatterPanel:
    """One panel: ground truths, the method's raw estimates and (optionally) the fitted ones, token by token."""

    title: str
    truth: Sequence[float]
    raw: Sequence[float]
    fitted: Sequence[float] | None = None
    note: str = ""


def _svg(width: float, height: float, body: list[str]) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
            f'viewBox="0 0 {width:.0f} {height:.0f}" {FONT} font-size="11">\n'
            f'<rect width="100%" height="100%" fill="white"/>\n' + "\n".join(body) + "\n</svg>\n")


def _text(x: float, y: float, text: str, anchor: str = "middle", size: int = 11, extra: str = "") -> str:
    return (f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" font-size="{size}"{extra}>'
            f'{escape(text)}</text>')


def _text_width(text: str, size: int) -> float:
    """A generous width for ``text`` at font ``size`` plus margins (0.62 em per character)."""
    return 0.62 * size * len(text) + 40


def _decades(values: Sequence[float]) -> tuple[int, int]:
    logs = [math.log10(v) for v in values if v > 0 and math.isfinite(v)]
    if not logs:
        return -6, 0
    low, high = math.floor(min(logs)), math.ceil(max(logs))
    return (low, high) if high > low else (low, low + 1)


def _scatter_panel(panel: ScatterPanel, left: float, top: float, size: float) -> list[str]:
    """One square panel at (left, top): axes in decades, y = x, raw (hollow), fitted (filled), zeros (×)."""
    truth = list(panel.truth)
    fitted = list(panel.fitted) if panel.fitted is not None else []
    t_low, t_high = _decades(truth)
    shown = [v for v in fitted + list(panel.raw) if v > 0 and t_low - 2 <= math.log10(v) <= t_high + 2]
    low, high = _decades(truth + shown)
    span, strip = high - low, 14.0

    def px(v: float) -> float:
        return left + (math.log10(v) - low) / span * size

    def py(v: float) -> float:
        clamped = min(max(math.log10(v), low), high)
        return top + size - (clamped - low) / span * size

    out = [f'<rect x="{left}" y="{top}" width="{size}" height="{size}" fill="none" stroke="#444"/>',
           f'<rect x="{left}" y="{top + size + 4}" width="{size}" height="{strip}" fill="#f3f3f3"/>',
           _text(left + size / 2, top - 18, panel.title, size=12, extra=' font-weight="bold"'),
           _text(left + size / 2, top - 5, panel.note, size=10)]
    for d in range(low, high + 1):
        pos = (d - low) / span * size
        out += [f'<line x1="{left + pos:.1f}" y1="{top}" x2="{left + pos:.1f}" y2="{top + size}" stroke="#eee"/>',
                f'<line x1="{left}" y1="{top + size - pos:.1f}" x2="{left + size}" y2="{top + size - pos:.1f}" '
                'stroke="#eee"/>',
                _text(left + pos, top + size + strip + 16, f"1e{d}", size=9),
                _text(left - 4, top + size - pos + 3, f"1e{d}", anchor="end", size=9)]
    out.append(f'<line x1="{left}" y1="{top + size}" x2="{left + size}" y2="{top}" stroke="#999" '
               'stroke-dasharray="4 3"/>')
    for p, q in zip(truth, panel.raw, strict=True):
        x = px(p)
        if q <= 0:
            y = top + size + 4 + strip / 2
            out.append(f'<path d="M{x - 3:.1f},{y - 3:.1f}L{x + 3:.1f},{y + 3:.1f}M{x - 3:.1f},{y + 3:.1f}'
                       f'L{x + 3:.1f},{y - 3:.1f}" stroke="#d62728" stroke-width="1.2"/>')
        else:
            out.append(f'<circle cx="{x:.1f}" cy="{py(q):.1f}" r="2.6" fill="none" stroke="#999"/>')
    for p, q in zip(truth, fitted, strict=True):
        if q > 0:
            out.append(f'<circle cx="{px(p):.1f}" cy="{py(q):.1f}" r="2.4" fill="#1f77b4" fill-opacity="0.75"/>')
    return out


def scatter_grid(title: str, panels: Sequence[ScatterPanel], columns: int = 4, size: float = 220) -> str:
    """Panels of estimate (vertical) against ground truth (horizontal), log–log, in a grid with a legend.

    Hollow grey: raw estimates; filled blue: fitted estimates; red × on the strip below an axis: a zero
    estimate at that ground truth; dashed: y = x. Estimates beyond the axes are drawn on the edge.
    """
    columns = max(1, min(columns, len(panels)))
    rows = math.ceil(len(panels) / columns) if panels else 1
    cell_w, cell_h = size + 70, size + 80
    legend = "x: ground-truth probability   y: estimate   ○ raw   ● fitted   × zero estimate   - - y = x"
    width = max(columns * cell_w + 20, _text_width(title, 14), _text_width(legend, 10))
    height = rows * cell_h + 70
    body = [_text(width / 2, 20, title, size=14, extra=' font-weight="bold"'), _text(width / 2, 38, legend, size=10)]
    for i, panel in enumerate(panels):
        left = 55 + (i % columns) * cell_w
        top = 75 + (i // columns) * cell_h
        body += _scatter_panel(panel, left, top, size)
    return _svg(width, height, body)


def bar_chart(title: str, groups: Sequence[str], series: Sequence[str],
              values: Mapping[tuple[str, str], float | None], y_label: str) -> str:
    """Grouped bars: one group per ``groups`` entry, one coloured bar per ``series`` entry, with a legend.

    A missing value is marked "n/a"; an infinite one is drawn to the top and labelled ∞.
    """
    finite = [v for v in values.values() if v is not None and math.isfinite(v)]
    top_value = max(finite, default=1.0) * 1.1 or 1.0
    bar_w = 12.0
    group_w = bar_w * len(series) + 18
    plot_h, left, top = 260.0, 60.0, 60.0
    width = max(left + group_w * len(groups) + 150, _text_width(title, 14))
    height = top + plot_h + 60
    body = [_text(width / 2, 22, title, size=14, extra=' font-weight="bold"'),
            f'<line x1="{left}" y1="{top + plot_h}" x2="{left + group_w * len(groups)}" y2="{top + plot_h}" '
            'stroke="#444"/>',
            f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" stroke="#444"/>',
            _text(16, top + plot_h / 2, y_label, extra=f' transform="rotate(-90 16 {top + plot_h / 2:.1f})"')]
    for k in range(5):
        v = top_value * k / 4
        y = top + plot_h - plot_h * k / 4
        body += [f'<line x1="{left - 4}" y1="{y:.1f}" x2="{left + group_w * len(groups)}" y2="{y:.1f}" '
                 'stroke="#eee"/>', _text(left - 6, y + 3, f"{v:.3g}", anchor="end", size=9)]
    for g, group in enumerate(groups):
        x0 = left + g * group_w + 9
        body.append(_text(x0 + bar_w * len(series) / 2, top + plot_h + 16, group, size=10))
        for s, name in enumerate(series):
            x = x0 + s * bar_w
            value = values.get((group, name))
            if value is None:
                body.append(_text(x + bar_w / 2, top + plot_h - 4, "n/a", size=7,
                                  extra=f' transform="rotate(-90 {x + bar_w / 2:.1f} {top + plot_h - 4:.1f})"'))
                continue
            h = plot_h if not math.isfinite(value) else plot_h * min(value, top_value) / top_value
            body.append(f'<rect x="{x:.1f}" y="{top + plot_h - h:.1f}" width="{bar_w - 2:.1f}" height="{h:.1f}" '
                        f'fill="{PALETTE[s % len(PALETTE)]}"><title>{escape(f"{group} / {name}: {value:.4g}")}'
                        '</title></rect>')
            if not math.isfinite(value):
                body.append(_text(x + bar_w / 2, top - 3, "∞", size=10))
    legend_x = left + group_w * len(groups) + 20
    for s, name in enumerate(series):
        y = top + 14 * s
        body += [f'<rect x="{legend_x}" y="{y}" width="10" height="10" fill="{PALETTE[s % len(PALETTE)]}"/>',
                 _text(legend_x + 14, y + 9, name, anchor="start", size=10)]
    return _svg(width, height, body)
