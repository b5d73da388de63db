"""Bidirectional log-Z brackets of twisted SMC against ground truth (Zhao et al. 2024, §5 of the paper).

Forward SMC gives a stochastic lower bound on log p and SMC conditioned on an exact posterior sample an upper
bound; with the ground-truth log p the gaps are the KL divergences of the SMC proposal from the target in both
directions. Next-token targets take their exact samples from an argmax ground truth's hitting inputs, output
events from an output ground truth's reservoir (hitting inputs with their continuations), or by rejection.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from lowprob.api import compile_source, resolve_spec
from lowprob.core.distribution import InputDistribution
from lowprob.core.errors import LowprobError
from lowprob.core.estimator import Problem
from lowprob.core.meter import MeteredModel
from lowprob.core.model import ModelAdapter
from lowprob.core.output_target import OutputTarget
from lowprob.core.target import ArgmaxIs
from lowprob.ground_truth import GroundTruth
from lowprob.output_ground_truth import OutputGroundTruth, count_output_shard
from lowprob.plugins import LogZBracketing, Registry

REJECTION_POSITIVES = 8
"""Positives kept when an output ground truth's reservoir is empty and they are drawn by rejection."""


@dataclass(frozen=True)
class BracketRow:
    """One target's bracket against its ground truth; ``source`` says where its positives came from, the standard
    errors are over the bounds' runs (``None`` for one run or a dead one)."""

    target: str
    p_true: float
    log_p_true: float
    lower: float
    upper: float
    positives: int
    zero_runs: int
    runs: int
    source: str = "ground truth"
    lower_se: float | None = None
    upper_se: float | None = None

    @property
    def kl_forward(self) -> float:
        """log Z − lower: KL(proposal ‖ target) implied by the lower bound."""
        return self.log_p_true - self.lower

    @property
    def kl_reverse(self) -> float:
        """upper − log Z: KL(target ‖ proposal) implied by the upper bound."""
        return self.upper - self.log_p_true


def bracketing_estimator(registry: Registry, estimator: str) -> LogZBracketing:
    """A fresh instance of ``estimator`` if it has bidirectional bounds, else an error listing those that do."""
    if not issubclass(registry.estimator(estimator), LogZBracketing):
        known = [e.name for e in registry.entries("estimators") if issubclass(e.obj, LogZBracketing)]
        raise LowprobError(f"log-Z brackets need an estimator with bidirectional bounds ({', '.join(known)}), "
                           f"not {estimator!r}")
    bracketing = registry.create_estimator(estimator)
    assert isinstance(bracketing, LogZBracketing)
    return bracketing


def bracket_targets(registry: Registry, gt: GroundTruth, estimator: str, tokens: list[int], *, runs: int = 8,
                    particles: int | None = None, seed: int = 0) -> list[BracketRow]:
    """Brackets for each of ``tokens`` (they need hitting inputs in ``gt``'s reservoir) with a log-Z bracketing
    estimator's default twist (``tsmc``, ``tsmc-ctl``: see :class:`~lowprob.plugins.LogZBracketing`)."""
    bracketing = bracketing_estimator(registry, estimator)
    compiled = compile_source(registry, resolve_spec(gt.distribution, registry), model=gt.model)
    distribution = compiled.spec.distribution(None)
    rows = []
    for token in tokens:
        hits = gt.hitting_inputs(token)
        if not hits:
            raise LowprobError(f"token {token} has no hitting inputs in the ground truth's reservoir")
        text = compiled.model.vocab.token_string(token)
        problem = Problem(MeteredModel(compiled.model), distribution, ArgmaxIs(token, text))
        bracket = bracketing.bounds(problem, torch.tensor(hits), runs=runs, particles=particles, seed=seed)
        p = gt.probability(token)
        rows.append(BracketRow(repr(text), p, math.log(p), bracket.lower.mean, bracket.upper.mean, len(hits),
                               bracket.lower.zero_runs, bracket.lower.runs, "ground truth", bracket.lower.std_error,
                               bracket.upper.std_error))
    return rows


def bracket_output_event(registry: Registry, gt: OutputGroundTruth, spec: str, target: str, estimator: str, *,
                         distribution: str | None = None, runs: int = 8, particles: int | None = None, seed: int = 0,
                         rejection_draws: int = 4096) -> BracketRow:
    """:func:`bracket_output` for the output event ``target`` of ``spec`` (a registered distribution, spec file or
    DSL text), which must be the event and distribution ``gt`` counted (checked by description and hash)."""
    bracketing = bracketing_estimator(registry, estimator)
    compiled = compile_source(registry, resolve_spec(spec, registry), model=gt.model, targets=[target])
    event = compiled.spec.target(compiled.target_names.get(target, target))
    dist = compiled.spec.distribution(distribution)
    if not isinstance(event, OutputTarget):
        raise LowprobError(f"--target {target!r} is a next-token target ({event.describe()}); an output ground "
                           "truth counts an output event")
    if event.describe() != gt.target or dist.content_hash != gt.distribution_hash:
        raise LowprobError(f"the output ground truth counts {gt.target} on {gt.distribution} (hash "
                           f"{gt.distribution_hash[:16]}), not {event.describe()} on {spec} (hash "
                           f"{dist.content_hash[:16]})")
    return bracket_output(bracketing, compiled.model, dist, event, gt, runs=runs, particles=particles, seed=seed,
                          rejection_draws=rejection_draws)


def bracket_output(bracketing: LogZBracketing, model: ModelAdapter, distribution: InputDistribution,
                   event: OutputTarget, gt: OutputGroundTruth, *, runs: int = 8, particles: int | None = None,
                   seed: int = 0, rejection_draws: int = 4096) -> BracketRow:
    """The bracket of ``event`` against ``gt``'s count (the ground truth of this event, model and distribution):
    the reservoir's hits are the positives, or when it kept none the hits among ``rejection_draws`` fresh
    generations (seeded by ``seed``)."""
    if gt.hits == 0:
        raise LowprobError(f"the output ground truth has no hits of {gt.target} in {gt.samples} samples, so log p "
                           "is unknown; count more samples")
    positives, source = list(gt.reservoir), "ground truth"
    if not positives:
        shard = count_output_shard(model, distribution, gt.distribution, event, seed, rejection_draws,
                                   reservoir_size=REJECTION_POSITIVES)
        positives, source = list(shard.reservoir), f"rejection, {shard.hits} hits in {rejection_draws}"
        if not positives:
            raise LowprobError(f"no positives: the output ground truth kept no hitting inputs and {rejection_draws} "
                               f"fresh generations had no hit of {gt.target}; count one with --reservoir")
    problem = Problem(MeteredModel(model), distribution, event)
    bracket = bracketing.bounds(problem, torch.tensor(positives), runs=runs, particles=particles, seed=seed)
    p = gt.probability
    return BracketRow(gt.target, p, math.log(p), bracket.lower.mean, bracket.upper.mean, len(positives),
                      bracket.lower.zero_runs, bracket.lower.runs, source, bracket.lower.std_error,
                      bracket.upper.std_error)
