"""MHIS: Metropolis–Hastings importance sampling (Wu & Hilton 2025, §5.4).

Independent chains target ``π(x) ∝ D(x) · exp(s(x)/T)`` with a single-site, gradient-informed proposal and an
exact MH correction, each started at an importance-resampled draw of π (one of ``init_candidates`` draws from D
picked with probability ∝ e^{s/T}, so burn-in starts near π rather than at D); ``p`` is the self-normalised
average ``Σ y e^{−s/T} / Σ e^{−s/T}`` over recorded states. Consistent, not unbiased (a ratio estimate from
correlated samples).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from pydantic import Field

from lowprob.core.budget import Budget
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
from lowprob.core.random import integers, uniform
from lowprob.core.stats import clopper_pearson, normal_interval
from lowprob.plugins.builtin.token_scores import sample_rows, tilted_log_probs
from lowprob.plugins.hookspecs import hookimpl
from lowprob.plugins.registry import Registrar

PAPER_CHAINS, PAPER_BURN_IN, PAPER_RECORDED_STEPS = 32, 2**10, 2**11
"""The paper's setting: 32 chains, 2^10 burn-in steps, then 2^11 recorded steps (2^16 recorded states)."""

START_BATCH = 512
"""Initial candidates evaluated per forward batch."""

RHAT_LIMIT = 1.1
"""Split-R̂ of the recorded target scores above which the run warns that its chains have not mixed (the classic
Gelman–Rubin threshold; measured on docs/estimators/mhis.md: ≤ 1.08 on mixed toy runs, 1.7–2.1 on lowprob-1l
runs with burn_in = 32 whose estimates were 0–6 % of the truth)."""


class MHISOptions(EstimatorOptions):
    """Options of MHIS."""

    temperature: float = Field(default=1.0, gt=0, description="T: chains target D(x)·exp(s(x)/T)")
    chains: int = Field(default=PAPER_CHAINS, ge=2, description="independent chains, advanced together")
    burn_in: int = Field(default=PAPER_BURN_IN, ge=0, description="steps per chain discarded before recording")
    init_candidates: int = Field(default=16, ge=1,
                                 description="draws from D per chain (forward passes only) among which its start "
                                             "is picked ∝ e^{s/T} (1: start at a draw from D)")


@dataclass(frozen=True)
class Chains:
    """The chains' current states: tokens ``[C, k]``, target score ``s``, hits and the target score's gradient
    with respect to the token embeddings ``[C, k, d_model]`` (a row of token scores ``G`` is ``grad @ W_E.T``,
    computed only for the position a step resamples)."""

    tokens: torch.Tensor
    score: torch.Tensor
    hit: torch.Tensor
    grads: torch.Tensor

    @staticmethod
    def evaluate(tokens: torch.Tensor, problem: Problem) -> Chains:
        """Score, hit and gradients at ``tokens`` (one forward and one backward pass per chain)."""
        logits, grads = problem.model.embedding_gradients(tokens, problem.target)
        logits = logits.cpu().to(torch.float64)
        ids = torch.tensor(problem.target.token_ids)
        return Chains(tokens, torch.logsumexp(logits[:, ids], dim=1), problem.target.hits(logits),
                      grads.cpu().to(torch.float64))


@dataclass(frozen=True)
class Tally:
    """Per-chain log-sums over recorded states of ``w = e^{−s/T}``, ``w·y``, ``w²`` and ``w²·y``."""

    log_w: torch.Tensor
    log_wy: torch.Tensor
    log_w2: torch.Tensor
    log_w2y: torch.Tensor

    @staticmethod
    def empty(chains: int) -> Tally:
        return Tally(*(torch.full((chains,), -math.inf, dtype=torch.float64) for _ in range(4)))

    def add(self, log_weight: torch.Tensor, hit: torch.Tensor) -> Tally:
        on_hit = torch.where(hit, 0.0, -math.inf)
        return Tally(torch.logaddexp(self.log_w, log_weight),
                     torch.logaddexp(self.log_wy, log_weight + on_hit),
                     torch.logaddexp(self.log_w2, 2 * log_weight),
                     torch.logaddexp(self.log_w2y, 2 * log_weight + on_hit))


