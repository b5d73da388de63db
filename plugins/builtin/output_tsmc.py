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
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

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
from lowprob.core.meter import Cost, Decoding
from lowprob.core.output_target import ContainsToken, Equals, OutputTarget
from lowprob.core.random import categorical
from lowprob.core.smc import LogBound, LogZBracket, ParticleRun, ParticleWeights, combine_particle_runs
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

    reads_features: ClassVar[bool] = False

    def log_psi(self, step: int, log_p: torch.Tensor, hit: torch.Tensor,
                features: torch.Tensor | None = None) -> torch.Tensor:
        """``log ψ`` of every next token ``[K, V]`` at ``step`` (0-based), given the model's ``log_p [K, V]`` and
        whether each particle has already hit (``contains``); the look-ahead twist reads no ``features``."""
        if not self.contains:
            ids = torch.tensor(self.ids, device=log_p.device)
            return torch.full_like(log_p, -math.inf).index_fill_(1, ids[step:step + 1], 0.0)
        return self.spread(self.log_off(step, self.log_miss(log_p)), log_p, hit)

    def log_miss(self, log_p: torch.Tensor) -> torch.Tensor:
        """``log(1 − m_t)`` ``[K]``: the log chance of missing the set at this step (``contains``)."""
        mass = torch.logsumexp(log_p[:, list(self.ids)], dim=1).exp().clamp(max=1.0)
        return torch.log1p(-mass)

    def log_off(self, step: int, log_miss: torch.Tensor) -> torch.Tensor:
        """``log ψ_t`` of a token outside the set before any hit, ``[K]``: ``log(1 − (1 − m_t)^(L − t − 1))``,
        floored at :data:`FLOOR`; ``-inf`` at the last step."""
        remaining = self.length - step - 1
        if remaining == 0:
            return torch.full_like(log_miss, -math.inf)
        return torch.log((-torch.expm1(remaining * log_miss)).clamp(min=FLOOR))

    def spread(self, log_off: torch.Tensor, log_p: torch.Tensor, hit: torch.Tensor) -> torch.Tensor:
        """The ``[K, V]`` table of a ``contains`` twist: 0 for a set token and for a particle that has hit,
        ``log_off`` for every other token."""
        ids = torch.tensor(self.ids, device=log_p.device)
        table = log_off[:, None].expand_as(log_p).clone().index_fill_(1, ids, 0.0)
        table[hit] = 0.0
        return table

    def hits(self, continuations: torch.Tensor) -> torch.Tensor:
        """Which continuations ``[K, L]`` are hits of the event."""
        ids = torch.tensor(self.ids, device=continuations.device)
        return torch.isin(continuations, ids).any(dim=1) if self.contains else (continuations == ids).all(dim=1)


class GeneratedTwist(Protocol):
    """What :func:`twisted_continuation` needs from a twist over generated tokens."""

    @property
    def length(self) -> int: ...

    @property
    def sampling(self) -> Sampling: ...

    @property
    def ids(self) -> tuple[int, ...]: ...

    @property
    def reads_features(self) -> bool: ...

    def log_psi(self, step: int, log_p: torch.Tensor, hit: torch.Tensor,
                features: torch.Tensor | None = None) -> torch.Tensor:
        """``log ψ_t`` of every next token ``[K, V]``; ``features`` ``[K, d_model]`` when it reads them."""
        ...


@dataclass(frozen=True)
class FlatTwist:
    """ψ ≡ 1: every token is drawn from the model, so the particles are plain (rejection) draws whose hits are
    exact samples of the event's posterior; its weights stay 1 (the hit is judged afterwards)."""

    event: Twist
    reads_features: bool = False

    @property
    def length(self) -> int:
        return self.event.length

    @property
    def sampling(self) -> Sampling:
        return self.event.sampling

    @property
    def ids(self) -> tuple[int, ...]:
        return self.event.ids

    def log_psi(self, step: int, log_p: torch.Tensor, hit: torch.Tensor,
                features: torch.Tensor | None = None) -> torch.Tensor:
        return torch.zeros_like(log_p)


@dataclass(frozen=True)
class StepFacts:
    """Twist-independent facts about ``K`` prefixes at one generated step, what a learned twist is a function
    of: ``features [K, d_model]`` (``None`` when the twist reads none), ``log m_t`` and ``log(1 − m_t)`` of the
    set's mass (float64) and whether each has hit before this step."""

    features: torch.Tensor | None
    log_mass: torch.Tensor
    log_miss: torch.Tensor
    hit: torch.Tensor

    def take(self, index: torch.Tensor) -> StepFacts:
        """The facts of the prefixes ``index`` (resampled particles)."""
        return StepFacts(None if self.features is None else self.features[index], self.log_mass[index],
                         self.log_miss[index], self.hit[index])


