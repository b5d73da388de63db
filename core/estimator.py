"""The estimator protocol: ``init`` / ``step`` / ``result`` with explicit state, as in blackjax.

The runner (:func:`lowprob.core.runner.run_estimator`) owns the loop, the budget and the progress bar; an
estimator only says how to start, how to take one step within the allowance it is given, and how to turn its
state into a result. Options are a nested pydantic model that rejects unknown keys.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar

import torch
from pydantic import BaseModel, ConfigDict, ValidationError

from lowprob.core.budget import Budget
from lowprob.core.distribution import InputDistribution
from lowprob.core.errors import LowprobError
from lowprob.core.estimate import ConfidenceInterval
from lowprob.core.meter import MeteredModel
from lowprob.core.output_target import Event, OutputTarget, check_fits
from lowprob.core.target import Target

PAPER_MODEL_CALLS = 2**16
"""The per-estimate budget of Wu & Hilton (2025): "a computational budget of 2^16 model calls"."""


class EstimatorOptions(BaseModel):
    """Base of every estimator's ``Options``: unknown keys are errors, values are validated strictly (``true``,
    ``"5"`` or ``1e3`` for an integer option is an error, not 1, 5 or 1000; an integer is still a valid float)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


@dataclass(frozen=True)
class Capabilities:
    """What an estimator promises and needs.

    ``unbiased``: E[value] equals the true probability. ``consistent``: converges as the budget grows.
    ``has_error_bars``: reports a standard error / interval. ``needs_gradients``: uses backward passes.
    ``needs_factorized``: requires independent positions (``InputDistribution.is_factorized``).
    ``output_events``: handles targets on generated continuations (:class:`~lowprob.core.output_target.OutputTarget`).
    """

    unbiased: bool
    has_error_bars: bool
    needs_gradients: bool = False
    needs_factorized: bool = False
    consistent: bool = True
    output_events: bool = False


@dataclass
class Problem:
    """What to estimate: a metered model, an input distribution and an event (a next-token target or an output
    event)."""

    model: MeteredModel
    distribution: InputDistribution
    event: Event

    @property
    def target(self) -> Target:
        """The next-token target, for estimators that judge the last position's logits."""
        if isinstance(self.event, OutputTarget):
            raise LowprobError(f"{self.event.describe()} is an output event (a test on generated tokens), not a "
                               "next-token target")
        return self.event


@dataclass(frozen=True)
class StepContext:
    """What the runner tells one step: how many model calls it may still spend and what a backward costs."""

    allowance: float
    backward_weight: float

    def affordable(self, per_sample_calls: float, wanted: int) -> int:
        """How many samples of ``per_sample_calls`` each fit in the allowance, at most ``wanted``."""
        if math.isinf(self.allowance):
            return wanted
        return max(0, min(wanted, int(self.allowance // per_sample_calls)))

    def draw_inputs(self, problem: Problem, wanted: int, generator: torch.Generator) -> torch.Tensor | None:
        """Up to ``wanted`` inputs x ~ D ``[n, length]`` at one model call each, as many as the allowance affords;
        ``None`` when it affords none (the step is done). The common first move of a per-input estimator's step."""
        n = self.affordable(1.0, wanted)
        return problem.distribution.sample(n, generator) if n else None


@dataclass(frozen=True)
class StepInfo:
    """Per-step report: the running estimate (if any), samples used so far, and whether the work is done."""

    value: float | None = None
    std_error: float | None = None
    samples: int = 0
    done: bool = False


@dataclass
class EstimatorOutput:
    """What ``result`` returns; the runner adds cost, trace and provenance to make an :class:`Estimate`."""

    value: float
    """The point estimate of the target probability."""
    std_error: float | None
    """Its standard error, or ``None`` for an estimator without error bars."""
    ci: ConfidenceInterval | None
    """The interval at the ``level`` ``result`` was given, or ``None`` without error bars."""
    hits: int
    """Samples that hit the target (or the estimator's nearest analogue, e.g. final-stage hits)."""
    samples: int
    """Inputs drawn (or model evaluations made) to get ``value``."""
    diagnostics: dict[str, Any] = field(default_factory=dict)
    """Estimator-specific, JSON-serialisable numbers (effective sample size, acceptance rate, ...)."""
    warnings: list[str] = field(default_factory=list)
    """What the estimator found wrong with its own run (e.g. chains that have not mixed), shown with the estimate."""


S = TypeVar("S")


class Estimator(ABC, Generic[S]):
    """Base class for estimators. Subclasses set ``name``, ``Options``, ``capabilities`` and the three methods.

    ``min_step_calls`` is the smallest number of model calls one step can usefully spend; a budget below it
    is rejected before the run starts.
    """

    name: ClassVar[str]
    Options: ClassVar[type[EstimatorOptions]] = EstimatorOptions
    capabilities: ClassVar[Capabilities]

    def __init__(self, options: EstimatorOptions | Mapping[str, Any] | None = None) -> None:
        self.options = self.parse_options(options)

    @classmethod
    def parse_options(cls, options: EstimatorOptions | Mapping[str, Any] | None) -> Any:
        """Validate ``options`` against ``Options``; errors name the estimator and every bad key."""
        if isinstance(options, cls.Options):
            return options
        try:
            return cls.Options(**dict(options or {}))
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or '(options)'}: {e['msg']}" for e in exc.errors())
            known = ", ".join(cls.Options.model_fields) or "(none)"
            raise LowprobError(
                f"invalid options for estimator {cls.name!r}: {problems} (known options: {known})") from None

    @classmethod
    def paper_budget(cls) -> Budget:
        """The budget Wu & Hilton (2025) gave this kind of method: 2^16 model calls, backward passes not
        charged (``backward_weight=0``). Estimators whose paper accounting differs (MHIS) override this."""
        return Budget(model_calls=PAPER_MODEL_CALLS, backward_weight=0.0)

    def min_step_calls(self, backward_weight: float) -> float:
        """Model calls needed for the smallest useful step (one forward pass by default)."""
        return 1.0 + (backward_weight if self.capabilities.needs_gradients else 0.0)

    def budget_advice(self, model_calls: float, backward_weight: float) -> str:
        """What to change when ``model_calls`` is less than :meth:`min_step_calls` (ends the budget error)."""
        return f"give it at least {math.ceil(self.min_step_calls(backward_weight))} model calls"

    def check_problem(self, problem: Problem) -> None:
        """Raise a clear error when this estimator cannot handle ``problem``."""
        if isinstance(problem.event, OutputTarget):
            if not self.capabilities.output_events:
                raise LowprobError(
                    f"estimator {self.name!r} judges the next token after the input and does not support output "
                    f"events such as {problem.event.describe()}; see `lowprob estimators` for those that do")
            check_fits(problem.event, problem.distribution.length, problem.model.n_ctx)
        if self.capabilities.needs_factorized and not problem.distribution.is_factorized:
            raise LowprobError(
                f"estimator {self.name!r} needs independent positions, but the distribution has weighted "
                "alternatives between sub-sequences")

    @abstractmethod
    def init(self, problem: Problem, generator: torch.Generator) -> S:
        """Fresh state for ``problem``."""

    @abstractmethod
    def step(self, state: S, problem: Problem, generator: torch.Generator,
             context: StepContext) -> tuple[S, StepInfo]:
        """One unit of work that spends at most ``context.allowance`` model calls."""

    @abstractmethod
    def result(self, state: S, problem: Problem, level: float) -> EstimatorOutput:
        """The estimate so far, with an interval at confidence ``level``."""
