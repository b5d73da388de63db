"""ITGIS: independent-token gradient importance sampling (Wu & Hilton 2025, §5.3).

Each batch draws every position independently from ``q_i(v) ∝ D_i(v) · exp(S[i, v] / τ_m)``, where ``S`` is a
decaying sum of earlier batches' mean token gradients of the target score; weighting hits by ``D(x)/q(x)``
keeps every batch unbiased given the past, so the mean of all weighted hits is unbiased.
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
from lowprob.core.stats import WeightTally, adaptive_zero_hit_bound, normal_interval
from lowprob.plugins.builtin.token_scores import gather_rows, sample_rows, tilted_log_probs
from lowprob.plugins.hookspecs import hookimpl
from lowprob.plugins.registry import Registrar


class ITGISOptions(EstimatorOptions):
    """Options of ITGIS."""

    temperature: float = Field(default=1.0, gt=0, description="T: the proposal tilts D by exp(mean gradient / T)")
    batch_size: int = Field(default=256, ge=1, description="samples per batch (one proposal update per batch)")
    decay: float = Field(default=0.9, ge=0, lt=1, description="β: decay of the running gradient-score table")


@dataclass(frozen=True)
class Proposal:
    """One batch's product proposal: ``log_q`` ``[positions, vocab]`` and the matching ``log D`` table."""

    log_d: torch.Tensor
    log_q: torch.Tensor
    temperature: float

    @staticmethod
    def tilt(log_d: torch.Tensor, scores: torch.Tensor, temperature: float) -> Proposal:
        return Proposal(log_d, tilted_log_probs(log_d, scores, temperature), temperature)

    def sample(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` sequences ``[n, positions]`` and their exact log importance ratios ``log D(x) − log q(x)``."""
        tokens = sample_rows(self.log_q, n, generator)
        return tokens, self.log_ratio(tokens)

    def log_ratio(self, tokens: torch.Tensor) -> torch.Tensor:
        """``Σ_i log D_i(x_i) − log q_i(x_i)``; constant positions contribute exactly 0."""
        return (gather_rows(self.log_d, tokens) - gather_rows(self.log_q, tokens)).sum(dim=1)

    @property
    def log_max_weight(self) -> float:
        """log of the largest possible weight ``max_x D(x)/q(x)`` (over the support)."""
        ratio = torch.where(torch.isfinite(self.log_d), self.log_d - self.log_q, -math.inf)
        return float(ratio.max(dim=1).values.sum())


@dataclass(frozen=True)
class ITGISState:
    """The score table ``S``, the running tally of weights and weighted hits, and each batch's draws with the log
    of its proposal's largest weight (for the zero-hit bound)."""

    log_d: torch.Tensor
    scores: torch.Tensor
    batches: int = 0
    tally: WeightTally = WeightTally()
    batch_weights: tuple[tuple[int, float], ...] = ()
    temperature: float = 1.0


class ITGIS(Estimator[ITGISState]):
    """Adaptive importance sampling from a product proposal tilted by running token-gradient scores (unbiased)."""

    name = "itgis"
    Options = ITGISOptions
    capabilities = Capabilities(unbiased=True, has_error_bars=True, needs_gradients=True, needs_factorized=True)
    options: ITGISOptions

    def init(self, problem: Problem, generator: torch.Generator) -> ITGISState:
        log_d = problem.distribution.dense_log_probs()
        return ITGISState(log_d=log_d, scores=torch.zeros_like(log_d))

    def batch_temperature(self, batch: int) -> float:
        """τ_m: 1 at batch 0 (S = 0, so q = D), then T·(1 − β^m)/(1 − β), so S/τ_m is the mean score over T."""
        if batch == 0:
            return 1.0
        beta = self.options.decay
        return self.options.temperature * (1 - beta**batch) / (1 - beta)

    def step(self, state: ITGISState, problem: Problem, generator: torch.Generator,
             context: StepContext) -> tuple[ITGISState, StepInfo]:
        n = context.affordable(1.0 + context.backward_weight, self.options.batch_size)
        if n == 0:
            return state, StepInfo(samples=state.tally.samples, done=True)
        proposal = Proposal.tilt(state.log_d, state.scores, self.batch_temperature(state.batches))
        tokens, log_w = proposal.sample(n, generator)
        logits, mean_grads = problem.model.mean_target_gradients(tokens, problem.target)
        hit = problem.target.hits(logits).cpu()
        w = log_w.exp()
        new = replace(
            state,
            scores=self.options.decay * state.scores + mean_grads.cpu().to(torch.float64),
            batches=state.batches + 1,
            tally=state.tally.add(w, hit),
            batch_weights=(*state.batch_weights, (n, proposal.log_max_weight)),
            temperature=proposal.temperature,
        )
        return new, StepInfo(value=new.tally.value, std_error=new.tally.std_error, samples=new.tally.samples)

    def result(self, state: ITGISState, problem: Problem, level: float) -> EstimatorOutput:
        tally = state.tally
        if tally.samples == 0:
            raise LowprobError("itgis drew no samples; the budget ran out before the first batch")
        if tally.hits:
            low, high = normal_interval(tally.value, tally.std_error or 0.0, level)
            ci = ConfidenceInterval(low=low, high=high, level=level, method="normal")
        else:
            ci = ConfidenceInterval(low=0.0, high=adaptive_zero_hit_bound(state.batch_weights, level), level=level,
                                    method="no hit: exact bound from each batch's draws and largest weight "
                                           "(per-batch max D/q)")
        return EstimatorOutput(
            value=tally.value,
            std_error=tally.std_error,
            ci=ci,
            hits=tally.hits,
            samples=tally.samples,
            diagnostics={
                **tally.diagnostics(),
                "final_temperature": state.temperature,
                "batches": state.batches,
                "std_error_method": "iid sample std of w*y / sqrt(N) (ignores the adaptivity)",
            },
        )


@hookimpl
def register_estimators(registrar: Registrar) -> None:
    """Register the built-in ITGIS estimator."""
    registrar.add_estimator(ITGIS)