@dataclass
class Trace:
    """What :func:`twisted_continuation` records for contrastive twist learning and for rejection draws.

    ``entering[t]`` is the population entering step t (the negatives): its facts and ``log W_n − log ψ_{t−1}``
    with normalised weights W; ``path[t]``, ``chosen[t]`` and ``took_set[t]`` follow each final particle's
    ancestry back to step t (re-indexed at every resampling); ``log_weights`` are the final ones."""

    entering: list[tuple[StepFacts, torch.Tensor]] = field(default_factory=list)
    path: list[StepFacts] = field(default_factory=list)
    chosen: list[torch.Tensor] = field(default_factory=list)
    took_set: list[torch.Tensor] = field(default_factory=list)
    log_weights: torch.Tensor | None = None

    def reindex(self, ancestors: torch.Tensor) -> None:
        """Follow a resampling: the paths of the particles' ``ancestors``."""
        self.path = [f.take(ancestors) for f in self.path]
        self.chosen = [c[ancestors] for c in self.chosen]
        self.took_set = [c[ancestors] for c in self.took_set]

    @property
    def continuations(self) -> torch.Tensor:
        """The final particles' continuations ``[K, steps]``."""
        return torch.stack(self.chosen, dim=1)


def twisted_continuation(twist: GeneratedTwist, logits: torch.Tensor, decoding: Decoding | None,
                         weights: ParticleWeights, eve: torch.Tensor, log_psi_prev: torch.Tensor,
                         ess_threshold: float, generator: RandomSource, *, trace: Trace | None = None,
                         reference: torch.Tensor | None = None) -> tuple[ParticleWeights, torch.Tensor]:
    """The generated steps of twisted SMC for particles whose next-token ``logits [K, V]`` are given (held by
    ``decoding`` when the event has more than one step), entering with ``weights``, initial ancestors ``eve`` and
    the log twist ``log_psi_prev`` of their prefix (0 for plain inputs): the final weights and ancestors.

    ``trace`` records what contrastive twist learning needs; ``reference`` (a continuation ``[L]``) runs
    conditional SMC: particle 0 takes its tokens and survives every (multinomial) resampling."""
    hit = torch.zeros(weights.size, dtype=torch.bool)
    ids = torch.tensor(twist.ids)
    keep = None if reference is None else 0
    features = decoding.features if decoding is not None and twist.reads_features else None
    for step in range(twist.length):
        log_p = twist.sampling.log_probs(logits).double().cpu()
        log_psi = twist.log_psi(step, log_p, hit, features)
        log_joint = log_p + log_psi
        log_norm = torch.logsumexp(log_joint, dim=1)
        if trace is not None:
            log_mass = torch.logsumexp(log_p[:, ids], dim=1)
            facts = StepFacts(None if features is None else features.detach().float().cpu(), log_mass,
                              torch.log1p(-log_mass.exp().clamp(max=1.0)), hit.clone())
            trace.entering.append((facts, weights.normalized().log() - log_psi_prev))
        weights = weights.reweight(log_norm - log_psi_prev)
        if weights.dead:
            break
        alive = torch.isfinite(log_norm)[:, None]  # a dead particle moves by the model, at weight 0
        proposal = torch.where(alive, log_joint - log_norm[:, None], log_p).exp()
        chosen = categorical(proposal, 1, generator)[:, 0]
        if reference is not None:
            chosen[0] = reference[step]
        log_psi_prev = torch.where(alive[:, 0], log_psi.gather(1, chosen[:, None])[:, 0], 0.0)
        if trace is not None:
            trace.path.append(facts)
            trace.chosen.append(chosen)
            trace.took_set.append(torch.isin(chosen, ids))
        hit = hit | torch.isin(chosen, ids)
        if decoding is not None and step + 1 < twist.length:
            weights, ancestors = weights.resample_if_needed(ess_threshold, "multinomial", generator, keep)
            if ancestors is not None:
                decoding.select(ancestors)
                chosen, hit, log_psi_prev, eve = (chosen[ancestors], hit[ancestors], log_psi_prev[ancestors],
                                                  eve[ancestors])
                if trace is not None:
                    trace.reindex(ancestors)
            logits = decoding.push(chosen)
            features = decoding.features if twist.reads_features else None
    if trace is not None:
        trace.log_weights = weights.log_weights
    return weights, eve


