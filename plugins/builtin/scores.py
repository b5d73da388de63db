"""Built-in score functions for the splitting estimators: the target's logit margin, and the twisted-SMC twist.

* ``margin``: ξ(x) = logit_t − max_{j≠t} logit_j at the last position (best target logit for a set target); the
  event is ξ > 0. It judges whole inputs only.
* ``twist``: the training-free probit twist of ``tsmc`` (:class:`~lowprob.plugins.builtin.twists.GradientTwist`),
  fitted on a pilot of draws from D with token gradients: ξ(x_{≤p_j}) = log ψ_j = log Φ(predicted margin / σ_j),
  the log chance that the margin ends positive when the rest of x is drawn from D. A whole input scores
  log Φ(margin / σ_{m−1}) with its exact margin, a monotone transform of ``margin``.
"""

from __future__ import annotations

from typing import Any

import torch

from lowprob.core.estimator import Problem
from lowprob.core.random import Enumerator
from lowprob.core.target import Target
from lowprob.plugins.builtin.twists import GradientTwist, Layout, margin
from lowprob.plugins.hookspecs import hookimpl
from lowprob.plugins.registry import Registrar
from lowprob.plugins.scoring import ScoreBuilder


class MarginScore:
    """ξ(x) = the target's logit margin at the last position (> 0 is a hit); no prefix scores."""

    def __init__(self, target: Target) -> None:
        self.target = target

    def complete(self, tokens: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        return margin(logits, self.target)

    def prefixes(self, tokens: torch.Tensor) -> torch.Tensor | None:
        return None

    def describe(self) -> dict[str, Any]:
        return {"score": "margin"}


def build_margin(problem: Problem, pilot: int, generator: torch.Generator | Enumerator) -> MarginScore:
    """The margin score needs no pilot."""
    return MarginScore(problem.target)


class TwistScore:
    """ξ(x_{≤p_j}) = log ψ_j of a :class:`GradientTwist`; whole inputs score log Φ(exact margin / σ_{m−1})."""

    def __init__(self, layout: Layout, twist: GradientTwist, target: Target) -> None:
        self.layout = layout
        self.twist = twist
        self.target = target

    def complete(self, tokens: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        scale = self.twist.scales[-1] if self.twist.scales else 1.0
        return torch.special.log_ndtr(margin(logits, self.target) / scale)

    def prefixes(self, tokens: torch.Tensor) -> torch.Tensor:
        choices = self.layout.choices(tokens)
        contributions = torch.stack([s[choices[:, j]] for j, s in enumerate(self.twist.scores)], dim=1) \
            if self.layout.steps else torch.zeros((tokens.shape[0], 0), dtype=torch.float64)
        fit = self.twist.fit
        predicted = fit.alpha + fit.gamma * contributions.cumsum(dim=1)
        return torch.special.log_ndtr(predicted / torch.tensor(self.twist.scales, dtype=torch.float64))

    def describe(self) -> dict[str, Any]:
        return {"score": "twist", **self.twist.describe()}


def build_twist(problem: Problem, pilot: int, generator: torch.Generator | Enumerator) -> TwistScore:
    """Fit the gradient twist on ``pilot`` draws from D (a flat twist without any)."""
    layout = Layout.of(problem.distribution)
    if pilot < 1:
        return TwistScore(layout, GradientTwist.flat(layout), problem.target)
    tokens = problem.distribution.sample(pilot, generator)
    logits, mean = problem.model.mean_target_gradients(tokens, problem.target)
    twist = GradientTwist.from_gradients(layout, mean.double().cpu(), tokens, margin(logits, problem.target), 1.0)
    return TwistScore(layout, twist, problem.target)


BUILTIN_SCORES: dict[str, ScoreBuilder] = {"margin": build_margin, "twist": build_twist}
"""The built-in score builders by name (what an estimator created without a registry can use)."""
DESCRIPTIONS = {"margin": "the target's logit margin at the last position (whole inputs only)",
                "twist": "log of tsmc's gradient twist ψ_j, for prefixes and whole inputs (pilot fit)"}


@hookimpl
def register_scores(registrar: Registrar) -> None:
    """Register the built-in score functions."""
    for name, builder in BUILTIN_SCORES.items():
        registrar.add_score(name, builder, description=DESCRIPTIONS[name])
