"""Targets below brute force: screen the tokens the ground truth barely saw by their ground-truth interval and the
tokens it never saw with a cheap seeded pilot, keep those that lie in the test band, and check the reference
procedure against brute force where the ground truth is good (docs/references.md).

Pilot rows are results rows (``experiment = "lowprob-screen/1"``) in a file driven by the engine, so a screening
resumes and its cost is the sum of its rows'.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from pydantic import Field

from lowprob.api import CompiledSource, run_problem
from lowprob.config_files import StrictModel
from lowprob.core.budget import Budget
from lowprob.core.errors import LowprobError
from lowprob.core.estimate import Estimate
from lowprob.core.random import Seed
from lowprob.core.stats import clopper_pearson
from lowprob.engine import Engine, Job
from lowprob.ground_truth import GroundTruth
from lowprob.plugins import Registry
from lowprob.protocol import PAPER_BAND, Band, min_hits, select_tokens
from lowprob.references import Pooled, Reference, ReferenceMethod, ReferenceProblem, ReferenceRunner, reference_seed
from lowprob.results import ResultRow, RowSpec

SCREEN_EXPERIMENT = "lowprob-screen/1"
"""The ``experiment`` of every pilot row."""


class ScreenRules(StrictModel):
    """Which tokens are screened, with what pilot, and which band keeps them."""

    band: tuple[float, float] = Field(default=PAPER_BAND, description="keep tokens whose positive pilot's "
                                   "interval meets [low, high)")
    max_hits: int = Field(default=11, ge=0, description="candidates: at most this many ground-truth hits (fewer "
                          "than the 12 a brute-force target needs); never-seen tokens included")
    screen: int = Field(default=64, ge=1, description="never-seen candidates piloted, the first of a seeded "
                        "permutation")
    pilot: ReferenceMethod = Field(default_factory=lambda: ReferenceMethod(estimator="tsmc"))
    pilot_calls: int = Field(default=1 << 12, ge=1, description="model calls of each pilot")
    seed: Seed = 0


@dataclass(frozen=True)
class Screening:
    """What a screening did: how many candidates there were, which few-hit tokens their ground-truth interval kept,
    which never-seen tokens were piloted (in order), each pilot value, every kept token (a ground-truth or pilot
    interval meeting the band) and what the pilots cost."""

    candidates: int
    by_ground_truth: tuple[int, ...]
    screened: tuple[int, ...]
    pilots: dict[int, float]
    kept: tuple[int, ...]
    calls: float
    seconds: float

    def choose(self, n: int, seed: int) -> tuple[int, ...]:
        """Up to ``n`` kept tokens by a seeded permutation of the kept ids sorted (as :func:`select_tokens`)."""
        return tuple(int(t) for t in np.random.default_rng(seed).permutation(sorted(self.kept))[:n])


def candidates(gt: GroundTruth, max_hits: int) -> np.ndarray:
    """Token ids with at most ``max_hits`` ground-truth hits (zero included), sorted."""
    return np.flatnonzero(gt.counts <= max_hits)


def seen_in_band(gt: GroundTruth, rules: ScreenRules) -> tuple[int, ...]:
    """The few-hit candidates (1 to ``rules.max_hits`` hits) whose Clopper–Pearson interval meets the band: the
    ground truth is a seeded naive pilot of 2^20 calls already paid for, far stronger than a 2^12-call itgis pilot,
    which misses most of these tokens (measured in docs/references.md)."""
    band = Band(*rules.band)
    few = np.flatnonzero((gt.counts > 0) & (gt.counts <= rules.max_hits))
    return tuple(int(t) for t in few if _meets(clopper_pearson(int(gt.counts[t]), gt.samples), band))


def screening_order(gt: GroundTruth, rules: ScreenRules) -> tuple[int, ...]:
    """The first ``rules.screen`` never-seen tokens (most of which no input makes the argmax) in a permutation
    seeded by (seed, model, distribution) only, so a larger ``screen`` extends a smaller one."""
    seed = reference_seed(gt.model, gt.distribution, "screen", "order/never", 0, rules.seed)
    order = np.random.default_rng(seed).permutation(np.flatnonzero(gt.counts == 0))
    return tuple(int(t) for t in order[:rules.screen])


def screen(registry: Registry, engine: Engine, source: CompiledSource, gt: GroundTruth, rules: ScreenRules,
           on_pilot: Callable[[int, ResultRow], None] | None = None) -> Screening:
    """Keep the few-hit tokens of :func:`seen_in_band`, pilot every token of :func:`screening_order` (rows
    already in ``engine`` are reused) and keep those whose pilot is positive with an interval meeting the band;
    the pilot's seed is a reference seed, disjoint from test runs'."""
    band, pilot = Band(*rules.band), rules.pilot
    registry.create_estimator(pilot.estimator, pilot.options)
    backward = registry.estimator(pilot.estimator).paper_budget().backward_weight
    order, pilots, calls, seconds = screening_order(gt, rules), {}, 0.0, 0.0
    seen = seen_in_band(gt, rules)
    kept = list(seen)
    for token in order:
        problem = ReferenceProblem.argmax(source, gt.distribution, token)
        if problem.distribution_hash != gt.distribution_hash:
            raise LowprobError(f"the ground truth of {gt.model}/{gt.distribution} was counted on a different "
                               "distribution than the spec now gives; recount it")
        spec = RowSpec(experiment=SCREEN_EXPERIMENT, model=problem.model, distribution=problem.distribution,
                       distribution_hash=problem.distribution_hash, target=problem.target,
                       estimator=pilot.estimator, label=pilot.key, options=pilot.options,
                       budget=Budget(model_calls=rules.pilot_calls, backward_weight=backward),
                       seed=reference_seed(problem.model, problem.distribution, problem.target,
                                           f"pilot:{pilot.key}", rules.pilot_calls, rules.seed))
        job = Job(spec)
        row = engine.rows.get(job.key)
        if row is None:
            try:
                estimate = run_problem(registry, problem.make(), pilot.estimator, pilot.options, spec.budget,
                                       spec.seed or 0, progress=False)
                row = ResultRow.of(spec, estimate=estimate.model_copy(update={"trace": []}))
            except LowprobError as exc:
                row = ResultRow.of(spec, error=f"{type(exc).__name__}: {exc}")
            engine.write(row)
            if on_pilot is not None:
                on_pilot(token, row)
        if row.estimate is not None:
            pilots[token] = row.estimate.value
            if _plausible(row.estimate, band):
                kept.append(token)
            calls, seconds = calls + row.estimate.model_calls, seconds + row.estimate.seconds
    return Screening(len(candidates(gt, rules.max_hits)), seen, order, pilots, tuple(sorted(kept)), calls, seconds)


def _plausible(estimate: Estimate, band: Band) -> bool:
    """A pilot keeps its token when it hit the target at all and its interval meets the band: a short pilot at
    1e-6 sees one or two hits, whose point value lies far from p (measured: 2e-5 to 7e-5 for a 5e-6 token)."""
    low, high = (estimate.ci.low, estimate.ci.high) if estimate.ci is not None else (estimate.value, estimate.value)
    return estimate.value > 0 and _meets((low, high), band)


def _meets(interval: tuple[float, float], band: Band) -> bool:
    return interval[0] < band.high and interval[1] >= band.low


@dataclass(frozen=True)
class CrossCheck:
    """The reference procedure against brute force on tokens with a good ground truth: per token the verdict,
    whether it agrees with the ground truth within ``sigmas`` combined standard errors (reference and binomial),
    and whether its interval covers the ground truth."""

    references: tuple[Reference, ...]
    truth: dict[int, float]
    agrees: dict[int, bool]
    covers: dict[int, bool]

    @property
    def accepted(self) -> int:
        return sum(r.accepted for r in self.references)

    @property
    def agreement_rate(self) -> float:
        """Share of accepted references that agree with the ground truth (``nan`` with none accepted)."""
        return sum(self.agrees.values()) / len(self.agrees) if self.agrees else math.nan

    @property
    def coverage(self) -> float:
        """Share of accepted references whose interval contains the ground truth."""
        return sum(self.covers.values()) / len(self.covers) if self.covers else math.nan


def brute_force_tokens(gt: GroundTruth, n: int, seed: int, band: Band | None = None,
                       max_rel_error: float = 0.3) -> tuple[int, ...]:
    """Up to ``n`` tokens with at least :func:`min_hits` ground-truth hits (in ``band`` when given), by a seeded
    permutation whose seed leaves ``n`` out, so a larger ``n`` extends the same choice (a resumed run keeps its
    tokens)."""
    chosen, _ = select_tokens(gt.counts, gt.samples, band or Band(1 / (gt.samples + 1), 1.0), n,
                              reference_seed(gt.model, gt.distribution, "cross-check", "order", 0, seed),
                              min_count=min_hits(max_rel_error))
    return chosen


def cross_check(runner: ReferenceRunner, source: CompiledSource, gt: GroundTruth, tokens: Sequence[int],
                on_round: Callable[[ResultRow, Pooled], None] | None = None) -> CrossCheck:
    """Run the reference procedure on ``tokens`` and compare every accepted reference with the ground truth."""
    refs, truth, agrees, covers = [], {}, {}, {}
    for token in tokens:
        ref = runner.run(ReferenceProblem.argmax(source, gt.distribution, token), on_round)
        refs.append(ref)
        truth[token] = gt.probability(token)
        verdict = against_brute_force(ref, gt, runner.rules.sigmas)
        if verdict is not None:
            agrees[token], covers[token] = verdict
    return CrossCheck(tuple(refs), truth, agrees, covers)


def against_brute_force(ref: Reference, gt: GroundTruth, sigmas: float) -> tuple[bool, bool] | None:
    """For an accepted reference of a token: whether it agrees with the count within ``sigmas`` combined standard
    errors (the count's binomial error included) and whether its interval holds the count; else ``None``."""
    token = ref.token
    if token is None or not ref.accepted or ref.value is None or ref.std_error is None or ref.ci is None:
        return None
    p = gt.probability(token)
    gt_se = math.sqrt(p * (1 - p) / gt.samples)
    return abs(ref.value - p) <= sigmas * math.hypot(ref.std_error, gt_se), ref.ci[0] <= p <= ref.ci[1]
