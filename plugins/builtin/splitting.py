"""Multilevel splitting over whole inputs: ``ams`` (adaptive multilevel splitting, kill the k lowest) and
``subset-simulation`` (a fixed conditional probability p0 per level), with MCMC moves inside each level.

A ladder holds N replicas x ~ D ranked by a registered score ξ (:mod:`lowprob.plugins.scoring`; every hit counts
as ξ = +∞). Each level Z kills every replica with ξ ≤ Z — ties included, as discrete scores require (Walter 2015;
Bréhier et al. 2016) — and refills the population from the survivors with a Metropolis–Hastings kernel that leaves
D restricted to {ξ > Z} invariant; when all N tie below the event it kills none and moves them all inside the
previous level instead (up to :data:`TIE_MIXES` rounds, then the ladder stalls at 0). The estimate is
Π_j (1 − K_j/N) × (hits/N) once the level reaches the event; ladders repeat until the budget is spent and are
averaged, with Cox's lognormal interval over them. Consistent as N grows under good mixing, not unbiased.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, model_validator
from scipy import stats

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
from lowprob.core.random import Enumerator, integers, uniform
from lowprob.core.stats import clopper_pearson
from lowprob.plugins.builtin.scores import BUILTIN_SCORES
from lowprob.plugins.builtin.token_scores import sample_rows, tilted_log_probs
from lowprob.plugins.hookspecs import hookimpl
from lowprob.plugins.registry import Registrar, Registry
from lowprob.plugins.scoring import Score, ScoreBuilder

PILOT_SHARE = 0.25
"""Largest share of a call budget a score's pilot may spend (the ``twist`` score's gradient fit)."""
LEVEL_DETAIL_LADDERS = 4
"""Ladders (or GAMS runs) whose every level goes into the diagnostics; the others are summarised per ladder, so a
results row stays small (26 GAMS runs of ~100 levels each made 380 kB rows)."""
LOG_FLOAT_MAX = math.log(sys.float_info.max)
"""Largest ``x`` whose ``e^x`` is a finite float (about 709.78)."""
TIE_MIXES = 3
"""Rounds of MCMC moves at the previous level a ladder tries when all N replicas tie below the event, before it
stalls (each round moves every replica and kills none)."""

Proposal = Literal["prior", "gradient"]


class SplittingOptions(EstimatorOptions):
    """Options shared by the splitting estimators."""

    replicas: int = Field(default=100, ge=2, description="N: replicas per ladder")
    score: str = Field(default="margin", description="registered score function ξ (margin, twist, ...)")
    pilot: int = Field(default=256, ge=0, description="draws from D with gradients a score may fit on (twist)")


class LadderOptions(SplittingOptions):
    """Options of the MCMC-based ladders (``ams``, ``subset-simulation``)."""

    proposal: Proposal = Field(default="prior",
                               description="single-site proposal: D's own marginal, or D tilted by token gradients")
    temperature: float = Field(default=1.0, gt=0, description="T of the gradient proposal D·exp(G/T)")
    ladders: int | None = Field(default=None, ge=1, description="most ladders to run (None: until the budget ends)")

    @model_validator(mode="after")
    def _temperature_needs_gradients(self) -> LadderOptions:
        # A temperature that changes nothing is a trap (and makes a tuning grid spend compute on identical runs).
        if self.temperature != 1.0 and self.proposal != "gradient":
            raise ValueError(f"temperature = {self.temperature:g} acts only with proposal = 'gradient' "
                             f"(proposal is {self.proposal!r}); set proposal = 'gradient' or leave temperature out")
        return self


class AMSOptions(LadderOptions):
    """Options of adaptive multilevel splitting."""

    kill: int = Field(default=10, ge=1, description="k: each level kills the k lowest replicas and all ties")
    mcmc_steps: int = Field(default=5, ge=1, description="MCMC steps of every clone after each level")


class SubsetSimulationOptions(LadderOptions):
    """Options of subset simulation."""

    replicas: int = Field(default=500, ge=2, description="N: replicas per ladder (N·p0 chains per level)")
    p0: float = Field(default=0.1, gt=0, lt=1, description="conditional probability aimed at per level")


@dataclass(frozen=True)
class Replicas:
    """Whole inputs ``tokens`` ``[n, length]`` with their score ξ (+∞ on hits), hits and, for gradient proposals,
    the target score's gradient with respect to the token embeddings ``[n, length, d_model]``."""

    tokens: torch.Tensor
    score: torch.Tensor
    hit: torch.Tensor
    grads: torch.Tensor | None = None

    def take(self, index: torch.Tensor) -> Replicas:
        return Replicas(self.tokens[index], self.score[index], self.hit[index],
                        None if self.grads is None else self.grads[index])

    def where(self, mask: torch.Tensor, other: Replicas) -> Replicas:
        """``other`` where ``mask`` is true, else ``self``, row by row."""
        def pick(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return torch.where(mask.reshape(-1, *([1] * (a.dim() - 1))), b, a)
        grads = None if self.grads is None or other.grads is None else pick(self.grads, other.grads)
        return Replicas(pick(self.tokens, other.tokens), pick(self.score, other.score), pick(self.hit, other.hit),
                        grads)

    @staticmethod
    def cat(parts: Sequence[Replicas]) -> Replicas:
        grads = None if any(p.grads is None for p in parts) else torch.cat([p.grads for p in parts])  # type: ignore[misc]
        return Replicas(torch.cat([p.tokens for p in parts]), torch.cat([p.score for p in parts]),
                        torch.cat([p.hit for p in parts]), grads)

    @property
    def size(self) -> int:
        return int(self.score.numel())


class Evaluator:
    """Scores whole inputs through the metered model: one forward pass each, plus one backward with gradients."""

    def __init__(self, problem: Problem, score: Score, gradients: bool) -> None:
        self.problem = problem
        self.score = score
        self.gradients = gradients

    def calls(self, backward_weight: float) -> float:
        """Model calls per evaluated input."""
        return 1.0 + (backward_weight if self.gradients else 0.0)

    def __call__(self, tokens: torch.Tensor) -> Replicas:
        model, target = self.problem.model, self.problem.target
        grads = None
        if self.gradients:
            logits, grads = model.embedding_gradients(tokens, target)
            grads = grads.cpu().to(torch.float64)
        else:
            logits = model.last_logits(tokens)
        logits = logits.cpu()
        hit = target.hits(logits)
        score = self.score.complete(tokens, logits).to(torch.float64)
        if torch.isnan(score).any():
            raise LowprobError("the score function returned NaN")
        return Replicas(tokens, torch.where(hit, math.inf, score), hit, grads)


class LevelKernel:
    """Single-site Metropolis–Hastings moves invariant for D restricted to {ξ > level}: pick a non-constant
    position uniformly, propose a token from D's marginal there (``prior``) or from D tilted by the current token
    gradients (``gradient``, with the exact Hastings correction); reject any proposal with ξ ≤ level."""

    def __init__(self, log_d: torch.Tensor, w_e: torch.Tensor | None, temperature: float) -> None:
        self.log_d = log_d
        self.positions = torch.tensor([i for i in range(log_d.shape[0]) if int(torch.isfinite(log_d[i]).sum()) > 1],
                                      dtype=torch.int64)
        self.w_e = w_e
        self.temperature = temperature

    def proposal(self, replicas: Replicas, position: torch.Tensor) -> torch.Tensor:
        """``log φ`` ``[n, vocab]`` of each replica's proposal at its chosen position."""
        if self.w_e is None or replicas.grads is None:
            return self.log_d[position]
        rows = torch.arange(replicas.size)
        return tilted_log_probs(self.log_d[position], replicas.grads[rows, position] @ self.w_e, self.temperature)

    def step(self, replicas: Replicas, level: float, evaluate: Evaluator,
             generator: torch.Generator | Enumerator) -> tuple[Replicas, torch.Tensor]:
        """One proposal per replica; returns the new replicas and which moves were accepted."""
        n = replicas.size
        if n == 0 or self.positions.numel() == 0:
            return replicas, torch.zeros(n, dtype=torch.bool)
        rows = torch.arange(n)
        position = self.positions[integers(self.positions.numel(), (n,), generator)]
        log_phi = self.proposal(replicas, position)
        new_token = sample_rows(log_phi, 1, generator)[0]
        old_token = replicas.tokens[rows, position]
        tokens = replicas.tokens.clone()
        tokens[rows, position] = new_token
        proposed = evaluate(tokens)
        accept = proposed.score > level
        if self.w_e is not None:
            log_alpha = self.log_hastings(proposed, position, old_token, new_token, log_phi)
            accept &= uniform((n,), generator, torch.float64).log() < log_alpha
        return replicas.where(accept, proposed), accept

    def log_hastings(self, proposed: Replicas, position: torch.Tensor, old_token: torch.Tensor,
                     new_token: torch.Tensor, log_phi: torch.Tensor) -> torch.Tensor:
        """``log D(x')φ(x_i | x') / (D(x)φ(x'_i | x))`` of a gradient proposal (its reverse move needs the
        gradients at x', which the evaluation computed)."""
        rows = torch.arange(proposed.size)
        log_back = self.proposal(proposed, position)
        return (self.log_d[position, new_token] - self.log_d[position, old_token]
                + log_back[rows, old_token] - log_phi[rows, new_token])


@dataclass(frozen=True)
class Level:
    """One level of a ladder: its value Z, replicas killed (ξ ≤ Z) and surviving, the MCMC acceptance rate of
    the refill, the model calls it spent, and (subset simulation) the Au–Beck correlation factor γ of the
    population it was chosen from."""

    value: float
    killed: int
    survivors: int
    acceptance: float | None
    calls: float
    correlation: float = 0.0

    def report(self) -> dict[str, Any]:
        return {"level": self.value, "killed": self.killed, "alive": self.survivors, "acceptance": self.acceptance,
                "calls": self.calls, "correlation": self.correlation}


@dataclass(frozen=True)
class Ladder:
    """One ladder: its replicas, log Π(1 − K_j/N), its levels, the chain lengths of the current population (for
    γ; ``()``: independent replicas) and why it ended (``None`` while it runs)."""

    replicas: Replicas
    log_weight: float = 0.0
    levels: tuple[Level, ...] = ()
    chains: tuple[int, ...] = ()
    end: str | None = None
    final_correlation: float = 0.0

    @property
    def size(self) -> int:
        return self.replicas.size

    @property
    def hits(self) -> int:
        return int(self.replicas.hit.sum())

    @property
    def stalled(self) -> bool:
        return self.end is not None and self.end.startswith("stalled")

    @property
    def value(self) -> float:
        """Π(1 − K_j/N) × hits/N (0 once stalled)."""
        return 0.0 if self.stalled else math.exp(self.log_weight) * self.hits / self.size

    @property
    def ladder_variance(self) -> float:
        """Σ_j (1 − p_j)/(N p_j)·(1 + γ_j), p_j = 1 − K_j/N: the relative variance of Π p_j (ideal mixing, levels
        uncorrelated; γ_j = 0 for AMS)."""
        n = self.size
        return math.fsum(lv.killed / lv.survivors / n * (1 + lv.correlation) for lv in self.levels)

    @property
    def relative_variance(self) -> float | None:
        """The AMS / subset-simulation formula for Var(p̂)/p̂², with the final fraction r = hits/N:
        ladder variance + (1 − r)/(N r)·(1 + γ_final); ``None`` without hits."""
        if self.value == 0:
            return None
        r = self.hits / self.size
        return self.ladder_variance + (1 - r) / (self.size * r) * (1 + self.final_correlation)

    def zero_bound(self, level: float) -> float:
        """A model-based bound on p for a ladder that ended at 0, valid only if the kernel mixed: the ladder's
        probability at its last level, raised by z of its relative s.d., times Clopper–Pearson(0 of N). A
        diagnostic; the reported bound uses only the independent first draws."""
        z = float(stats.norm.ppf(0.5 + level / 2))
        return min(1.0, exp_or_inf(self.log_weight + z * math.sqrt(self.ladder_variance))
                   * clopper_pearson(0, self.size, level)[1])

    def report(self) -> dict[str, Any]:
        return {"value": self.value, "end": self.end, "levels": len(self.levels), "hits": self.hits,
                "level_values": [lv.value for lv in self.levels],
                "relative_variance": self.relative_variance}


def level_details(ladders: Sequence[Sequence[Level]]) -> dict[str, Any]:
    """Every level of the first :data:`LEVEL_DETAIL_LADDERS` ladders (value, killed, alive, acceptance, calls) and
    how many ladders that leaves out."""
    return {"levels": [[lv.report() for lv in levels] for levels in ladders[:LEVEL_DETAIL_LADDERS]],
            "levels_left_out": max(0, len(ladders) - LEVEL_DETAIL_LADDERS)}


def correlation_factor(indicator: torch.Tensor, chains: Sequence[int]) -> float:
    """Au–Beck γ = 2 Σ_{k≥1} (1 − k·N_c/N)·ρ(k), ρ the lag-k autocorrelation of ``indicator`` along the chains
    (chain-major order, lengths ``chains``); 0 for independent replicas or a constant indicator; clipped at 0."""
    if not chains or max(chains) < 2:
        return 0.0
    values = indicator.to(torch.float64)
    n = values.numel()
    p = float(values.mean())
    r0 = p * (1 - p)
    if r0 == 0:
        return 0.0
    parts = torch.split(values, list(chains))
    gamma = 0.0
    for k in range(1, max(chains)):
        pairs = [(c[:-k] * c[k:]) for c in parts if c.numel() > k]
        count = sum(int(x.numel()) for x in pairs)
        r_k = float(sum(float(x.sum()) for x in pairs)) / count - p * p
        gamma += 2 * (1 - k * len(chains) / n) * r_k / r0
    return max(0.0, gamma)


@dataclass(frozen=True)
class LadderState:
    """The fitted score (``None`` before the first step), the running ladder and the finished ones."""

    evaluate: Evaluator | None = None
    kernel: LevelKernel | None = None
    ladder: Ladder | None = None
    finished: tuple[Ladder, ...] = ()
    pilot_calls: float = 0.0
    score_info: dict[str, Any] | None = None


class ScoredEstimator(Estimator[Any]):
    """Base of the splitting estimators: looks up the score named by ``options.score`` before any model call — in
    the ``registry`` it is given (``Registry.create_estimator`` passes its own), else among the built-in scores —
    and fits it on a pilot within :data:`PILOT_SHARE`."""

    options: SplittingOptions
    builtin_scores: ClassVar[Mapping[str, ScoreBuilder]] = BUILTIN_SCORES
    """The scores it finds without a registry."""

    def __init__(self, options: EstimatorOptions | Mapping[str, Any] | None = None, *,
                 registry: Registry | None = None) -> None:
        super().__init__(options)
        self._registry = registry
        self._builder: ScoreBuilder | None = None

    def score_builder(self) -> ScoreBuilder:
        """The builder of the score named by ``options.score``, looked up once."""
        if self._builder is None:
            name = self.options.score
            if self._registry is not None:
                self._builder = self._registry.score(name)
            elif name in self.builtin_scores:
                self._builder = self.builtin_scores[name]
            else:
                raise LowprobError(f"unknown score {name!r} for estimator {self.name!r}: the built-in scores are "
                                   f"{', '.join(sorted(self.builtin_scores))}; a plugin's score needs the estimator "
                                   f"from registry.create_estimator({self.name!r}, options)")
        return self._builder

    def check_problem(self, problem: Problem) -> None:
        super().check_problem(problem)
        self.score_builder()

    def fit_score(self, problem: Problem, generator: torch.Generator | Enumerator,
                  context: StepContext) -> tuple[Score, int]:
        """The fitted score and the pilot size it was offered."""
        builder = self.score_builder()
        pilot = self.options.pilot if math.isinf(context.allowance) else min(
            self.options.pilot, int(PILOT_SHARE * context.allowance // (1.0 + context.backward_weight)))
        return builder(problem, pilot, generator), pilot


class LadderEstimator(ScoredEstimator):
    """What ``ams`` and ``subset-simulation`` share: ladders of whole inputs, MCMC refills, averaged ladders."""

    options: LadderOptions

    def per_call(self, backward_weight: float) -> float:
        return 1.0 + (backward_weight if self.options.proposal == "gradient" else 0.0)

    def min_step_calls(self, backward_weight: float) -> float:
        """The first ladder's N replicas from D."""
        return self.options.replicas * self.per_call(backward_weight)

    def init(self, problem: Problem, generator: torch.Generator) -> LadderState:
        return LadderState()

    def kill_count(self) -> int:
        """How many of the N replicas each level aims to kill (ties may add more)."""
        raise NotImplementedError

    def refill(self, ladder: Ladder, survivors: Replicas, level: float, killed: int, state: LadderState,
               generator: torch.Generator | Enumerator) -> tuple[Replicas, tuple[int, ...], float | None]:
        """The new population of N from ``survivors`` (all with ξ > level), its chain lengths and the acceptance
        rate of the moves."""
        raise NotImplementedError

    def refill_calls(self, killed: int, backward_weight: float) -> float:
        """Model calls one refill after ``killed`` kills spends."""
        raise NotImplementedError

    def step(self, state: LadderState, problem: Problem, generator: torch.Generator,
             context: StepContext) -> tuple[LadderState, StepInfo]:
        if state.evaluate is None:
            before = problem.model.cost.model_calls(context.backward_weight)
            score, _ = self.fit_score(problem, generator, context)
            gradients = self.options.proposal == "gradient"
            w_e = problem.model.W_E.T.detach().cpu().to(torch.float64) if gradients else None
            kernel = LevelKernel(problem.distribution.dense_log_probs(), w_e, self.options.temperature)
            spent = problem.model.cost.model_calls(context.backward_weight) - before
            state = replace(state, evaluate=Evaluator(problem, score, gradients), kernel=kernel, pilot_calls=spent,
                            score_info=score.describe())
            context = StepContext(context.allowance - spent, context.backward_weight)
        ladder = state.ladder
        if ladder is None:
            return self._start(state, problem, generator, context)
        n, k = ladder.size, self.kill_count()
        level = float(ladder.replicas.score.sort().values[k - 1])
        killed = int((ladder.replicas.score <= level).sum())
        gamma = correlation_factor(ladder.replicas.score > level, ladder.chains)
        if level == math.inf:
            final = correlation_factor(ladder.replicas.hit, ladder.chains)
            return self._finish(state, replace(ladder, end="reached the event", final_correlation=final),
                                problem, generator, context)
        if killed == n:
            mixes = next((i for i, lv in enumerate(reversed(ladder.levels)) if lv.killed), len(ladder.levels))
            assert state.kernel is not None
            if (mixes >= TIE_MIXES or state.kernel.positions.numel() == 0
                    or self.mix_calls(n, context.backward_weight) > context.allowance):
                end = f"stalled: all {n} replicas tied at level {level:.6g} after {mixes} mixing rounds"
                return self._finish(state, replace(ladder, end=end), problem, generator, context)
            state = replace(state, ladder=self._mix(ladder, state, problem, generator, context))
            return state, self._info(state, False)
        cost = self.refill_calls(killed, context.backward_weight)
        if cost > context.allowance:
            final = correlation_factor(ladder.replicas.hit, ladder.chains)
            done = replace(ladder, end=f"budget: stopped at level {len(ladder.levels)}", final_correlation=final)
            state = replace(state, ladder=None, finished=(*state.finished, done))
            return state, self._info(state, True)
        before = problem.model.cost.model_calls(context.backward_weight)
        survivors = ladder.replicas.take(torch.nonzero(ladder.replicas.score > level)[:, 0])
        population, chains, acceptance = self.refill(ladder, survivors, level, killed, state, generator)
        spent = problem.model.cost.model_calls(context.backward_weight) - before
        record = Level(level, killed, n - killed, acceptance, spent, gamma)
        ladder = Ladder(population, ladder.log_weight + math.log1p(-killed / n), (*ladder.levels, record), chains)
        state = replace(state, ladder=ladder)
        return state, self._info(state, False)

    def mix_steps(self) -> int:
        """MCMC steps of every replica in a mixing round (all N tied below the event)."""
        raise NotImplementedError

    def mix_calls(self, n: int, backward_weight: float) -> float:
        return n * self.mix_steps() * self.per_call(backward_weight)

    def _mix(self, ladder: Ladder, state: LadderState, problem: Problem, generator: torch.Generator,
             context: StepContext) -> Ladder:
        """All N replicas tie below the event: move every one ``mix_steps`` times inside the previous level
        (D restricted to it stays invariant) instead of killing all; recorded as a level that kills none."""
        assert state.kernel is not None and state.evaluate is not None
        level = ladder.levels[-1].value if ladder.levels else -math.inf
        before = problem.model.cost.model_calls(context.backward_weight)
        replicas, accepted = ladder.replicas, 0
        for _ in range(self.mix_steps()):
            replicas, moved = state.kernel.step(replicas, level, state.evaluate, generator)
            accepted += int(moved.sum())
        spent = problem.model.cost.model_calls(context.backward_weight) - before
        record = Level(level, 0, ladder.size, accepted / (ladder.size * self.mix_steps()), spent)
        return replace(ladder, replicas=replicas, levels=(*ladder.levels, record))

    def _start(self, state: LadderState, problem: Problem, generator: torch.Generator,
               context: StepContext) -> tuple[LadderState, StepInfo]:
        n = self.options.replicas
        limit = self.options.ladders
        assert state.evaluate is not None
        if (limit is not None and len(state.finished) >= limit) or context.affordable(
                state.evaluate.calls(context.backward_weight), n) < n:
            return state, self._info(state, True)
        ladder = Ladder(state.evaluate(problem.distribution.sample(n, generator)))
        state = replace(state, ladder=ladder)
        return state, self._info(state, False)

    def _finish(self, state: LadderState, ladder: Ladder, problem: Problem, generator: torch.Generator,
                context: StepContext) -> tuple[LadderState, StepInfo]:
        """Bank a finished ladder and start the next one in the same step (a step must spend calls)."""
        return self._start(replace(state, ladder=None, finished=(*state.finished, ladder)), problem, generator,
                           context)

    def _info(self, state: LadderState, done: bool) -> StepInfo:
        ladders = self._ladders(state)
        if not ladders:
            return StepInfo(done=done)
        summary = summarize(ladders)
        return StepInfo(value=summary.value, std_error=summary.std_error,
                        samples=sum(lad.size for lad in ladders), done=done)

    @staticmethod
    def _ladders(state: LadderState) -> tuple[Ladder, ...]:
        """The ladders an estimate combines: the finished ones that reached an end other than the budget, or,
        when none did, every finished one (a run cut short by the budget reports what it reached)."""
        complete = tuple(lad for lad in state.finished if not (lad.end or "").startswith("budget"))
        return complete or state.finished

    def result(self, state: LadderState, problem: Problem, level: float) -> EstimatorOutput:
        ladders = self._ladders(state) or ((state.ladder,) if state.ladder is not None else ())
        if not ladders:
            raise LowprobError(f"{self.name} ran no ladder: the budget ran out before N replicas were drawn")
        summary = summarize(ladders, level)
        diagnostics: dict[str, Any] = {
            **(state.score_info or {}),
            "ladders": len(ladders),
            "ladders_cut_by_budget": sum((lad.end or "budget").startswith("budget") for lad in state.finished),
            "stalled_ladders": sum(lad.stalled for lad in ladders),
            "ends": count_ends(lad.end for lad in ladders),
            "pilot_calls": state.pilot_calls,
            "per_ladder": [lad.report() for lad in ladders],
            **level_details([lad.levels for lad in ladders]),
            "std_error_method": summary.method,
        }
        if summary.formula_std_error is not None:
            diagnostics["formula_std_error"] = summary.formula_std_error
        if summary.value == 0:
            diagnostics["zero_reason"] = "; ".join(str(lad.end) for lad in ladders)
            diagnostics["ladder_zero_bound"] = math.fsum(lad.zero_bound(level) for lad in ladders) / len(ladders)
        return EstimatorOutput(value=summary.value, std_error=summary.std_error, ci=summary.ci, hits=summary.hits,
                               samples=summary.samples, diagnostics=diagnostics)


def count_ends(ends: Iterable[str | None]) -> dict[str, int]:
    """How many ladders (or runs) ended each way: ``reached the event``, ``stalled``, ``budget``, ``running``."""
    counts: dict[str, int] = {}
    for end in ends:
        kind = (end or "running").split(":")[0]
        counts[kind] = counts.get(kind, 0) + 1
    return counts


@dataclass(frozen=True)
class LadderSummary:
    """Ladders combined: the mean value, its standard error and interval, counts, and the formula's s.e."""

    value: float
    std_error: float | None
    ci: ConfidenceInterval | None
    hits: int
    samples: int
    method: str
    formula_std_error: float | None


def summarize(ladders: Sequence[Ladder], level: float = 0.95) -> LadderSummary:
    """The mean of the ladders' values with its standard error and interval.

    With two or more ladders the standard error is the spread of their values (it sees the MCMC correlation the
    formula ignores) and the interval is :func:`lognormal_mean_interval` of the values — a ladder's value is a
    product of many level fractions, so its log is close to normal and its distribution far from it (a
    Student-t interval on the values themselves, skewed and few, covered 3 to 5 of 8 on planted-two-modes-e10);
    with fewer than two non-zero ladders, the Student-t interval (clipped at 0). With one ladder: the formula's
    relative variance δ² (:attr:`Ladder.relative_variance`) and a lognormal interval ``v·exp(±z·δ)``. The
    formula's s.e., √(Σ_r v_r²·δ_r²)/R, is always reported. A zero mean gets ``[0, Clopper–Pearson bound]``.
    """
    r = len(ladders)
    values = [lad.value for lad in ladders]
    value = math.fsum(values) / r
    hits, samples = sum(lad.hits for lad in ladders), sum(lad.size for lad in ladders)
    formula = math.sqrt(math.fsum(v * v * (lad.relative_variance or 0.0)
                                  for v, lad in zip(values, ladders, strict=True))) / r
    if value == 0:  # no hit ever: none among the ladders' first populations, which are independent draws from D
        ci = ConfidenceInterval(low=0.0, high=clopper_pearson(0, samples, level)[1], level=level,
                                method="clopper-pearson: 0 hits in the ladders' initial draws from D")
        return LadderSummary(0.0, None, ci, hits, samples, "none (zero estimate)", None)
    if r == 1:
        spread_factor = exp_or_inf(float(stats.norm.ppf(0.5 + level / 2)) * formula / value)
        ci = ConfidenceInterval(low=value / spread_factor, high=min(1.0, value * spread_factor), level=level,
                                method="lognormal from the AMS variance formula (one ladder)")
        return LadderSummary(value, formula, ci, hits, samples, "AMS variance formula (ideal mixing)", formula)
    std_error = math.sqrt(math.fsum((v - value) ** 2 for v in values) / (r - 1) / r)
    return LadderSummary(value, std_error, replicate_interval(values, level, "ladders"), hits, samples,
                         f"spread of {r} independent ladders", formula)


def exp_or_inf(x: float) -> float:
    """``e^x``, or ``inf`` past a float's range: an interval's end whose log is huge (replicates spread over hundreds
    of decades) is unbounded, and its caller caps it at 1, instead of raising ``OverflowError``."""
    return math.exp(x) if x < LOG_FLOAT_MAX else math.inf


def lognormal_mean_interval(values: Sequence[float], level: float) -> tuple[float, float] | None:
    """Cox's interval for the mean of R independent non-negative replicates whose non-zero values are lognormal:
    with y the logs of the n non-zero values (mean ȳ, variance s²), ``exp(ȳ + s²/2 ± t_{n−1}·√(s²/n +
    s⁴/(2(n − 1))))``, times the share n/R of non-zero replicates; ``None`` with fewer than two non-zero."""
    logs = [math.log(v) for v in values if v > 0]
    n = len(logs)
    if n < 2:
        return None
    mean = math.fsum(logs) / n
    var = math.fsum((y - mean) ** 2 for y in logs) / (n - 1)
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * math.sqrt(var / n + var * var / (2 * (n - 1)))
    centre = mean + var / 2 + math.log(n / len(values))
    return exp_or_inf(centre - half), exp_or_inf(centre + half)


def replicate_interval(values: Sequence[float], level: float, unit: str) -> ConfidenceInterval:
    """The interval of the mean of R ≥ 2 independent replicates (ladders, runs) with a non-zero mean: Cox's
    lognormal interval, widened to hold the mean itself, or, with fewer than two non-zero values, Student-t on
    R − 1 degrees of freedom (clipped at 0)."""
    r = len(values)
    value = math.fsum(values) / r
    cox = lognormal_mean_interval(values, level)
    if cox is not None:
        return ConfidenceInterval(low=min(cox[0], value), high=min(1.0, max(cox[1], value)), level=level,
                                  method=f"lognormal (Cox) over {r} {unit}")
    std_error = math.sqrt(math.fsum((v - value) ** 2 for v in values) / (r - 1) / r)
    half = float(stats.t.ppf(0.5 + level / 2, r - 1)) * std_error
    return ConfidenceInterval(low=max(0.0, value - half), high=min(1.0, value + half), level=level,
                              method=f"student-t over {r} {unit}")


class AMS(LadderEstimator):
    """Adaptive multilevel splitting: kill the k lowest (ties too), clone survivors, MCMC moves (consistent)."""

    name = "ams"
    Options = AMSOptions
    capabilities = Capabilities(unbiased=False, consistent=True, has_error_bars=True, needs_factorized=True)
    options: AMSOptions

    def check_problem(self, problem: Problem) -> None:
        super().check_problem(problem)
        if self.options.kill >= self.options.replicas:
            raise LowprobError(f"ams: kill={self.options.kill} must be less than replicas={self.options.replicas}")

    def kill_count(self) -> int:
        return self.options.kill

    def refill_calls(self, killed: int, backward_weight: float) -> float:
        return killed * self.options.mcmc_steps * self.per_call(backward_weight)

    def mix_steps(self) -> int:
        return self.options.mcmc_steps

    def refill(self, ladder: Ladder, survivors: Replicas, level: float, killed: int, state: LadderState,
               generator: torch.Generator | Enumerator) -> tuple[Replicas, tuple[int, ...], float | None]:
        """Each killed replica becomes a copy of a uniformly chosen survivor, then takes ``mcmc_steps`` moves."""
        assert state.kernel is not None and state.evaluate is not None
        clones = survivors.take(integers(survivors.size, (killed,), generator))
        accepted = 0
        for _ in range(self.options.mcmc_steps):
            clones, moved = state.kernel.step(clones, level, state.evaluate, generator)
            accepted += int(moved.sum())
        return Replicas.cat([survivors, clones]), (), accepted / (killed * self.options.mcmc_steps)


class SubsetSimulation(LadderEstimator):
    """Subset simulation (Au & Beck 2001): levels at the (1 − p0) quantile, chains from the seeds (consistent)."""

    name = "subset-simulation"
    Options = SubsetSimulationOptions
    capabilities = Capabilities(unbiased=False, consistent=True, has_error_bars=True, needs_factorized=True)
    options: SubsetSimulationOptions

    def kill_count(self) -> int:
        return max(1, min(self.options.replicas - 1, round(self.options.replicas * (1 - self.options.p0))))

    def refill_calls(self, killed: int, backward_weight: float) -> float:
        return killed * self.per_call(backward_weight)

    def mix_steps(self) -> int:
        """As long as the chains a level grows (1/p0 states each)."""
        return max(1, round(1 / self.options.p0))

    def refill(self, ladder: Ladder, survivors: Replicas, level: float, killed: int, state: LadderState,
               generator: torch.Generator | Enumerator) -> tuple[Replicas, tuple[int, ...], float | None]:
        """Each survivor seeds a chain; the chains' states (seed included) make the N new replicas."""
        assert state.kernel is not None and state.evaluate is not None
        seeds, n = survivors.size, ladder.size
        lengths = tuple(n // seeds + (1 if c < n % seeds else 0) for c in range(seeds))
        states = [survivors]  # states[t]: the chains still running at step t, a prefix of the seeds (longest first)
        current, accepted = survivors, 0
        for t in range(1, max(lengths)):
            current = current.take(torch.arange(sum(length > t for length in lengths)))
            current, moved = state.kernel.step(current, level, state.evaluate, generator)
            accepted += int(moved.sum())
            states.append(current)
        offsets = [0]
        for part in states[:-1]:
            offsets.append(offsets[-1] + part.size)
        chain_major = [offsets[t] + c for c in range(seeds) for t in range(lengths[c])]
        population = Replicas.cat(states).take(torch.tensor(chain_major, dtype=torch.int64))
        return population, lengths, accepted / (n - seeds) if n > seeds else None


@hookimpl
def register_estimators(registrar: Registrar) -> None:
    """Register the built-in splitting estimators over whole inputs."""
    registrar.add_estimator(AMS)
    registrar.add_estimator(SubsetSimulation)
