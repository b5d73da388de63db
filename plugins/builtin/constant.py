"""The "optimal constant" baseline (Wu & Hilton 2025, §5.1): one fitted answer for every target.

The constant needs the ground-truth probabilities of the evaluated tokens, so an evaluation harness fits it
(:func:`lowprob.core.losses.optimal_constant`, the minimiser of the Itakura–Saito loss defined there) and
passes it to the ``optimal-constant`` estimator as its ``value`` option; the estimator spends no model calls
and answers that value for every target — the bar every method must clear.
"""

from __future__ import annotations

import torch
from pydantic import Field

from lowprob.core.estimator import (
    Capabilities,
    Estimator,
    EstimatorOptions,
    EstimatorOutput,
    Problem,
    StepContext,
    StepInfo,
)
from lowprob.plugins.hookspecs import hookimpl
from lowprob.plugins.registry import Registrar


class ConstantOptions(EstimatorOptions):
    """Options of the optimal-constant baseline."""

    value: float = Field(gt=0, le=1, description="the constant; an evaluation harness sets "
                       "lowprob.core.losses.optimal_constant(p)")


class OptimalConstant(Estimator[None]):
    """The same answer for every target, fitted from ground truth: the baseline of Wu & Hilton (2025)."""

    name = "optimal-constant"
    Options = ConstantOptions
    capabilities = Capabilities(unbiased=False, has_error_bars=False, consistent=False)
    options: ConstantOptions

    def min_step_calls(self, backward_weight: float) -> float:
        return 0.0

    def init(self, problem: Problem, generator: torch.Generator) -> None:
        return None

    def step(self, state: None, problem: Problem, generator: torch.Generator,
             context: StepContext) -> tuple[None, StepInfo]:
        return None, StepInfo(value=self.options.value, done=True)

    def result(self, state: None, problem: Problem, level: float) -> EstimatorOutput:
        return EstimatorOutput(value=self.options.value, std_error=None, ci=None, hits=0, samples=0,
                               diagnostics={"source": "option value (fitted from ground truth by the harness)"})


@hookimpl
def register_estimators(registrar: Registrar) -> None:
    """Register the optimal-constant baseline."""
    registrar.add_estimator(OptimalConstant)
