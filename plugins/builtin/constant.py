"""The "optimal constant" baseline (Wu & Hilton 2025, §5.1) and the Itakura–Saito-style loss it minimises.

The constant needs the ground-truth probabilities of the evaluated tokens, so an evaluation harness fits it
(:func:`optimal_constant`) and passes it to the ``optimal-constant`` estimator as its ``value`` option; the
estimator spends no model calls and answers that value for every target — the bar every method must clear.
"""

from __future__ import annotations

from collections.abc import Sequence

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


def itakura_saito_loss(p: Sequence[float] | torch.Tensor, p_hat: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """L(p, p̂) = p/p̂ − ln(p/p̂) − 1 elementwise (float64): ≥ 0, and 0 iff p̂ = p; infinite for p̂ = 0 < p."""
    ratio = torch.as_tensor(p, dtype=torch.float64) / torch.as_tensor(p_hat, dtype=torch.float64)
    return ratio - torch.log(ratio) - 1


def optimal_constant(ground_truth_probs: Sequence[float] | torch.Tensor) -> float:
    """The c minimising Σ_k L(p_k, c): the arithmetic mean of the p_k.

    d/dc Σ_k (p_k/c − ln p_k + ln c − 1) = Σ_k (1/c − p_k/c²) = 0 ⇔ c = mean(p), and the sum is convex in ln c.
    """
    p = torch.as_tensor(ground_truth_probs, dtype=torch.float64)
    if p.numel() == 0 or not bool(((p > 0) & torch.isfinite(p)).all()):
        raise ValueError("optimal_constant needs at least one probability, all finite and positive")
    return float(p.mean())


class ConstantOptions(EstimatorOptions):
    """Options of the optimal-constant baseline."""

    value: float = Field(gt=0, le=1, description="the constant; an evaluation harness sets optimal_constant(p)")


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
