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
from lowprob.core.stats import WeightTally, importance_sampling_interval


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
    """The proposal and the running tally of weights and weighted hits."""

    proposal: Proposal
    tally: WeightTally = WeightTally()


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
            return state, StepInfo(samples=state.tally.samples, done=True)
        proposal = state.proposal
        columns, log_w = [], torch.zeros(n, dtype=torch.float64)
        for ids, log_ratio in zip(proposal.ids, proposal.log_ratio, strict=True):
            pick = torch.randint(ids.numel(), (n,), generator=generator)
            columns.append(ids[pick])
            log_w += log_ratio[pick]
        hit = problem.target.hits(problem.model.last_logits(torch.stack(columns, dim=1))).cpu()
        new = replace(state, tally=state.tally.add(log_w.exp(), hit))
        return new, StepInfo(value=new.tally.value, std_error=new.tally.std_error, samples=new.tally.samples)

    def result(self, state: UniformISState, problem: Problem, level: float) -> EstimatorOutput:
        tally = state.tally
        if tally.samples == 0:
            raise LowprobError("uniform-is drew no samples; the budget ran out before one batch")
        low, high, method = importance_sampling_interval(tally.value, tally.std_error, tally.hits, tally.samples,
                                                         state.proposal.log_max_weight, level)
        return EstimatorOutput(
            value=tally.value,
            std_error=tally.std_error,
            ci=ConfidenceInterval(low=low, high=high, level=level, method=method),
            hits=tally.hits,
            samples=tally.samples,
            diagnostics=tally.diagnostics(),
        )
