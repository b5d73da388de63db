"""Twisted SMC over generated tokens with a learned twist: contrastive twist learning (Zhao et al. 2024, §4).

For ``contains {set}`` the optimal twist is ψ*_t(x, y_≤t) = Pr[a set token comes | x, y_≤t]. The look-ahead
twist of :mod:`~lowprob.plugins.builtin.output_tsmc` guesses it for a token outside the set as
``1 − (1 − m_t)^r`` (r = L − t − 1 steps left, m_t this step's set mass), i.e. a cumulative future set hazard
``Λ = −r·log(1 − m_t)``. :class:`HazardHead` learns a correction of that hazard from the model's activations:

    log ψ_t(v ∉ set) = log(1 − exp(−Λ · exp(δ_t(f)))),   δ_t(f) = w_t · LN(f) + c_t

where ``f`` is the final LayerNorm's output (TransformerLens ``ln_final.hook_out``) at the last position of
the prefix x, y_<t, which the decoding session computes for the logits anyway (no extra model call). Set tokens
and particles that have hit keep ψ = 1 and the last step keeps the indicator, so the head changes only what is
uncertain. ``w`` and ``c`` start at 0, where the head *is* the look-ahead twist (bit for bit).

Training (:func:`train_head`) minimises the CTL loss ``Σ_t log Z_t(θ) − E_σ[log ψ_t^θ]`` over the steps
t < L − 1: its gradient is ``Σ_t E_{π_t}[∇ log ψ_t] − E_σ[∇ log ψ_t]``, negatives from the populations of SMC
runs with the twist of their time (reweighted to the current one, every next token summed exactly), positives
from exact posterior samples (the hits of plain draws from the model: rejection) and from the final particles of
the SMC runs weighted by their final weights. The head's gradient steps run no model; every model call of
training (the draws and the SMC runs) goes through the meter and is paid from the budget. The estimate then
uses fresh particles with the trained twist frozen, so it is unbiased as for any twist.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from pydantic import Field

from lowprob.core.estimator import Problem, StepContext, StepInfo
from lowprob.core.generation import RandomSource, Sampling
from lowprob.core.smc import normalized_weights
from lowprob.core.stats import clopper_pearson
from lowprob.plugins.builtin.input_smc import RoundReport
from lowprob.plugins.builtin.output_tsmc import (
    FLOOR,
    GeneratedTwist,
    OutputTSMC,
    OutputTSMCOptions,
    OutputTSMCState,
    StepFacts,
    Trace,
    Twist,
    rejection_draws,
    smc_run,
)
from lowprob.plugins.hookspecs import hookimpl
from lowprob.plugins.registry import Registrar

HOOK = "ln_final.hook_out"
"""Where the head reads: the residual stream of the last position after the final LayerNorm."""


class HazardHead(torch.nn.Module):
    """A learned twist over generated tokens (see the module docstring): the look-ahead twist of ``base`` with
    its future set hazard scaled by ``exp(δ_t(f))``, a linear head on the features ``f`` per learnable step."""

    reads_features = True

    def __init__(self, base: Twist, d_model: int) -> None:
        super().__init__()
        self.base = base
        steps = max(base.length - 1, 0)
        self.out = torch.nn.Parameter(torch.zeros(d_model, steps, dtype=torch.float64))
        self.constant = torch.nn.Parameter(torch.zeros(steps, dtype=torch.float64))

    @property
    def length(self) -> int:
        return self.base.length

    @property
    def sampling(self) -> Sampling:
        return self.base.sampling

    @property
    def ids(self) -> tuple[int, ...]:
        return self.base.ids

    def shift(self, step: int, features: torch.Tensor) -> torch.Tensor:
        """δ_t(f) ``[K]`` (float64, differentiable) from features ``[K, d_model]``."""
        x = features.double() - features.double().mean(dim=-1, keepdim=True)
        x = x / torch.sqrt((x**2).mean(dim=-1, keepdim=True) + 1e-5)
        return x @ self.out[:, step] + self.constant[step]

    def log_off(self, step: int, log_miss: torch.Tensor, features: torch.Tensor | None) -> torch.Tensor:
        """``log ψ_t`` of a token outside the set before any hit ``[K]`` (differentiable); the base's at the
        last step."""
        remaining = self.length - step - 1
        if remaining == 0 or features is None:
            return self.base.log_off(step, log_miss)
        scaled = remaining * log_miss * torch.exp(self.shift(step, features))
        return torch.log((-torch.expm1(scaled)).clamp(min=FLOOR))

    def log_psi(self, step: int, log_p: torch.Tensor, hit: torch.Tensor,
                features: torch.Tensor | None = None) -> torch.Tensor:
        with torch.no_grad():
            off = self.log_off(step, self.base.log_miss(log_p), None if features is None else features.cpu())
            return self.base.spread(off, log_p, hit)

    def describe(self) -> dict[str, Any]:
        return {"twist": f"ctl hazard head on {HOOK}", "head_parameters": sum(p.numel() for p in self.parameters()),
                "mean_abs_shift_constant": float(self.constant.detach().abs().mean()) if self.constant.numel()
                else 0.0, "head_weight_norm": float(self.out.detach().norm())}


def _log_normaliser(head: HazardHead, step: int, facts: StepFacts) -> torch.Tensor:
    """``log Σ_v p(v) ψ_t^θ(v)`` per particle ``[K]``: 0 after a hit, else ``log(m + (1 − m)·ψ_off)``."""
    off = head.log_off(step, facts.log_miss, facts.features)
    return torch.where(facts.hit, 0.0, torch.logaddexp(facts.log_mass, facts.log_miss + off))


def _log_chosen(head: HazardHead, step: int, facts: StepFacts, took_set: torch.Tensor) -> torch.Tensor:
    """``log ψ_t^θ`` of each path's chosen token ``[K]``: 0 after a hit or for a set token, else ``ψ_off``."""
    off = head.log_off(step, facts.log_miss, facts.features)
    return torch.where(facts.hit | took_set, 0.0, off)


