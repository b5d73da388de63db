"""Twisted SMC over the generated tokens (Zhao et al. 2024) with a training-free look-ahead twist.

Particles are inputs x ~ D followed by continuations chosen one token at a time. At step t each particle moves to
``y_t`` with probability ``q(y_t) ∝ p(y_t | x, y_<t) · ψ_t(y_≤t)`` and is reweighted by
``Σ_y p(y | x, y_<t) ψ_t(y_≤t) / ψ_{t-1}(y_<t)``; the last twist ``ψ_L`` is the event's indicator, so the product
of the mean weights (banked at each resampling) is unbiased for Pr[hit] for any twist that is positive wherever a
hit is still possible (Del Moral 2004). The twists, with no training:

- ``contains {set}``: 1 once the set has been generated; before that 1 for a token of the set and otherwise
  ``1 − (1 − m_t)^(L − t)``, the chance of meeting the set in the remaining steps if each had this step's set mass
  ``m_t`` (floored at ``FLOOR`` so that no path to a hit is cut);
- ``== "text"`` (a fixed continuation): 1 on the prefix of the continuation, 0 elsewhere, so every particle
  follows it and the weights are its conditional probabilities (conditional-exact with resampling);
- a next-token target (``argmax == t``, ``argmax in S``) is ``greedy(1)`` of the same test.

Each SMC run opens one decoding session of ``particles`` sequences (one model call each: the continuation is one
pass over input and generated tokens; a one-token event needs only the input's pass); runs repeat until the budget
is spent and combine as independent replicates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

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
from lowprob.core.generation import RandomSource, Sampling
from lowprob.core.meter import Decoding
from lowprob.core.output_target import ContainsToken, Equals, OutputTarget
from lowprob.core.random import categorical
from lowprob.core.smc import ParticleRun, ParticleWeights, combine_particle_runs
from lowprob.core.target import ArgmaxIn, ArgmaxIs
from lowprob.plugins.hookspecs import hookimpl
from lowprob.plugins.registry import Registrar

FLOOR = 1e-30
"""Smallest look-ahead twist: positive, so a path whose set mass is 0 now (top-k) keeps its chance of a later hit."""


class OutputTSMCOptions(EstimatorOptions):
    """Options of twisted SMC over generated tokens."""

    particles: int = Field(default=256, ge=1, description="particles (input + continuation) per SMC run")
    ess_threshold: float = Field(default=0.5, ge=0.0, le=1.0,
                                 description="resample (multinomially) when ESS < this × particles")


@dataclass(frozen=True)
class Twist:
    """The event as twisted SMC sees it: a continuation of ``length`` tokens under ``sampling`` that either
    contains a token of ``ids`` (``contains``) or equals ``ids`` in order (``fixed``)."""

    length: int
    sampling: Sampling
    ids: tuple[int, ...]
    contains: bool

    @staticmethod
    def of(problem: Problem, estimator: str = "output-tsmc") -> Twist:
        """The twist for ``problem``'s event, or a clear error (naming ``estimator``) for an event it cannot twist."""
        event = problem.event
        if isinstance(event, ArgmaxIs | ArgmaxIn):
            return Twist(1, Sampling.argmax(), tuple(event.token_ids), True)
        if isinstance(event, OutputTarget) and isinstance(event.test, ContainsToken):
            return Twist(event.length, event.sampling, tuple(sorted(event.test.ids)), True)
        if isinstance(event, OutputTarget) and isinstance(event.test, Equals):
            return Twist(event.length, event.sampling, event.test.ids, False)
        raise LowprobError(f"{estimator} twists events that contain a token set or equal a fixed continuation; "
                           f"{event.describe()} is a test on the decoded text (use naive)")

    def log_psi(self, step: int, log_p: torch.Tensor, hit: torch.Tensor) -> torch.Tensor:
        """``log ψ`` of every next token ``[K, V]`` at ``step`` (0-based), given the model's ``log_p [K, V]`` and
        whether each particle has already hit (``contains``)."""
        ids = torch.tensor(self.ids, device=log_p.device)
        if not self.contains:
            return torch.full_like(log_p, -math.inf).index_fill_(1, ids[step:step + 1], 0.0)
        remaining = self.length - step - 1
        if remaining == 0:
            off = torch.full((log_p.shape[0],), -math.inf, dtype=log_p.dtype, device=log_p.device)
        else:
            mass = torch.logsumexp(log_p[:, ids], dim=1).exp().clamp(max=1.0)
            off = torch.log((-torch.expm1(remaining * torch.log1p(-mass))).clamp(min=FLOOR))
        log_psi = off[:, None].expand_as(log_p).clone().index_fill_(1, ids, 0.0)
        log_psi[hit] = 0.0
        return log_psi


