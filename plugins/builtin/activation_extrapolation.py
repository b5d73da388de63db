"""Activation extrapolation: spend the budget on last-position activations, then hand them to a fit.

:class:`ExtrapolationEstimator` collects the samples; subclasses say which fit turns them into an estimate.
``activation-extrapolation`` takes the fit by registered name (option ``fit``); ``qld`` and ``gld`` bind theirs.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from pydantic import Field
from scipy import stats

from lowprob.core.errors import LowprobError
from lowprob.core.estimate import ConfidenceInterval
from lowprob.core.estimator import (
    Capabilities,
    Estimator,
    EstimatorOptions,
    EstimatorOutput,
    Problem,
    StepContext,
    StepInfo,
)
from lowprob.core.random import integers
from lowprob.core.stats import clopper_pearson
from lowprob.plugins.fits import ExtrapolationFit, FitResult
from lowprob.plugins.hookspecs import hookimpl
from lowprob.plugins.registry import Registrar, Registry

INTERVAL_METHOD = "fit interval: log-normal from the fit's standard error, not a coverage guarantee"
ZERO_METHOD = "clopper-pearson on the direct draws from D (the fit found no hit)"


class ExtrapolationOptions(EstimatorOptions):
    """Options shared by every activation-extrapolation estimator."""

    batch_size: int = Field(default=1024, ge=1, description="sequences per model call batch")
    samples: int = Field(default=2**16, ge=2, description="activations to collect (the paper uses 2^16)")


@dataclass(frozen=True)
class ActivationSample:
    """Activations collected so far (one ``[batch, d_model]`` float32 tensor per step), the direct hits
    among them, and the seed of the fit's generator (drawn from the run's generator at ``init``)."""

    fit_seed: int
    batches: tuple[torch.Tensor, ...] = ()
    samples: int = 0
    hits: int = 0


class ExtrapolationEstimator(Estimator[ActivationSample]):
    """Collect ``samples`` activations with forward passes only, then estimate with :meth:`fit`."""

    Options = ExtrapolationOptions
    options: ExtrapolationOptions

    @abstractmethod
    def fit(self) -> ExtrapolationFit:
        """The fit that turns the collected activations into an estimate."""

    @property
    def fit_name(self) -> str:
        """The fit's name, recorded in the diagnostics."""
        return self.name

    def init(self, problem: Problem, generator: torch.Generator) -> ActivationSample:
        return ActivationSample(fit_seed=int(integers(2**62, (1,), generator)))

    def step(self, state: ActivationSample, problem: Problem, generator: torch.Generator,
             context: StepContext) -> tuple[ActivationSample, StepInfo]:
        n = context.affordable(1.0, min(self.options.batch_size, self.options.samples - state.samples))
        if n == 0:
            return state, StepInfo(samples=state.samples, done=True)
        tokens = problem.distribution.sample(n, generator)
        activations, logits = problem.model.last_activations(tokens)
        hits = int(problem.target.hits(logits).sum())
        new = ActivationSample(state.fit_seed, (*state.batches, activations.float().cpu()), state.samples + n,
                               state.hits + hits)
        return new, StepInfo(samples=new.samples, done=new.samples >= self.options.samples)

    def result(self, state: ActivationSample, problem: Problem, level: float) -> EstimatorOutput:
        if state.samples < 2:
            raise LowprobError(f"estimator {self.name!r} collected {state.samples} activations; a fit needs at "
                               "least 2 (raise the budget)")
        activations = torch.cat(state.batches)
        W_U = problem.model.W_U.detach().float().cpu()  # noqa: N806 - TransformerLens naming
        generator = torch.Generator().manual_seed(state.fit_seed)
        fitted = self.fit()(activations, W_U, problem.target.token_ids, generator)
        if not isinstance(fitted, FitResult):
            raise LowprobError(f"extrapolation fit {self.fit_name!r} returned {type(fitted).__name__}, "
                               "not a FitResult")
        ci = _interval(fitted, state.hits, state.samples, level)
        return EstimatorOutput(
            value=fitted.value,
            std_error=fitted.std_error if fitted.value > 0 else None,
            ci=ci,
            hits=state.hits,
            samples=state.samples,
            diagnostics={**fitted.diagnostics, "fit": self.fit_name, "direct_hits": state.hits,
                         "interval_kind": "fit" if ci is not None and not ci.coverage else "direct samples"},
        )


def _interval(fitted: FitResult, hits: int, samples: int, level: float) -> ConfidenceInterval | None:
    """The fit's interval ``value · exp(±z · s.e./value)`` (the delta method on log p̂, so it stays positive
    across orders of magnitude), marked as carrying no coverage guarantee; ``None`` without a standard error.
    A zero fit gets the exact Clopper–Pearson bound of the ``hits`` among the ``samples`` direct draws from D."""
    if fitted.value <= 0:
        return ConfidenceInterval(low=0.0, high=clopper_pearson(hits, samples, level)[1], level=level,
                                  method=ZERO_METHOD)
    if fitted.std_error is None:
        return None
    spread = float(stats.norm.ppf(0.5 + level / 2)) * fitted.std_error / fitted.value
    log_value = math.log(fitted.value)
    return ConfidenceInterval(low=math.exp(log_value - spread), high=math.exp(min(0.0, log_value + spread)),
                              level=level, method=INTERVAL_METHOD, coverage=False)


class ActivationExtrapolationOptions(ExtrapolationOptions):
    """Options of the generic estimator: the shared ones plus the fit's registered name."""

    fit: str = Field(default="qld", description="registered extrapolation fit (`lowprob plugins` lists them)")


class ActivationExtrapolation(ExtrapolationEstimator):
    """Activation extrapolation with any registered fit (option ``fit``, default QLD); heuristic.

    The fit is looked up in the ``registry`` it is given (``Registry.create_estimator`` passes its own); the
    lookup happens in :meth:`check_problem`, before any model call, so an unknown name costs nothing.
    """

    name = "activation-extrapolation"
    Options = ActivationExtrapolationOptions
    capabilities = Capabilities(unbiased=False, consistent=False, has_error_bars=False)
    options: ActivationExtrapolationOptions

    def __init__(self, options: EstimatorOptions | Mapping[str, Any] | None = None, *,
                 registry: Registry | None = None) -> None:
        super().__init__(options)
        self._registry = registry
        self._fit: ExtrapolationFit | None = None

    @property
    def fit_name(self) -> str:
        return self.options.fit

    def fit(self) -> ExtrapolationFit:
        if self._fit is None:
            if self._registry is None:
                raise LowprobError(f"estimator {self.name!r} looks up its fit {self.options.fit!r} in a registry: "
                                   f"create it with registry.create_estimator({self.name!r}, options)")
            self._fit = self._registry.extrapolation(self.options.fit)
        return self._fit

    def check_problem(self, problem: Problem) -> None:
        super().check_problem(problem)
        self.fit()


@hookimpl
def register_estimators(registrar: Registrar) -> None:
    """Register the generic activation-extrapolation estimator."""
    registrar.add_estimator(ActivationExtrapolation)
