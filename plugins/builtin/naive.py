"""Naive Monte Carlo: sample x ~ D (and, for an output event, a continuation of each), count hits. Unbiased, with an
exact binomial confidence interval."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import Field

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
from lowprob.core.output_target import OutputTarget
from lowprob.core.stats import clopper_pearson, wilson
from lowprob.plugins.hookspecs import hookimpl
from lowprob.plugins.registry import Registrar


class NaiveOptions(EstimatorOptions):
    """Options of naive Monte Carlo."""

    batch_size: int = Field(default=4096, ge=1, description="sequences per model call batch")
    interval: Literal["clopper-pearson", "wilson"] = Field(
        default="clopper-pearson",
        description="binomial interval: exact and conservative (clopper-pearson) or wilson score")


@dataclass(frozen=True)
class NaiveState:
    """Hits and samples so far."""

    hits: int = 0
    samples: int = 0


class NaiveMonteCarlo(Estimator[NaiveState]):
    """p̂ = hits / n with x ~ D. With zero hits the result is an upper confidence bound, not a bare 0."""

    name = "naive"
    Options = NaiveOptions
    capabilities = Capabilities(unbiased=True, has_error_bars=True, output_events=True)
    options: NaiveOptions

    def init(self, problem: Problem, generator: torch.Generator) -> NaiveState:
        return NaiveState()

    def step(self, state: NaiveState, problem: Problem, generator: torch.Generator,
             context: StepContext) -> tuple[NaiveState, StepInfo]:
        if (tokens := context.draw_inputs(problem, self.options.batch_size, generator)) is None:
            return state, StepInfo(samples=state.samples, done=True)
        hits = int(_hits(problem, tokens, generator).sum())
        new = NaiveState(state.hits + hits, state.samples + len(tokens))
        value = new.hits / new.samples
        return new, StepInfo(value=value, std_error=_std_error(new), samples=new.samples)

    def result(self, state: NaiveState, problem: Problem, level: float) -> EstimatorOutput:
        if state.samples == 0:
            raise LowprobError("naive Monte Carlo drew no samples; the budget ran out before the first batch")
        interval = clopper_pearson if self.options.interval == "clopper-pearson" else wilson
        low, high = interval(state.hits, state.samples, level)
        return EstimatorOutput(
            value=state.hits / state.samples,
            std_error=_std_error(state),
            ci=ConfidenceInterval(low=low, high=high, level=level, method=self.options.interval),
            hits=state.hits,
            samples=state.samples,
            diagnostics={"interval": self.options.interval},
        )


def _hits(problem: Problem, tokens: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Which inputs hit: by their last-position logits, or (an output event) by a continuation generated for each."""
    event = problem.event
    if isinstance(event, OutputTarget):
        continuations = problem.model.generate(tokens, event.length, event.sampling, generator).tokens
        return event.hits(continuations, problem.model.vocab)
    return event.hits(problem.model.last_logits(tokens))


def _std_error(state: NaiveState) -> float | None:
    """Binomial standard error; ``None`` with zero hits, where it would be a misleading 0."""
    if state.hits == 0:
        return None
    p = state.hits / state.samples
    return math.sqrt(p * (1 - p) / state.samples)


@hookimpl
def register_estimators(registrar: Registrar) -> None:
    """Register the built-in naive Monte Carlo estimator."""
    registrar.add_estimator(NaiveMonteCarlo)
