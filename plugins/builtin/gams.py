"""Generalized adaptive multilevel splitting (``gams``) on the position-by-position construction of the input:
unbiased for any score function (Bréhier, Gazeau, Goudenège, Lelièvre & Rousset 2016).

An input is built by a Markov chain that fills the non-constant positions p_0 < … < p_{m−1} of a factorized D in
order; its states are the prefixes x_{≤p_j}. A registered score gives every prefix a value ξ_j (the whole input
gets +∞ when it hits, else the score of the whole input), and a replica's level is Λ = max_j ξ_j. Each
iteration takes Z = the k-th smallest level, kills every replica with Λ ≤ Z (ties included, so K ≥ k; all N:
extinction, estimate 0) and replaces each killed one by a uniformly chosen survivor's prefix up to the first
position where its score exceeds Z, with the rest of the input drawn afresh from D — no MCMC. One run's estimate
Π_q (1 − K_q/N) × hits/N is unbiased at every iteration (a martingale in q), so a run cut short by the budget
(stopped before an iteration whose worst-case cost does not fit) stays unbiased; ``runs`` independent runs,
fixed in advance and stepped together, are averaged; their spread gives the standard error, and Cox's
lognormal interval of their values (``splitting.replicate_interval``) the confidence interval.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import torch
from pydantic import Field
from scipy import stats

from lowprob.core.errors import LowprobError
from lowprob.core.estimate import ConfidenceInterval
from lowprob.core.estimator import Capabilities, EstimatorOutput, Problem, StepContext, StepInfo
from lowprob.core.random import Enumerator, integers
from lowprob.core.smc import combine_replicates
from lowprob.core.stats import clopper_pearson
from lowprob.plugins.builtin.splitting import (
    Level,
    ScoredEstimator,
    SplittingOptions,
    count_ends,
    exp_or_inf,
    level_details,
    replicate_interval,
)
from lowprob.plugins.builtin.twists import Layout
from lowprob.plugins.hookspecs import hookimpl
from lowprob.plugins.registry import Registrar
from lowprob.plugins.scoring import Score

RUN_CALLS_PER_REPLICA = 25
"""Forward passes one run of N replicas is planned to cost, per replica: about 1 + ln(1/p) with k/N kills per
iteration, sized for p ≈ 1e-10. ``runs=None`` plans ⌊calls / (25·N)⌋ runs (at least 2; 8 without a call limit)."""
UNLIMITED_RUNS = 8


class GAMSOptions(SplittingOptions):
    """Options of generalized AMS."""

    score: str = Field(default="twist", description="registered score function ξ with prefix scores (twist, ...)")
    kill: int = Field(default=10, ge=1, description="k: each iteration kills the k lowest levels and all ties")
    runs: int | None = Field(default=None, ge=1,
                             description="independent runs, fixed in advance (None: planned from the call budget)")


@dataclass(frozen=True)
class Paths:
    """Replicas as whole inputs ``tokens`` ``[n, length]`` with the score ξ of each prefix state ``[n, states]``
    (the last column the whole input: +∞ on a hit) and their hits."""

    tokens: torch.Tensor
    xi: torch.Tensor
    hit: torch.Tensor

    @property
    def level(self) -> torch.Tensor:
        """Λ = max over the states of ξ."""
        return self.xi.max(dim=1).values

    def take(self, index: torch.Tensor) -> Paths:
        return Paths(self.tokens[index], self.xi[index], self.hit[index])

    @staticmethod
    def cat(parts: list[Paths]) -> Paths:
        return Paths(torch.cat([p.tokens for p in parts]), torch.cat([p.xi for p in parts]),
                     torch.cat([p.hit for p in parts]))


@dataclass(frozen=True)
class Run:
    """One GAMS run: its replicas, log Π(1 − K_q/N), its iterations and why it ended (``None`` while it runs)."""

    paths: Paths
    log_weight: float = 0.0
    levels: tuple[Level, ...] = ()
    end: str | None = None

    @property
    def size(self) -> int:
        return int(self.paths.hit.numel())

    @property
    def hits(self) -> int:
        return int(self.paths.hit.sum())

    @property
    def extinct(self) -> bool:
        return self.end is not None and self.end.startswith("extinct")

    @property
    def log_value(self) -> float:
        """log(Π(1 − K_q/N) × hits/N); −inf at extinction or without hits."""
        if self.extinct or self.hits == 0:
            return -math.inf
        return self.log_weight + math.log(self.hits / self.size)

    def formula_variance(self) -> float | None:
        """The AMS relative-variance formula Σ_q K_q/(N(N − K_q)) + (1 − r)/(N r) (ideal branching), a diagnostic."""
        if self.log_value == -math.inf:
            return None
        r = self.hits / self.size
        return math.fsum(lv.killed / lv.survivors / self.size for lv in self.levels) + (1 - r) / (self.size * r)

    def zero_bound(self, level: float) -> float:
        """A diagnostic for a run that ended at 0: Π(1 − K_q/N) at its last level times Clopper–Pearson(0 of N);
        not a valid bound when the run missed a mode of the event."""
        return min(1.0, math.exp(self.log_weight) * clopper_pearson(0, self.size, level)[1])


@dataclass(frozen=True)
class GAMSState:
    """The layout of chain steps, the fitted score, the runs (``()`` before the first step) and the pilot cost."""

    layout: Layout
    score: Score | None = None
    runs: tuple[Run, ...] = ()
    pilot_calls: float = 0.0
    score_info: dict[str, Any] | None = None


class GAMS(ScoredEstimator):
    """Generalized AMS over the position-by-position construction of the input: prefix branching (unbiased)."""

    name = "gams"
    Options = GAMSOptions
    capabilities = Capabilities(unbiased=True, has_error_bars=True, needs_factorized=True)
    options: GAMSOptions
    initial_draws: ClassVar[str] = "initial draws from D"
    run_calls_per_replica: ClassVar[int] = RUN_CALLS_PER_REPLICA
    """What a run's first population is, for the reason of a zero estimate's bound."""

    def check_problem(self, problem: Problem) -> None:
        super().check_problem(problem)
        if self.options.kill >= self.options.replicas:
            raise LowprobError(f"gams: kill={self.options.kill} must be less than replicas={self.options.replicas}")

    def planned_runs(self, calls: float) -> int:
        """``runs``, or as many runs as ``calls`` plan for (``run_calls_per_replica``): fixed before any draw,
        so the mean over runs stays unbiased."""
        if self.options.runs is not None:
            return self.options.runs
        if math.isinf(calls):
            return UNLIMITED_RUNS
        return max(2, int(calls // (self.run_calls_per_replica * self.options.replicas)))

    def min_step_calls(self, backward_weight: float) -> float:
        """The N initial inputs of every run (two runs when they are planned from the budget)."""
        return float(self.planned_runs(0) * self.options.replicas)

    def init(self, problem: Problem, generator: torch.Generator) -> GAMSState:
        return GAMSState(layout=Layout.of(problem.distribution))

    def evaluate(self, tokens: torch.Tensor, score: Score, problem: Problem) -> Paths:
        """ξ of every prefix state of ``tokens`` (one forward pass each, for the whole input's score and hit)."""
        logits = problem.model.last_logits(tokens).cpu()
        hit = problem.target.hits(logits)
        last = torch.where(hit, math.inf, score.complete(tokens, logits).to(torch.float64))
        prefixes = score.prefixes(tokens)
        if prefixes is None:
            raise LowprobError(f"gams needs a score with prefix scores; {self.options.score!r} judges only whole "
                               "inputs (use -o score=twist)")
        xi = torch.cat([prefixes[:, :-1].to(torch.float64), last[:, None]], dim=1)
        if torch.isnan(xi).any():
            raise LowprobError(f"the score {self.options.score!r} returned NaN")
        return Paths(tokens, xi, hit)

    def step(self, state: GAMSState, problem: Problem, generator: torch.Generator,
             context: StepContext) -> tuple[GAMSState, StepInfo]:
        if state.score is None:
            before = problem.model.cost.model_calls(context.backward_weight)
            count = min(self.planned_runs(context.allowance),
                        max(1, int(context.allowance // self.options.replicas)))
            room = StepContext(context.allowance - count * self.options.replicas, context.backward_weight)
            score, _ = self.fit_score(problem, generator, room)
            spent = problem.model.cost.model_calls(context.backward_weight) - before
            n = self.options.replicas
            paths = self.draw(n * count, score, problem, generator)
            runs = tuple(Run(paths.take(torch.arange(r * n, (r + 1) * n))) for r in range(count))
            state = replace(state, score=score, runs=runs, pilot_calls=spent, score_info=score.describe())
            return state, self._info(state)
        before = problem.model.cost
        while not (problem.model.cost != before or all(run.end is not None for run in state.runs)):
            state = self._iterate(state, problem, generator, context)
        return state, self._info(state)

    def _iterate(self, state: GAMSState, problem: Problem, generator: torch.Generator,
                 context: StepContext) -> GAMSState:
        """One iteration of every running run (an iteration whose clones all copy whole survivors costs nothing)."""
        allowance = context.allowance
        runs = list(state.runs)
        pending: list[tuple[int, Paths, torch.Tensor, torch.Tensor, float, int]] = []
        for r, run in enumerate(runs):
            if run.end is not None:
                continue
            level_of = run.paths.level
            n = run.size
            z = float(level_of.sort().values[self.options.kill - 1])
            dead = self.doomed(level_of, z)
            killed = int(dead.sum())
            if z == math.inf:
                runs[r] = replace(run, end="reached the event")
            elif killed == n:
                runs[r] = replace(run, end=f"extinct: all {n} replicas tied at level {z:.6g}")
            elif killed > allowance:
                runs[r] = replace(run, end=f"budget: stopped after {len(run.levels)} iterations")
            else:
                allowance -= killed
                branched, first = self.branch(state.layout, run.paths, z, dead, problem, generator)
                pending.append((r, branched, first, dead, z, killed))
        if pending:
            self._evaluate_pending(state, runs, pending, problem, generator, context)
        return replace(state, runs=tuple(runs))

    def doomed(self, levels: torch.Tensor, z: float) -> torch.Tensor:
        """The replicas an iteration at level ``z`` kills: every one at or below it, ties included (K ≥ k)."""
        return levels <= z

    def branch(self, layout: Layout, paths: Paths, z: float, dead: torch.Tensor, problem: Problem,
               generator: torch.Generator | Enumerator) -> tuple[Paths, torch.Tensor]:
        """For each killed replica: a uniformly chosen survivor, copied up to the first state whose ξ exceeds
        ``z`` and regenerated from D after it. Returns the new replicas (scores still those of the survivors)
        and the state each was branched at (the last state: a whole copy, which needs no model pass)."""
        survivors = torch.nonzero(~dead)[:, 0]
        killed = int(dead.sum())
        chosen = paths.take(survivors[integers(survivors.numel(), (killed,), generator)])
        first = (chosen.xi > z).to(torch.int64).argmax(dim=1)  # the first state above z (one exists: Λ > z)
        tokens = chosen.tokens.clone()
        cats = problem.distribution.positions
        for j, p in enumerate(layout.positions):
            rows = torch.nonzero(first < j)[:, 0]
            if rows.numel():
                tokens[rows, p] = cats[p].sample(rows.numel(), generator)
        return Paths(tokens, chosen.xi, chosen.hit), first

    def draw(self, n: int, score: Score, problem: Problem, generator: torch.Generator) -> Paths:
        """``n`` independent replicas from scratch, scored (one model pass each)."""
        return self.evaluate(problem.distribution.sample(n, generator), score, problem)

    def renew(self, paths: Paths, first: torch.Tensor, score: Score, problem: Problem,
              generator: torch.Generator) -> Paths:
        """The replicas ``paths`` that :meth:`branch` regenerated after their states ``first``, scored (one model
        pass each)."""
        return self.evaluate(paths.tokens, score, problem)

    def _evaluate_pending(self, state: GAMSState, runs: list[Run],
                          pending: list[tuple[int, Paths, torch.Tensor, torch.Tensor, float, int]],
                          problem: Problem, generator: torch.Generator, context: StepContext) -> None:
        """One batched :meth:`renew` of every replica this iteration branched before its last state, then each
        run's new population."""
        assert state.score is not None
        fresh = [first < branched.xi.shape[1] - 1 for _, branched, first, _, _, _ in pending]
        before = problem.model.cost.model_calls(context.backward_weight)
        scored = None
        if any(bool(f.any()) for f in fresh):
            parts = list(zip(pending, fresh, strict=True))
            scored = self.renew(Paths.cat([p[1].take(f) for p, f in parts]), torch.cat([p[2][f] for p, f in parts]),
                                state.score, problem, generator)
        offset = 0
        for (r, branched, _, dead, z, killed), renewed in zip(pending, fresh, strict=True):
            run = runs[r]
            count = int(renewed.sum())
            new = branched
            if scored is not None and count:
                part = scored.take(torch.arange(offset, offset + count))
                tokens, xi, hit = branched.tokens.clone(), branched.xi.clone(), branched.hit.clone()
                tokens[renewed], xi[renewed], hit[renewed] = part.tokens, part.xi, part.hit
                new = Paths(tokens, xi, hit)
            offset += count
            paths = Paths.cat([run.paths.take(torch.nonzero(~dead)[:, 0]), new])
            record = Level(z, killed, run.size - killed, None, float(count))
            runs[r] = Run(paths, run.log_weight + math.log1p(-killed / run.size), (*run.levels, record))
        assert problem.model.cost.model_calls(context.backward_weight) - before == offset

    def _info(self, state: GAMSState) -> StepInfo:
        summary = combine_replicates([run.log_value for run in state.runs], [run.size for run in state.runs])
        return StepInfo(value=summary.value, std_error=summary.std_error,
                        samples=sum(run.size for run in state.runs), done=all(r.end is not None for r in state.runs))

    def result(self, state: GAMSState, problem: Problem, level: float) -> EstimatorOutput:
        if not state.runs:
            raise LowprobError(f"{self.name} drew no replicas: the budget ran out before the first population")
        runs = state.runs
        # no hit ever: none among the runs' first populations, which are independent draws from D
        zero_upper = clopper_pearson(0, sum(run.size for run in runs), level)[1]
        summary = combine_replicates([run.log_value for run in runs], [run.size for run in runs], level,
                                     zero_upper, f"clopper-pearson: 0 hits in the runs' {self.initial_draws}")
        ci = None
        if summary.value > 0 and len(runs) > 1:  # a run's value is a product of level fractions: lognormal
            ci = replicate_interval([math.exp(run.log_value) for run in runs], level, "runs")
        elif summary.low is not None and summary.high is not None:
            ci = ConfidenceInterval(low=summary.low, high=summary.high, level=level, method=summary.method)
        elif summary.value > 0:  # one run: the AMS formula's lognormal interval
            variance = runs[0].formula_variance() or 0.0
            spread = exp_or_inf(float(stats.norm.ppf(0.5 + level / 2)) * math.sqrt(variance))
            ci = ConfidenceInterval(low=summary.value / spread, high=min(1.0, summary.value * spread), level=level,
                                    method="lognormal from the AMS variance formula (one run)")
        diagnostics: dict[str, Any] = {
            **(state.score_info or {}),
            "runs": len(runs),
            "ends": count_ends(run.end for run in runs),
            "run_values": [math.exp(run.log_value) for run in runs],
            "iterations": [len(run.levels) for run in runs],
            "formula_relative_variance": [run.formula_variance() for run in runs],
            **level_details([run.levels for run in runs]),
            "pilot_calls": state.pilot_calls,
            "std_error_method": "spread of independent runs",
        }
        if summary.value == 0:
            diagnostics["zero_reason"] = "; ".join(str(run.end) for run in runs)
            diagnostics["ladder_zero_bound"] = math.fsum(run.zero_bound(level) for run in runs) / len(runs)
        return EstimatorOutput(value=summary.value, std_error=summary.std_error, ci=ci,
                               hits=sum(run.hits for run in runs), samples=sum(run.size for run in runs),
                               diagnostics=diagnostics)


@hookimpl
def register_estimators(registrar: Registrar) -> None:
    """Register the generalized AMS estimator."""
    registrar.add_estimator(GAMS)