@dataclass(frozen=True)
class CTLData:
    """One batch of contrastive-twist-learning data: the populations of one run (negatives) and weighted
    positive paths (their facts per step and whether each step took a set token)."""

    entering: Sequence[tuple[StepFacts, torch.Tensor]]
    path: Sequence[StepFacts]
    took_set: Sequence[torch.Tensor]
    weights: torch.Tensor

    @staticmethod
    def of(trace: Trace, weights: torch.Tensor) -> CTLData:
        return CTLData(trace.entering, trace.path, trace.took_set, weights)


def ctl_loss(head: HazardHead, data: CTLData) -> torch.Tensor:
    """``Σ_t [log Ẑ_t(θ) − Σ_k w_k log ψ_t^θ(path_k)] / (L − 1)`` over the learnable steps t < L − 1, where
    ``log Ẑ_t(θ) = logsumexp_n(log W_n − log ψ_{t−1}(x_n) + log Σ_v p(v) ψ_t^θ(x_n, v))`` estimates the log
    normaliser of π_t ∝ p·ψ_t^θ from the population entering step t (drawn with another twist: the recorded
    offset reweights it), so its gradient is E_{π_t}[∇ log ψ_t^θ] (as input-side :func:`ctl_loss`)."""
    steps = min(head.length - 1, len(data.entering), len(data.path))
    total = torch.zeros((), dtype=torch.float64)
    for t in range(steps):
        facts, offset = data.entering[t]
        total = total + torch.logsumexp(offset + _log_normaliser(head, t, facts), dim=0)
        total = total - (data.weights * _log_chosen(head, t, data.path[t], data.took_set[t])).sum()
    return total / max(steps, 1)


def train_head(problem: Problem, head: HazardHead, generator: RandomSource, *, rounds: int, particles: int,
               steps: int, learning_rate: float, weight_decay: float, ess_threshold: float,
               exact: CTLData | None = None) -> list[RoundReport]:
    """Contrastive twist learning: each round runs twisted SMC with the current head (``particles`` model
    calls) and takes ``steps`` Adam steps on the mean :func:`ctl_loss` of every batch with positives so far
    (``exact``: rejection hits, first). ``weight_decay`` pulls the head toward 0, the look-ahead twist."""
    optimizer = torch.optim.Adam(head.parameters(), lr=learning_rate, weight_decay=weight_decay)
    data = [exact] if exact is not None else []
    reports = []
    for _ in range(rounds):
        trace = Trace()
        weights, _ = smc_run(problem, head, problem.distribution.sample(particles, generator), ess_threshold,
                             generator, trace=trace)
        final = normalized_weights(weights.log_weights)
        positive = float(final.sum()) > 0 and len(trace.path) == head.length
        if positive:
            data.append(CTLData.of(trace, final))
        log_z = weights.log_evidence if math.isfinite(weights.log_evidence) else None
        hits = int(torch.isfinite(weights.log_weights).sum()) if positive else 0
        if not data:
            reports.append(RoundReport(None, False, None, None, log_z, weights.min_ess_fraction, hits))
            continue
        losses = []
        for _ in range(steps + 1):
            loss = sum((ctl_loss(head, item) for item in data), torch.zeros((), dtype=torch.float64)) / len(data)
            losses.append(float(loss.detach()))
            if len(losses) > steps:
                break
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        reports.append(RoundReport(None, positive, losses[0], losses[-1], log_z, weights.min_ess_fraction, hits))
    return reports