def smc_run(problem: Problem, twist: GeneratedTwist, inputs: torch.Tensor, ess_threshold: float,
            generator: RandomSource, *, trace: Trace | None = None,
            reference: torch.Tensor | None = None) -> tuple[ParticleWeights, torch.Tensor]:
    """One twisted-SMC run over the generated tokens of the particles ``inputs [K, n]`` (one model call each):
    the final weights and initial ancestors (see :func:`twisted_continuation` for ``trace`` and ``reference``)."""
    k = inputs.shape[0]
    decoding = problem.model.decoding(inputs, twist.length) if twist.length > 1 else None
    logits = problem.model.last_logits(inputs) if decoding is None else decoding.logits
    return twisted_continuation(twist, logits, decoding, ParticleWeights.start(k), torch.arange(k),
                                torch.zeros(k, dtype=torch.float64), ess_threshold, generator, trace=trace,
                                reference=reference)


def rejection_draws(problem: Problem, event: Twist, n: int, generator: RandomSource,
                    reads_features: bool = False) -> tuple[torch.Tensor, Trace]:
    """``n`` inputs x ~ D, each with a continuation drawn from the model (one model call each): the inputs and
    their trace; the hits among them (``event.hits(trace.continuations)``) are exact samples of the posterior
    D(x)·p(y | x)·1[hit] / Z."""
    inputs = problem.distribution.sample(n, generator)
    trace = Trace()
    smc_run(problem, FlatTwist(event, reads_features), inputs, 0.0, generator, trace=trace)
    return inputs, trace


def rejection_positives(problem: Problem, draws: int, seed: int = 0) -> torch.Tensor:
    """Exact samples of the event's posterior by rejection: the hits among ``draws`` inputs x ~ D with a
    continuation drawn from the model each, as ``[hits, n + L]`` rows of input then continuation (the upper bound
    of :meth:`OutputTSMC.bounds` needs them; for a rare event a ground truth's hits are cheaper)."""
    event = Twist.of(problem)
    inputs, trace = rejection_draws(problem, event, draws, torch.Generator().manual_seed(seed))
    continuations = trace.continuations
    hit = event.hits(continuations)
    return torch.cat([inputs, continuations], dim=1)[hit]


def runs_output(name: str, runs: Sequence[ParticleRun], hits: int, particles: int, level: float,
                zero_bound: tuple[float, str], diagnostics: dict[str, Any]) -> EstimatorOutput:
    """The result of independent SMC runs over generated tokens: their size-weighted mean and gamma interval
    (capped at 1), or a clear error when the budget ran out before the first run."""
    if not runs:
        raise LowprobError(f"{name} ran no SMC run; the budget ran out before the first one")
    summary = combine_particle_runs(runs, level, *zero_bound)
    ci = None if summary.low is None or summary.high is None else \
        ConfidenceInterval(low=summary.low, high=min(summary.high, 1.0), level=level, method=summary.method)
    return EstimatorOutput(value=summary.value, std_error=summary.std_error, ci=ci, hits=hits, samples=particles,
                           diagnostics=diagnostics)


@dataclass
class OutputTSMCState:
    """The twist and the finished SMC runs (and, for a learned twist, what building it found)."""

    twist: Twist
    runs: list[ParticleRun] = field(default_factory=list)
    hits: int = 0
    particles: int = 0
    learned: GeneratedTwist | None = None
    built: bool = False
    naive_hits: int = 0
    naive_samples: int = 0
    training: Cost = field(default_factory=Cost)
    info: dict[str, Any] = field(default_factory=dict)


