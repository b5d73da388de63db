"""Matplotlib figures: the reproduce figures as PNG and SVG, and the notebook helpers on typed rows and estimates."""

import math
from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")

from made_estimates import made_estimate
from matplotlib.figure import Figure  # noqa: E402

from lowprob.core import Budget  # noqa: E402
from lowprob.core.estimate import ConfidenceInterval, TracePoint  # noqa: E402
from lowprob.figures import ScatterPanel, loss_bars, loss_plot, save_figure, scatter_grid, scatter_plot  # noqa: E402
from lowprob.results import ProtocolTags, ResultRow, RowSpec  # noqa: E402


def _row(distribution: str, label: str, token: int, p_true: float, value: float, phase: str = "test") -> ResultRow:
    spec = RowSpec(model="m", distribution=distribution, distribution_hash="h", target=f"argmax == #{token}",
                   estimator=label, label=label, budget=Budget(model_calls=10), seed=token,
                   protocol=ProtocolTags(phase=phase, token=token, p_true=p_true))  # type: ignore[arg-type]
    return ResultRow.of(spec, estimate=made_estimate(value, model_calls=300))


def _texts(figure: Figure) -> list[str]:
    return [t.get_text() for ax in figure.axes for t in ax.texts] + [t.get_text() for t in figure.texts]


def test_scatter_grid_draws_one_panel_per_distribution_with_zeros_marked(tmp_path: Path) -> None:
    panels = [ScatterPanel("hex <&>", [1e-5, 1e-4, 3e-4], [0.0, 1e-60, 2e-4], [2e-5, 1e-4, 3e-4], "note"),
              ScatterPanel("empty", [], [])]
    figure = scatter_grid("title", panels)
    drawn = [ax for ax in figure.axes if ax.axison]
    assert [ax.get_title().splitlines()[0] for ax in drawn] == ["hex <&>", "empty"]
    labels = drawn[0].get_legend_handles_labels()[1]
    assert labels == ["raw", "fitted", "zero estimate"]
    zeros = drawn[0].collections[-1].get_offsets()
    assert len(zeros) == 1 and zeros[0][0] == pytest.approx(1e-5)  # the zero estimate, at its ground truth
    paths = save_figure(figure, tmp_path / "scatter")
    assert [p.name for p in paths] == ["scatter.png", "scatter.svg"]
    assert paths[0].read_bytes().startswith(b"\x89PNG") and "hex &lt;&amp;&gt;" in paths[1].read_text()


def test_loss_bars_mark_missing_and_infinite_values() -> None:
    figure = loss_bars("t", ["a", "b"], ["m1", "m2"], {("a", "m1"): 0.5, ("a", "m2"): math.inf, ("b", "m1"): None},
                       "loss")
    (ax,) = figure.axes
    assert {"n/a", "∞"} <= set(_texts(figure))
    heights = sorted(round(bar.get_height(), 6) for bar in ax.patches)
    assert heights == [0.5, 0.55]  # the infinite bar is drawn to the top of the axis (1.1 × the largest finite)
    assert ax.get_legend_handles_labels()[1] == ["m1", "m2"]


def test_notebook_plots_from_typed_rows() -> None:
    rows = [_row("hex", "naive", t, p, q)
            for t, p, q in [(1, 1e-4, 2e-4), (2, 1e-3, 5e-4), (3, 1e-2, 3e-2), (4, 3e-2, 0.0)]]
    rows += [_row("hex", "itgis", t, p, p) for t, p in [(1, 1e-4), (2, 1e-3)]]
    rows += [_row("hex", "naive", 9, 0.5, 0.9, phase="tune")]  # tuning rows are not scored
    scatter = scatter_plot(rows, "naive")
    (panel,) = [ax for ax in scatter.axes if ax.axison]
    assert panel.get_title().startswith("hex\nIS loss") and "1/4 zero" in panel.get_title()
    bars = loss_plot(rows)
    heights = {bar.get_height() for bar in bars.axes[0].patches}
    assert len(heights) == 2 and min(heights) == pytest.approx(0.0, abs=1e-9)  # itgis is exact: loss 0
    assert max(heights) > 1e-3


def test_plot_trace_shows_the_running_estimate_and_the_interval() -> None:
    trace = [TracePoint(model_calls=100 * k, value=1e-3 * k, std_error=1e-4) for k in (1, 2, 3)]
    ci = ConfidenceInterval(low=2e-3, high=4e-3, level=0.95, method="wald")
    figure = made_estimate(3e-3, trace=trace, ci=ci).plot_trace()
    assert isinstance(figure, Figure)
    (ax,) = figure.axes
    line = ax.get_lines()[0]
    assert list(line.get_xdata()) == [100, 200, 300] and list(line.get_ydata()) == pytest.approx([1e-3, 2e-3, 3e-3])
    assert ax.get_yscale() == "log" and "final 95% interval" in ax.get_legend_handles_labels()[1]
    assert isinstance(made_estimate(0.0).plot_trace(), Figure)  # no trace, no interval: an empty plot, not an error