@dataclass(frozen=True)
class RatioSummary:
    """The self-normalised estimate, its across-chain standard error, and the i.i.d.-equivalent variance."""

    value: float
    std_error: float
    iid_variance: float

    @staticmethod
    def of(tally: Tally) -> RatioSummary:
        """Chains are independent, so their sums ``(A_c, B_c)`` are i.i.d.: delta-method s.e. of ``ΣA/ΣB``."""
        shift = float(tally.log_w.max())
        a, b = (tally.log_wy - shift).exp(), (tally.log_w - shift).exp()
        value = float(a.sum() / b.sum())
        c = a.numel()
        residual = a - value * b
        std_error = math.sqrt(float((residual**2).sum()) * c / (c - 1)) / float(b.sum())
        # Σ w²(y − p̂)² / (Σ w)²: the variance the same ratio would have from independent draws of π
        w2y, w2 = (tally.log_w2y - 2 * shift).exp().sum(), (tally.log_w2 - 2 * shift).exp().sum()
        iid_variance = float(((1 - 2 * value) * w2y + value**2 * w2) / b.sum() ** 2)
        return RatioSummary(value, std_error, iid_variance)


@dataclass(frozen=True)
class MHISState:
    """Chains (``None`` before the initial states are drawn), the recorded tally, step counts and the hits
    among the initial candidates (independent draws from D, so they bound p when no recorded state hits)."""

    log_d: torch.Tensor
    chains: Chains | None = None
    initial_hits: int = 0
    initial_draws: int = 0
    tally: Tally | None = None
    recorded_scores: tuple[torch.Tensor, ...] = ()
    steps: int = 0
    accepted: int = 0
    proposals: int = 0
    hits: int = 0
    samples: int = 0