class OutputTSMCCTLOptions(OutputTSMCOptions):
    """Options of twisted SMC over generated tokens with a twist learned by contrastive twist learning."""

    training_share: float = Field(default=0.25, gt=0, lt=1,
                                  description="largest share of a call budget spent on training rounds")
    naive_share: float = Field(default=0.125, ge=0, lt=0.5,
                               description="share of a call budget spent on plain draws from the model: their hits "
                                           "are exact positives, and they bound a zero estimate")
    rounds: int = Field(default=4, ge=0, description="training rounds (one SMC run of train_particles each)")
    train_particles: int = Field(default=128, ge=1, description="particles of each training SMC run")
    train_steps: int = Field(default=25, ge=1, description="Adam steps per round")
    learning_rate: float = Field(default=0.05, gt=0, description="Adam learning rate")
    weight_decay: float = Field(default=1.0, ge=0, description="L2 pull of the head toward the look-ahead twist")


class OutputTSMCCTL(OutputTSMC):
    """Twisted SMC over generated tokens with a hazard head on the model's activations learned by CTL
    (unbiased: the estimate's runs use fresh particles)."""

    name = "output-tsmc-ctl"
    Options = OutputTSMCCTLOptions
    options: OutputTSMCCTLOptions

    def step(self, state: OutputTSMCState, problem: Problem, generator: torch.Generator,
             context: StepContext) -> tuple[OutputTSMCState, StepInfo]:
        if not state.built:
            before = problem.model.cost
            self.build(state, problem, generator, context.allowance)
            spent = (problem.model.cost - before).model_calls(context.backward_weight)
            context = replace(context, allowance=context.allowance - spent)
        return super().step(state, problem, generator, context)

    def build(self, state: OutputTSMCState, problem: Problem, generator: RandomSource, allowance: float) -> None:
        """Plain draws, then CTL rounds within their shares of ``allowance`` model calls; the learned twist (or
        the look-ahead one, saying why) goes into ``state``."""
        opts, event = self.options, state.twist
        start = problem.model.cost
        state.built = True
        why = self._nothing_to_learn(event)
        finite = math.isfinite(allowance)
        draws = int(opts.naive_share * allowance) if finite else 0
        exact = None
        if draws and why is None:
            inputs, trace = rejection_draws(problem, event, draws, generator, reads_features=True)
            hit = event.hits(trace.continuations)
            state.naive_hits, state.naive_samples = int(hit.sum()), draws
            if state.naive_hits:
                exact = CTLData(trace.entering, trace.path, trace.took_set, hit.double() / float(hit.sum()))
        rounds = opts.rounds if not finite else min(opts.rounds, int(opts.training_share * allowance
                                                                     // opts.train_particles))
        if why is None and rounds == 0:
            why = "no training round fits the budget"
        reports: list[RoundReport] = []
        if why is None:
            head = HazardHead(event, problem.model.d_model)
            reports = train_head(problem, head, generator, rounds=rounds, particles=opts.train_particles,
                                 steps=opts.train_steps, learning_rate=opts.learning_rate,
                                 weight_decay=opts.weight_decay, ess_threshold=opts.ess_threshold, exact=exact)
            state.learned = head
            state.info = head.describe()
        else:
            state.info = {"twist": "look-ahead", "fallback": f"{why}: look-ahead twist"}
        state.training = problem.model.cost - start
        state.info.update({"rounds": len(reports), "rounds_without_positives": sum(not r.positives for r in reports),
                           "ctl_loss": [[r.loss_before, r.loss_after] for r in reports],
                           "training_hits": [r.hits for r in reports], "naive_hits": state.naive_hits,
                           "naive_samples": state.naive_samples,
                           "training_calls": state.training.forward_passes})

    @staticmethod
    def _nothing_to_learn(event: Twist) -> str | None:
        """Why the head would have nothing to learn for ``event``, or ``None``."""
        if not event.contains:
            return "a fixed continuation's twist is already exact given the input"
        if event.length < 2:
            return "a one-token event's only twist is the indicator"
        if event.sampling.greedy:
            return "greedy decoding gives the set a mass of 0 or 1 at each step"
        return None

    def zero_bound(self, state: OutputTSMCState, level: float) -> tuple[float, str]:
        if state.naive_samples:
            return (clopper_pearson(state.naive_hits, state.naive_samples, level)[1],
                    f"every run died: Clopper-Pearson bound from {state.naive_samples} plain draws")
        return super().zero_bound(state, level)

    def bracket_twist(self, problem: Problem, generator: torch.Generator) -> GeneratedTwist:
        """The learned twist, trained with the default rounds (no budget limit, on the problem's meter)."""
        state = self.init(problem, generator)
        self.build(state, problem, generator, math.inf)
        return self.twist(state)


@hookimpl
def register_estimators(registrar: Registrar) -> None:
    """Register twisted SMC over generated tokens with a CTL-learned twist."""
    registrar.add_estimator(OutputTSMCCTL)
