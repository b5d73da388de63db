"""Bidirectional log-Z brackets of twisted SMC on ground-truth targets (Zhao et al. 2024, §5 of the paper).

For a target token with exact hitting inputs in the ground truth's reservoir, forward SMC gives a stochastic
lower bound on log p and SMC conditioned on an exact hitting input an upper bound; with the ground-truth
log p the gaps are the KL divergences of the SMC proposal from the target in both directions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from lowprob.api import compile_source, resolve_spec
from lowprob.core.errors import LowprobError
from lowprob.core.estimator import Problem
from lowprob.core.meter import MeteredModel
from lowprob.core.target import ArgmaxIs
from lowprob.ground_truth import GroundTruth
from lowprob.plugins import LogZBracketing, Registry


@dataclass(frozen=True)
class BracketRow:
    """One target's bracket against its ground truth."""

    token: int
    token_text: str
    p_true: float
    log_p_true: float
    lower: float
    upper: float
    positives: int
    zero_runs: int
    runs: int

    @property
    def kl_forward(self) -> float:
        """log Z − lower: KL(proposal ‖ target) implied by the lower bound."""
        return self.log_p_true - self.lower

    @property
    def kl_reverse(self) -> float:
        """upper − log Z: KL(target ‖ proposal) implied by the upper bound."""
        return self.upper - self.log_p_true


def bracket_targets(registry: Registry, gt: GroundTruth, estimator: str, tokens: list[int], *, runs: int = 8,
                    particles: int | None = None, seed: int = 0) -> list[BracketRow]:
    """Brackets for each of ``tokens`` (they need hitting inputs in ``gt``'s reservoir) with a log-Z bracketing
    estimator's default twist (``tsmc``, ``tsmc-ctl``: see :class:`~lowprob.plugins.LogZBracketing`)."""
    if not issubclass(registry.estimator(estimator), LogZBracketing):
        known = [e.name for e in registry.entries("estimators") if issubclass(e.obj, LogZBracketing)]
        raise LowprobError(f"log-Z brackets need an estimator with bidirectional bounds ({', '.join(known)}), "
                           f"not {estimator!r}")
    bracketing = registry.create_estimator(estimator)
    assert isinstance(bracketing, LogZBracketing)
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
        rows.append(BracketRow(token, text, p, math.log(p), bracket.lower.mean, bracket.upper.mean, len(hits),
                               bracket.lower.zero_runs, bracket.lower.runs))
    return rows
