"""Importance sampling with a proposal that is uniform over each position's support.

Rare-token inputs are often made of tokens the input distribution D rarely draws; a uniform
proposal q draws them as often as any other. Each sample is weighted by D(x)/q(x), computed exactly
in log space from the per-position categoricals, so the estimate stays unbiased.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

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
from lowprob.core.stats import importance_sampling_interval


class UniformISOptions(EstimatorOptions):
    """Options of ``uniform-is``."""

    batch_size: int = Field(default=1024, ge=1, description="sequences per model call batch")


@dataclass(frozen=True)
class Proposal:
    """Per position: the support ids and log(D_i(id) / q_i(id)), q_i uniform on the support."""

    ids: tuple[torch.Tensor, ...]
    log_ratio: tuple[torch.Tensor, ...]

    @property
    def log_max_weight(self) -> float:
        """log of the largest possible weight D(x)/q(x)."""
        return sum(float(r.max()) for r in self.log_ratio)


@dataclass(frozen=True)
class UniformISState:
    """Running sums of the weights w, of w·hit and of their squares."""

    proposal: Proposal
    samples: int = 0
    hits: int = 0
    sum_w: float = 0.0
    sum_w2: float = 0.0
    sum_wh: float = 0.0
    sum_wh2: float = 0.0

    @property
    def value(self) -> float:
        return self.sum_wh / self.samples

    @property
    def std_error(self) -> float | None:
        """Standard error of the mean of w·hit; ``None`` before two samples or without hits."""
        if self.samples < 2 or self.hits == 0:
            return None
        n = self.samples
        variance = max(0.0, (self.sum_wh2 - n * self.value**2) / (n - 1))
        return math.sqrt(variance / n)


class UniformImportanceSampling(Estimator[UniformISState]):
    """Importance sampling from a proposal uniform over each position's support (unbiased)."""

    name = "uniform-is"
    Options = UniformISOptions
    capabilities = Capabilities(unbiased=True, has_error_bars=True, needs_factorized=True)
    options: UniformISOptions

    def init(self, problem: Problem, generator: torch.Generator) -> UniformISState:
        positions = problem.distribution.positions
        ids = tuple(c.ids for c in positions)
        log_ratio = tuple(c.probs.log() + math.log(c.support_size) for c in positions)
        return UniformISState(Proposal(ids, log_ratio))

    def step(self, state: UniformISState, problem: Problem, generator: torch.Generator,
             context: StepContext) -> tuple[UniformISState, StepInfo]:
        n = context.affordable(1.0, self.options.batch_size)
        if n == 0:
            return state, StepInfo(samples=state.samples, done=True)
        proposal = state.proposal
        columns, log_w = [], torch.zeros(n, dtype=torch.float64)
        for ids, log_ratio in zip(proposal.ids, proposal.log_ratio, strict=True):
            pick = torch.randint(ids.numel(), (n,), generator=generator)
            columns.append(ids[pick])
            log_w += log_ratio[pick]
        hit = problem.target.hits(problem.model.last_logits(torch.stack(columns, dim=1))).cpu()
        w = log_w.exp()
        wh = w * hit.to(torch.float64)
        new = replace(state, samples=state.samples + n, hits=state.hits + int(hit.sum()),
                      sum_w=state.sum_w + float(w.sum()), sum_w2=state.sum_w2 + float((w**2).sum()),
                      sum_wh=state.sum_wh + float(wh.sum()),
                      sum_wh2=state.sum_wh2 + float((wh**2).sum()))
        return new, StepInfo(value=new.value, std_error=new.std_error, samples=new.samples)

    def result(self, state: UniformISState, problem: Problem, level: float) -> EstimatorOutput:
        if state.samples == 0:
            raise LowprobError("uniform-is drew no samples; the budget ran out before one batch")
        low, high, method = importance_sampling_interval(state.value, state.std_error, state.hits, state.samples,
                                                         state.proposal.log_max_weight, level)
        return EstimatorOutput(
            value=state.value,
            std_error=state.std_error,
            ci=ConfidenceInterval(low=low, high=high, level=level, method=method),
            hits=state.hits,
            samples=state.samples,
            diagnostics={
                "effective_sample_size": state.sum_w**2 / state.sum_w2,
                "hit_effective_sample_size": state.sum_wh**2 / state.sum_wh2 if state.hits else 0.0,
                "mean_weight": state.sum_w / state.samples,
            },
        )