def twisted_continuation(twist: Twist, logits: torch.Tensor, decoding: Decoding | None, weights: ParticleWeights,
                         eve: torch.Tensor, log_psi_prev: torch.Tensor, ess_threshold: float,
                         generator: RandomSource) -> tuple[ParticleWeights, torch.Tensor]:
    """The generated steps of twisted SMC for particles whose next-token ``logits [K, V]`` are given (held by
    ``decoding`` when the event has more than one step), entering with ``weights``, initial ancestors ``eve`` and
    the log twist ``log_psi_prev`` of their prefix (0 for plain inputs): the final weights and ancestors."""
    hit = torch.zeros(weights.size, dtype=torch.bool)
    ids = torch.tensor(twist.ids)
    for step in range(twist.length):
        log_p = twist.sampling.log_probs(logits).double().cpu()
        log_psi = twist.log_psi(step, log_p, hit)
        log_joint = log_p + log_psi
        log_norm = torch.logsumexp(log_joint, dim=1)
        weights = weights.reweight(log_norm - log_psi_prev)
        if weights.dead:
            break
        alive = torch.isfinite(log_norm)[:, None]  # a dead particle moves by the model, at weight 0
        proposal = torch.where(alive, log_joint - log_norm[:, None], log_p).exp()
        chosen = categorical(proposal, 1, generator)[:, 0]
        log_psi_prev = torch.where(alive[:, 0], log_psi.gather(1, chosen[:, None])[:, 0], 0.0)
        hit = hit | torch.isin(chosen, ids)
        if decoding is not None and step + 1 < twist.length:
            weights, ancestors = weights.resample_if_needed(ess_threshold, "multinomial", generator)
            if ancestors is not None:
                decoding.select(ancestors)
                chosen, hit, log_psi_prev, eve = (chosen[ancestors], hit[ancestors], log_psi_prev[ancestors],
                                                  eve[ancestors])
            logits = decoding.push(chosen)
    return weights, eve


@dataclass
class OutputTSMCState:
    """The twist and the finished SMC runs."""

    twist: Twist
    runs: list[ParticleRun] = field(default_factory=list)
    hits: int = 0
    particles: int = 0


class OutputTSMC(Estimator[OutputTSMCState]):
    """Twisted SMC over generated tokens with a training-free look-ahead twist; unbiased, gamma interval."""

    name = "output-tsmc"
    Options = OutputTSMCOptions
    capabilities = Capabilities(unbiased=True, has_error_bars=True, output_events=True)
    options: OutputTSMCOptions

    def check_problem(self, problem: Problem) -> None:
        super().check_problem(problem)
        Twist.of(problem)

    def init(self, problem: Problem, generator: torch.Generator) -> OutputTSMCState:
        return OutputTSMCState(Twist.of(problem))

    def step(self, state: OutputTSMCState, problem: Problem, generator: torch.Generator,
             context: StepContext) -> tuple[OutputTSMCState, StepInfo]:
        k = context.affordable(1.0, self.options.particles)
        if k == 0:
            return state, StepInfo(samples=state.particles, done=True)
        run, hits = self._run(state.twist, problem, k, generator)
        state.runs.append(run)
        state.hits += hits
        state.particles += k
        summary = combine_particle_runs(state.runs)
        return state, StepInfo(value=summary.value, std_error=summary.std_error, samples=state.particles)

    def _run(self, twist: Twist, problem: Problem, k: int, generator: torch.Generator) -> tuple[ParticleRun, int]:
        """One SMC run of ``k`` particles: its replicate summary and how many final particles hit."""
        inputs = problem.distribution.sample(k, generator)
        decoding = problem.model.decoding(inputs, twist.length) if twist.length > 1 else None
        logits = problem.model.last_logits(inputs) if decoding is None else decoding.logits
        weights, eve = twisted_continuation(twist, logits, decoding, ParticleWeights.start(k), torch.arange(k),
                                            torch.zeros(k, dtype=torch.float64), self.options.ess_threshold,
                                            generator)
        run = ParticleRun.of(weights.log_evidence, weights.log_weights, eve, weights.resamples)
        return run, int(torch.isfinite(weights.log_weights).sum()) if not weights.dead else 0

    def result(self, state: OutputTSMCState, problem: Problem, level: float) -> EstimatorOutput:
        if not state.runs:
            raise LowprobError("output-tsmc ran no SMC run; the budget ran out before the first one")
        summary = combine_particle_runs(state.runs, level, zero_method="every run died: trivial bound 1")
        ci = None if summary.low is None or summary.high is None else \
            ConfidenceInterval(low=summary.low, high=min(summary.high, 1.0), level=level, method=summary.method)
        return EstimatorOutput(
            value=summary.value,
            std_error=summary.std_error,
            ci=ci,
            hits=state.hits,
            samples=state.particles,
            diagnostics={"runs": len(state.runs), "twist": "contains" if state.twist.contains else "fixed"},
        )


@hookimpl
def register_estimators(registrar: Registrar) -> None:
    """Register twisted SMC over generated tokens."""
    registrar.add_estimator(OutputTSMC)