class MHIS(Estimator[MHISState]):
    """Independent MH chains on D·exp(s/T), reweighted by e^{−s/T} and self-normalised (consistent, biased)."""

    name = "mhis"
    Options = MHISOptions
    capabilities = Capabilities(unbiased=False, consistent=True, has_error_bars=True, needs_gradients=True,
                                needs_factorized=True)
    options: MHISOptions

    @classmethod
    def paper_budget(cls) -> Budget:
        """The paper's MHIS accounting: 32 initial states, 2^10 burn-in and 2^11 recorded steps of 32 chains
        (98,336 forward+backward passes), backward passes not charged."""
        calls = PAPER_CHAINS * (1 + PAPER_BURN_IN + PAPER_RECORDED_STEPS)
        return Budget(model_calls=calls, backward_weight=0.0)

    def start_calls(self) -> int:
        """Forward passes over the initial candidates beyond the chains' own first evaluation."""
        k = self.options.init_candidates
        return self.options.chains * k if k > 1 else 0

    def min_step_calls(self, backward_weight: float) -> float:
        """The initial candidates and states, the burn-in and one recorded step of every chain: less cannot
        estimate."""
        return self.start_calls() + self.options.chains * (1.0 + backward_weight) * (self.options.burn_in + 2)

    def budget_advice(self, model_calls: float, backward_weight: float) -> str:
        """The largest ``burn_in`` (at these chains) and ``chains`` (at this burn-in) that fit ``model_calls``."""
        chains, burn_in = self.options.chains, self.options.burn_in
        per_chain_step = 1.0 + backward_weight
        per_chain_start = self.start_calls() / chains
        fixes = []
        # the initial state and the moves per chain
        steps = int((model_calls - self.start_calls()) // (chains * per_chain_step))
        if steps >= 2:
            fixes.append(f"lower burn_in to at most {steps - 2} (burn_in={steps - 2} with chains={chains})")
        fewer = int(model_calls // (per_chain_step * (burn_in + 2) + per_chain_start))
        if fewer >= 2:
            fixes.append(f"lower chains to at most {fewer} (chains={fewer} with burn_in={burn_in})")
        fixes.append(f"give it at least {math.ceil(self.min_step_calls(backward_weight))} model calls")
        return (", or ".join(fixes) + "; a burn-in shorter than the chains need to mix biases MHIS low "
                "(docs/estimators/mhis.md)")

    def init(self, problem: Problem, generator: torch.Generator) -> MHISState:
        return MHISState(log_d=problem.distribution.dense_log_probs())

    def step(self, state: MHISState, problem: Problem, generator: torch.Generator,
             context: StepContext) -> tuple[MHISState, StepInfo]:
        """Draw the initial states (first step) or move every chain once; stop when all chains cannot move."""
        c = self.options.chains
        start = self.start_calls() if state.chains is None else 0
        if context.allowance < start or context.affordable(1.0 + context.backward_weight, c) < c:
            return state, StepInfo(samples=state.samples, done=True)
        if state.chains is None:
            tokens, hits, draws = self._starts(problem, generator)
            initial = Chains.evaluate(tokens, problem)
            hits = hits if draws else int(initial.hit.sum())
            return replace(state, chains=initial, initial_hits=hits, initial_draws=draws or c), StepInfo()
        chains, accepted = self._move(state.log_d, state.chains, problem, generator)
        new = replace(state, chains=chains, steps=state.steps + 1, accepted=state.accepted + accepted,
                      proposals=state.proposals + c)
        if new.steps <= self.options.burn_in:
            return new, StepInfo()
        tally = (state.tally or Tally.empty(c)).add(-chains.score / self.options.temperature, chains.hit)
        new = replace(new, tally=tally, hits=state.hits + int(chains.hit.sum()), samples=state.samples + c,
                      recorded_scores=(*state.recorded_scores, chains.score))
        summary = RatioSummary.of(tally)
        return new, StepInfo(value=summary.value, std_error=summary.std_error if new.hits else None,
                             samples=new.samples)

    def _starts(self, problem: Problem, generator: torch.Generator) -> tuple[torch.Tensor, int, int]:
        """Each chain's start: one of ``init_candidates`` draws from D picked ∝ e^{s/T} (sampling-importance-
        resampling toward π, forward passes only), with the candidates' hits and number (0: no candidates)."""
        c, k = self.options.chains, self.options.init_candidates
        if k == 1:
            return problem.distribution.sample(c, generator), 0, 0
        candidates = problem.distribution.sample(c * k, generator)
        ids = torch.tensor(problem.target.token_ids)
        scores, hits = [], 0
        for i in range(0, c * k, START_BATCH):
            logits = problem.model.last_logits(candidates[i:i + START_BATCH]).cpu().to(torch.float64)
            scores.append(torch.logsumexp(logits[:, ids], dim=1))
            hits += int(problem.target.hits(logits).sum())
        log_w = (torch.cat(scores) / self.options.temperature).reshape(c, k)
        pick = sample_rows(log_w - torch.logsumexp(log_w, dim=1, keepdim=True), 1, generator)[0]
        return candidates.reshape(c, k, -1)[torch.arange(c), pick], hits, c * k

    def _move(self, log_d: torch.Tensor, chains: Chains, problem: Problem,
              generator: torch.Generator) -> tuple[Chains, int]:
        """One MH step per chain: resample one uniformly chosen position from φ_i(·|x), accept exactly."""
        temperature = self.options.temperature
        c, k = chains.tokens.shape
        rows = torch.arange(c)
        position = integers(k, (c,), generator)
        w_e = problem.model.W_E.T.cpu().to(torch.float64)
        log_phi = tilted_log_probs(log_d[position], chains.grads[rows, position] @ w_e, temperature)
        new_token = sample_rows(log_phi, 1, generator)[0]
        old_token = chains.tokens[rows, position]
        tokens = chains.tokens.clone()
        tokens[rows, position] = new_token
        proposed = Chains.evaluate(tokens, problem)
        log_phi_back = tilted_log_probs(log_d[position], proposed.grads[rows, position] @ w_e, temperature)
        log_alpha = ((proposed.score - chains.score) / temperature
                     + log_d[position, new_token] - log_d[position, old_token]
                     + log_phi_back[rows, old_token] - log_phi[rows, new_token])
        log_u = uniform((c,), generator, torch.float64).log()
        accept = log_u < log_alpha
        keep = ~accept
        moved = Chains(*(torch.where(_expand(keep, new), old, new) for old, new in
                         ((chains.tokens, proposed.tokens), (chains.score, proposed.score),
                          (chains.hit, proposed.hit), (chains.grads, proposed.grads))))
        return moved, int(accept.sum())

    def result(self, state: MHISState, problem: Problem, level: float) -> EstimatorOutput:
        if state.tally is None:
            raise LowprobError(
                f"mhis recorded no states: the run ended after {state.steps} of {self.options.burn_in} burn-in "
                "steps; give it a larger budget or a smaller burn_in")
        summary = RatioSummary.of(state.tally)
        rhat = split_rhat(torch.stack(state.recorded_scores))
        diagnostics: dict[str, object] = {
            "consistent_not_unbiased": True,
            "acceptance_rate": state.accepted / state.proposals,
            "steps": state.steps,
            "split_rhat": rhat,
            "initial_hits": state.initial_hits,
            "initial_draws": state.initial_draws,
            "std_error_method": "delta method over the independent chains' ratio sums",
        }
        warnings = [] if rhat is None or rhat <= RHAT_LIMIT else [
            f"the chains have not mixed (split-R̂ of the target score {rhat:.2f} > {RHAT_LIMIT}): the estimate is "
            f"likely far too low, so the interval is the wide exact one of the initial draws from D; raise burn_in "
            f"(now {self.options.burn_in}) and the budget, see docs/estimators/mhis.md"]
        if not state.hits:
            # No recorded state hit. MCMC gives no bound on what it never visited, but the initial candidates are
            # independent draws from D: their exact Clopper–Pearson bound holds (weak: chains × init_candidates).
            high = clopper_pearson(state.initial_hits, state.initial_draws, level)[1]
            ci = ConfidenceInterval(low=0.0, high=high, level=level,
                                    method=f"clopper-pearson on the chains' {state.initial_draws} initial draws from D "
                                           "(no recorded hit)")
            return EstimatorOutput(value=0.0, std_error=None, ci=ci, hits=0, samples=state.samples,
                                   diagnostics=diagnostics, warnings=warnings)
        autocorrelation_time = summary.std_error**2 / summary.iid_variance if summary.iid_variance > 0 else None
        diagnostics["autocorrelation_time"] = autocorrelation_time
        diagnostics["effective_sample_size"] = (state.samples / autocorrelation_time
                                                if autocorrelation_time else None)
        if warnings:
            # Chains that have not mixed make the delta-method interval far too narrow (issue 13: 0-7 % coverage).
            # The initial candidates are independent draws from D: their exact interval holds whatever the chains
            # did; it is widened to hold the estimate.
            cp_low, cp_high = clopper_pearson(state.initial_hits, state.initial_draws, level)
            ci = ConfidenceInterval(low=min(cp_low, summary.value), high=max(cp_high, summary.value), level=level,
                                    method=f"clopper-pearson on the chains' {state.initial_draws} initial draws from "
                                           f"D (not mixed: split-R̂ {rhat:.2f}; the chains' interval would not cover)")
        else:
            low, high = normal_interval(summary.value, summary.std_error, level)
            ci = ConfidenceInterval(low=low, high=high, level=level, method="normal (delta method over chains)")
        return EstimatorOutput(
            value=summary.value,
            std_error=summary.std_error,
            ci=ci,
            hits=state.hits,
            samples=state.samples,
            diagnostics=diagnostics,
            warnings=warnings,
        )


def split_rhat(draws: torch.Tensor) -> float | None:
    """Split-R̂ (Gelman et al.; Vehtari et al. 2021) of recorded draws ``[steps, chains]``: each chain's first
    and second halves as separate chains; ≈ 1 when they agree, above it while the chains still drift (burn-in
    too short) or disagree (poor mixing). ``None`` with fewer than 4 steps or no within-half variation."""
    half = draws.shape[0] // 2
    if half < 2:
        return None
    split = torch.cat([draws[:half], draws[half:2 * half]], dim=1).double()
    within = float(split.var(dim=0).mean())
    if within <= 0:
        return None
    between = half * float(split.mean(dim=0).var())
    return math.sqrt(((half - 1) / half * within + between / half) / within)


def _expand(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``mask`` ``[C]`` broadcastable against ``like`` ``[C, ...]``."""
    return mask.reshape(-1, *([1] * (like.dim() - 1)))


@hookimpl
def register_estimators(registrar: Registrar) -> None:
    """Register the built-in MHIS estimator."""
    registrar.add_estimator(MHIS)