class OutputTSMC(Estimator[OutputTSMCState]):
    """Twisted SMC over generated tokens with a training-free look-ahead twist; unbiased, gamma interval."""

    name = "output-tsmc"
    Options = OutputTSMCOptions
    capabilities = Capabilities(unbiased=True, has_error_bars=True, output_events=True)
    options: OutputTSMCOptions

    def check_problem(self, problem: Problem) -> None:
        super().check_problem(problem)
        Twist.of(problem, self.name)

    def init(self, problem: Problem, generator: torch.Generator) -> OutputTSMCState:
        return OutputTSMCState(Twist.of(problem, self.name))

    def twist(self, state: OutputTSMCState) -> GeneratedTwist:
        """The twist the estimate's runs use."""
        return state.learned if state.learned is not None else state.twist

    def step(self, state: OutputTSMCState, problem: Problem, generator: torch.Generator,
             context: StepContext) -> tuple[OutputTSMCState, StepInfo]:
        if (inputs := context.draw_inputs(problem, self.options.particles, generator)) is None:
            return state, StepInfo(samples=state.particles, done=True)
        weights, eve = smc_run(problem, self.twist(state), inputs, self.options.ess_threshold, generator)
        state.runs.append(ParticleRun.of(weights.log_evidence, weights.log_weights, eve, weights.resamples))
        state.hits += int(torch.isfinite(weights.log_weights).sum()) if not weights.dead else 0
        state.particles += len(inputs)
        summary = combine_particle_runs(state.runs)
        return state, StepInfo(value=summary.value, std_error=summary.std_error, samples=state.particles)

    def zero_bound(self, state: OutputTSMCState, level: float) -> tuple[float, str]:
        """The upper end of the interval when every run died."""
        return 1.0, "every run died: trivial bound 1"

    def result(self, state: OutputTSMCState, problem: Problem, level: float) -> EstimatorOutput:
        bound = LogBound.of([r.log_z for r in state.runs])
        return runs_output(self.name, state.runs, state.hits, state.particles, level, self.zero_bound(state, level),
                           {**state.info, "runs": len(state.runs),
                            "twist": state.info.get("twist", "contains" if state.twist.contains else "fixed"),
                            "mean_log_z": bound.mean if math.isfinite(bound.mean) else None,
                            "zero_runs": bound.zero_runs})

    def bracket_twist(self, problem: Problem, generator: torch.Generator) -> GeneratedTwist:
        """The twist :meth:`bounds` brackets with: the look-ahead twist."""
        return Twist.of(problem, self.name)

    def bounds(self, problem: Problem, positives: torch.Tensor, *, runs: int = 16, particles: int | None = None,
               seed: int = 0) -> LogZBracket:
        """Bidirectional log-Z bounds (Zhao et al. 2024) with this estimator's twist, on the problem's meter:
        the mean log Ẑ of ``runs`` forward runs (≤ log Z) and of one conditional run per exact posterior sample
        in ``positives`` (≥ log Z): rows ``[n + L]`` of a hitting input and its continuation (e.g. from
        :func:`rejection_positives` or a ground truth's hits), or inputs ``[n]`` alone for greedy decoding."""
        self.check_problem(problem)
        event = Twist.of(problem, self.name)
        positives = self._full_positives(problem, event, positives)
        generator = torch.Generator().manual_seed(seed)
        twist = self.bracket_twist(problem, generator)
        k = particles or self.options.particles
        lower = LogBound.of([smc_run(problem, twist, problem.distribution.sample(k, generator),
                                     self.options.ess_threshold, generator)[0].log_evidence for _ in range(runs)])
        n = problem.distribution.length
        upper = []
        for row in positives:
            inputs = problem.distribution.sample(k, generator)
            inputs[0] = row[:n]
            upper.append(smc_run(problem, twist, inputs, self.options.ess_threshold, generator,
                                 reference=row[n:])[0].log_evidence)
        return LogZBracket(lower, LogBound.of(upper))

    @staticmethod
    def _full_positives(problem: Problem, event: Twist, positives: torch.Tensor) -> torch.Tensor:
        """``positives`` as ``[k, n + L]`` hitting rows (a greedy event's continuations regenerated), or an error."""
        n = problem.distribution.length
        if not isinstance(positives, torch.Tensor) or positives.dim() != 2 or positives.shape[0] == 0 \
                or positives.shape[1] not in (n, n + event.length):
            shape = list(positives.shape) if isinstance(positives, torch.Tensor) else type(positives).__name__
            raise LowprobError(f"positives must be a non-empty [k, {n + event.length}] tensor of hitting inputs "
                               f"followed by their continuations, got {shape}")
        positives = positives.long()
        if positives.shape[1] == n:
            if not event.sampling.greedy:
                raise LowprobError(f"positives of {n} tokens (inputs only) need greedy decoding; a sampled event "
                                   f"needs each hitting input followed by its {event.length}-token continuation")
            continuation = problem.model.generate(positives, event.length, event.sampling, torch.Generator())
            positives = torch.cat([positives, continuation.tokens.cpu()], dim=1)
        if not bool(event.hits(positives[:, n:]).all()):
            raise LowprobError("a positive does not hit the event; the upper bound needs exact posterior samples "
                               "(hitting inputs with their continuations)")
        return positives


@hookimpl
def register_estimators(registrar: Registrar) -> None:
    """Register twisted SMC over generated tokens."""
    registrar.add_estimator(OutputTSMC)
