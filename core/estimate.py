"""The result of an estimate: value, error bars, cost, diagnostics and provenance — never a bare float."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from matplotlib.figure import Figure


class ConfidenceInterval(BaseModel):
    """A two-sided interval at ``level`` computed by ``method`` (e.g. ``clopper-pearson``)."""

    model_config = ConfigDict(frozen=True)

    low: float
    """Lower end, a probability in [0, 1]."""
    high: float
    """Upper end; for a zero estimate, the upper bound to report."""
    level: float
    """Confidence level, e.g. 0.95."""
    method: str
    """How it was computed, a label such as ``clopper-pearson`` (the estimator's page says which it uses)."""
    coverage: bool = True
    """``False`` for a fit interval (activation extrapolation): it shows the fit's own uncertainty, not a promise
    to contain p with probability ``level``."""


class TracePoint(BaseModel):
    """The running estimate after one runner step."""

    model_config = ConfigDict(frozen=True)

    model_calls: float
    value: float | None
    std_error: float | None


class Provenance(BaseModel):
    """What produced an estimate, so it can be reproduced."""

    estimator: str
    plugin: str = ""
    plugin_version: str = ""
    lowprob_version: str = ""
    torch_version: str = ""
    seed: int
    model: str
    distribution: str = ""
    distribution_hash: str
    target: str
    options: dict[str, Any] = Field(default_factory=dict)
    budget: dict[str, Any] = Field(default_factory=dict)
    started_at: str = ""


class Estimate(BaseModel):
    """An estimate of ``Pr_{x~D}[M(x) hits the target]``.

    ``value`` is the point estimate. When it is 0 (e.g. no hits) ``upper_bound`` (the upper end of the
    confidence interval) is what to report; ``summary()`` prints it as an upper bound. ``log10_value`` is ``None``
    when ``value`` is 0.
    """

    model_config = ConfigDict(frozen=True)

    value: float
    log10_value: float | None
    std_error: float | None
    ci: ConfidenceInterval | None
    unclipped_value: float | None = None
    """The estimator's own value where it exceeded 1 and ``value`` was cut to 1, else ``None``. Averages over runs
    of an unbiased estimator should use :attr:`raw_value`: the cut biases them low near p = 1."""
    hits: int
    samples: int
    forward_passes: int
    backward_passes: int
    model_calls: float
    seconds: float
    model_seconds: float
    positions: int = 0
    """Token positions the forward passes processed (0 in rows written before lowprob counted them)."""
    generated_tokens: int = 0
    """Tokens chosen by generation (output-event targets)."""
    stop_reason: str
    unbiased: bool
    diagnostics: dict[str, Any] = Field(default_factory=dict)
    warnings: list[str] = Field(default_factory=list)
    """What the estimator found wrong with its own run (e.g. chains that have not mixed); printed by ``summary``."""
    trace: list[TracePoint] = Field(default_factory=list)
    provenance: Provenance

    @property
    def raw_value(self) -> float:
        """The estimator's own (unclipped) value: what unbiasedness is a statement about."""
        return self.value if self.unclipped_value is None else self.unclipped_value

    @property
    def upper_bound(self) -> float | None:
        """The upper confidence limit of a zero estimate (what a zero means), else ``None``."""
        return self.ci.high if self.value == 0 and self.ci is not None else None

    @property
    def relative_error(self) -> float | None:
        if self.std_error is None or self.value <= 0:
            return None
        return self.std_error / self.value

    def summary(self) -> str:
        """One human-readable line: estimate or bound, interval, hits and cost."""
        level = f"{self.ci.level:.0%}" if self.ci else ""
        if self.upper_bound is not None:
            head = f"p < {self.upper_bound:.3e} ({level} upper bound; {self.hits} hits in {self.samples} samples)"
        else:
            head = f"p ≈ {self.value:.3e}"
            if self.ci is not None:
                head += f"  {level} CI [{self.ci.low:.3e}, {self.ci.high:.3e}]"
                if not self.ci.coverage:
                    head += " (fit interval, not a coverage guarantee)"
            if self.std_error is not None:
                head += f"  ± {self.std_error:.2e} (s.e.)"
            head += f"  hits {self.hits}/{self.samples}"
        return (f"{head}  cost {self.forward_passes} fwd + {self.backward_passes} bwd passes, "
                f"{self.seconds:.2f} s" + "".join(f"  WARNING: {w}" for w in self.warnings))

    @staticmethod
    def log10(value: float) -> float | None:
        return math.log10(value) if value > 0 else None

    def plot_trace(self) -> Figure:
        """The running estimate against model calls spent, ±2 standard errors shaded, on a log scale, with the
        final interval at the right; a matplotlib ``Figure`` to show in a notebook or ``savefig``."""
        from matplotlib.figure import Figure  # only for those who plot

        figure = Figure(figsize=(6, 3.5), layout="constrained")
        ax = figure.subplots()
        points = [(t.model_calls, t.value, t.std_error) for t in self.trace if t.value is not None and t.value > 0]
        ax.plot([c for c, _, _ in points], [v for _, v, _ in points], marker=".", label="running estimate")
        band = [(c, v, e) for c, v, e in points if e is not None]
        if band:
            ax.fill_between([c for c, _, _ in band], [max(v - 2 * e, v * 1e-3) for _, v, e in band],
                            [v + 2 * e for _, v, e in band], alpha=0.2, label="± 2 s.e.")
        if self.ci is not None and self.ci.high > 0:  # a log axis cannot show 0: a zero low end is drawn at 1e-3·high
            ax.vlines(self.model_calls, max(self.ci.low, self.ci.high * 1e-3), self.ci.high, color="black", lw=3,
                      label=f"final {self.ci.level:.0%} interval")
        if points or self.ci is not None:
            ax.set_yscale("log")
        ax.set_xlabel("model calls")
        ax.set_ylabel("estimate of p")
        ax.set_title(f"{self.provenance.estimator} on {self.provenance.target}", fontsize=10)
        ax.legend(fontsize=8)
        return figure
