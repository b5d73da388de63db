"""Joint twisted SMC: one particle system that walks the input positions of D and then the generated tokens.

Z = Σ_x D(x)·Pr[hit | x] for an output event. A particle is a prefix of the input, grown one non-constant position
p_j at a time (x_{p_j} ~ D_j), then a continuation grown as in :mod:`~lowprob.plugins.builtin.output_tsmc`. The
input steps target π_j ∝ D(x_{≤p_j})·ψ_j(x_{≤p_j}) with the proposal D_j, so the incremental weight of input
step j is ``ψ_j / ψ_{j−1}`` (ψ_{−1} = 1), and the generated steps start from ψ_{m−1}(x) of the whole input in
place of 1; the product of the mean weights is unbiased for Z for any input twist that is positive (Del Moral
2004). The input twist, with no training, is the output twist's own normaliser read at the prefix: with ``p`` the
model's next-token distribution after the prefix (the input up to the next random position), ``ψ(prefix) =
Σ_y p(y)·ψ^out_1(y)`` (``contains``: ``1 − (1 − m)^L`` for the set's mass m; ``==``: the probability of the first
token), floored at :data:`~lowprob.plugins.builtin.output_tsmc.FLOOR`. At the whole input it is exactly the
generated steps' first normaliser, so the first generated step's weight is 1; at a shorter prefix it reads the
model's next-token distribution there as if the continuation began at once, under the event's temperature without
its top-k or argmax (which say little about the end's). A twist of a candidate token is known only after a pass
over it, so the input proposal is D itself; the twist acts through the weights and resampling.

``input_twist="final"`` (the default) twists only the whole input (ψ_j = 1 before it): the inputs are drawn from
D, reweighted by ψ_{m−1}(x) and resampled, then continued; the session then opens on the whole input at once.
``"prefix"`` twists every prefix, walking the input through the key/value cache one position at a time; measured
on lowprob-1l it loses (docs/estimators/joint-tsmc.md). Each SMC run is one decoding session of ``particles``
sequences over input and continuation (one model call each, the cost of generating the continuation); runs
repeat until the budget is spent and combine as replicates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
from pydantic import Field

from lowprob.core.errors import LowprobError
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
from lowprob.core.random import categorical
from lowprob.core.smc import ParticleRun, ParticleWeights, combine_particle_runs
from lowprob.plugins.builtin.output_tsmc import FLOOR, Twist, runs_output, twisted_continuation
from lowprob.plugins.builtin.twists import Layout
from lowprob.plugins.hookspecs import hookimpl
from lowprob.plugins.registry import Registrar

InputTwist = Literal["prefix", "final"]


class JointTSMCOptions(EstimatorOptions):
    """Options of joint (input + generated tokens) twisted SMC."""

    particles: int = Field(default=256, ge=1, description="particles (input + continuation) per SMC run")
    ess_threshold: float = Field(default=0.5, ge=0.0, le=1.0,
                                 description="resample (multinomially) when ESS < this × particles")
    input_twist: InputTwist = Field(default="final",
                                    description="twist only the whole input ('final': inputs drawn from D, "
                                                "reweighted by the look-ahead) or every input prefix ('prefix')")


def log_lookahead(twist: Twist, logits: torch.Tensor, sampling: Sampling) -> torch.Tensor:
    """``log Σ_y p(y)·ψ^out_1(y)`` ``[K]`` (float64, floored at log FLOOR): the first generated step's normaliser
    if the continuation began after these next-token ``logits [K, V]``, ``p`` under ``sampling``."""
    log_p = sampling.log_probs(logits).double().cpu()
    no_hit = torch.zeros(log_p.shape[0], dtype=torch.bool)
    return torch.logsumexp(log_p + twist.log_psi(0, log_p, no_hit), dim=1).clamp(min=math.log(FLOOR))


def prefix_sampling(sampling: Sampling) -> Sampling:
    """The distribution an input prefix's twist reads: the event's temperature without top-k (greedy: 1)."""
    return Sampling.sample(1.0 if sampling.greedy else sampling.temperature)


@dataclass
class JointTSMCState:
    """The twist, the input layout and the finished SMC runs."""

    twist: Twist
    layout: Layout
    runs: list[ParticleRun] = field(default_factory=list)
    hits: int = 0
    particles: int = 0
    input_resamples: int = 0


class JointTSMC(Estimator[JointTSMCState]):
    """Twisted SMC over the input positions and then the generated tokens; unbiased, gamma interval."""

    name = "joint-tsmc"
    Options = JointTSMCOptions
    capabilities = Capabilities(unbiased=True, has_error_bars=True, needs_factorized=True, output_events=True)
    options: JointTSMCOptions

    def check_problem(self, problem: Problem) -> None:
        super().check_problem(problem)
        twist = Twist.of(problem, self.name)
        n = problem.distribution.length
        if self.options.input_twist == "prefix" and n + twist.length > problem.model.n_ctx:
            raise LowprobError(f"joint-tsmc with input_twist='prefix' walks the input through a decoding session, "
                               f"which needs room for the continuation: {n} input tokens and {twist.length} "
                               f"generated exceed the model's context of {problem.model.n_ctx}; use "
                               "input_twist='final'")

    def init(self, problem: Problem, generator: torch.Generator) -> JointTSMCState:
        return JointTSMCState(Twist.of(problem, self.name), Layout.of(problem.distribution))

    def step(self, state: JointTSMCState, problem: Problem, generator: torch.Generator,
             context: StepContext) -> tuple[JointTSMCState, StepInfo]:
        k = context.affordable(1.0, self.options.particles)
        if k == 0:
            return state, StepInfo(samples=state.particles, done=True)
        run, hits, resamples = self._run(state, problem, k, generator)
        state.runs.append(run)
        state.hits += hits
        state.particles += k
        state.input_resamples += resamples
        summary = combine_particle_runs(state.runs)
        return state, StepInfo(value=summary.value, std_error=summary.std_error, samples=state.particles)

    def _run(self, state: JointTSMCState, problem: Problem, k: int,
             generator: RandomSource) -> tuple[ParticleRun, int, int]:
        """One SMC run of ``k`` particles: its replicate summary, how many final particles hit, and how often it
        resampled during the input walk."""
        twist, layout = state.twist, state.layout
        n, m = layout.template.numel(), layout.steps
        walk = self.options.input_twist == "prefix" and m > 0
        if walk:  # the session opens once the first random token is drawn
            tokens = layout.fill(k)
            tokens[:, layout.positions[0]] = self._draw(layout, 0, k, generator)
        else:  # the whole input from D, as output-tsmc draws it (the same seed gives the same inputs)
            tokens = problem.distribution.sample(k, generator)
        start = layout.positions[0] + 1 if walk else n
        decoding = None  # a one-token event on the whole input needs only the input's pass, as in output-tsmc
        if walk or twist.length > 1:
            decoding = problem.model.decoding(tokens[:, :start], n - start + twist.length, walked=n - start)
        logits = problem.model.last_logits(tokens) if decoding is None else decoding.logits
        weights, eve = ParticleWeights.start(k), torch.arange(k)
        log_psi = torch.zeros(k, dtype=torch.float64)
        ends = [p - 1 for p in layout.positions[1:]] + [n - 1]  # ψ_j reads the logits just before x_{p_{j+1}}
        done = start - 1
        for j in range(m) if walk else range(max(m - 1, 0), m):  # the steps whose twist is read
            if walk and j:
                tokens[:, layout.positions[j]] = self._draw(layout, j, k, generator)
            while done < ends[j]:  # only when walking, so with a session
                done += 1
                assert decoding is not None
                logits = decoding.push(tokens[:, done])
            last = j == m - 1
            new = log_lookahead(twist, logits, twist.sampling if last else prefix_sampling(twist.sampling))
            weights, log_psi = weights.reweight(new - log_psi), new
            weights, ancestors = weights.resample_if_needed(self.options.ess_threshold, "multinomial", generator)
            if ancestors is not None:
                if decoding is not None:
                    decoding.select(ancestors)
                logits = logits[ancestors] if decoding is None else decoding.logits
                tokens, log_psi, eve = tokens[ancestors], log_psi[ancestors], eve[ancestors]
        input_resamples = weights.resamples
        weights, eve = twisted_continuation(twist, logits, decoding, weights, eve, log_psi,
                                            self.options.ess_threshold, generator)
        run = ParticleRun.of(weights.log_evidence, weights.log_weights, eve, weights.resamples)
        hits = int(torch.isfinite(weights.log_weights).sum()) if not weights.dead else 0
        return run, hits, input_resamples

    @staticmethod
    def _draw(layout: Layout, j: int, k: int, generator: RandomSource) -> torch.Tensor:
        """``k`` draws of input step j's token from D_j (token ids)."""
        return layout.supports[j][categorical(layout.log_d[j].exp().expand(k, -1), 1, generator)[:, 0]]

    def result(self, state: JointTSMCState, problem: Problem, level: float) -> EstimatorOutput:
        return runs_output(self.name, state.runs, state.hits, state.particles, level,
                           (1.0, "every run died: trivial bound 1"),
                           {"runs": len(state.runs), "twist": "contains" if state.twist.contains else "fixed",
                            "input_twist": self.options.input_twist, "input_steps": state.layout.steps,
                            "input_resamples": state.input_resamples})


@hookimpl
def register_estimators(registrar: Registrar) -> None:
    """Register joint twisted SMC over input positions and generated tokens."""
    registrar.add_estimator(JointTSMC)
