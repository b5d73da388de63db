"""Twists for twisted SMC over the input distribution: functions ψ_j(x_{≤p_j}) ≈ Pr(hit | prefix), suffix ~ D.

Twisted SMC (:mod:`lowprob.plugins.builtin.input_smc`) builds x one non-constant position at a time. At step j a
twist gives, for every particle's prefix x_{<p_j}, the table ``log ψ_j(x_{<p_j}, v)`` over the support of D at
position p_j; the proposal is ``q_j(v) ∝ D_j(v)·ψ_j(x_{<p_j}, v)``. Two twists live here:

* :class:`GradientTwist` (training-free): a linear predictor of the target's logit margin from the mean token
  gradients (the ITGIS score table), with the suffix's contribution treated as Gaussian, gives
  ``ψ_j = Φ(predicted margin / (T·σ_j))``; σ_j shrinks as fewer positions remain, so the potentials anneal
  from flat toward the indicator of the predicted margin.
* :class:`HeadTwist` (learned): the same probit form with a learned per-token margin table and a shift of the
  predicted margin read by a small torch head (linear or MLP) from the model's activations at a TransformerLens
  hook point, once every ``stride`` steps; it outputs log ψ for every candidate token at once, starts equal to
  its :class:`GradientTwist` and is trained by contrastive twist learning (CTL).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import torch

from lowprob.core.distribution import InputDistribution
from lowprob.core.errors import LowprobError
from lowprob.core.random import Enumerator, uniform
from lowprob.core.target import Target

TwistState = dict[str, torch.Tensor]
"""Per-particle twist state: tensors with the particles on the first axis (re-indexed when resampling)."""


@dataclass(frozen=True, eq=False)
class Layout:
    """Where twisted SMC makes choices: the non-constant positions ``p_j`` of a factorized D, their supports
    (sorted ids) and log-probabilities, and a template holding the constant positions' tokens."""

    positions: tuple[int, ...]
    supports: tuple[torch.Tensor, ...]
    log_d: tuple[torch.Tensor, ...]
    template: torch.Tensor

    @staticmethod
    def of(distribution: InputDistribution) -> Layout:
        if not distribution.is_factorized:
            raise LowprobError("twisted SMC needs independent positions (a factorized distribution)")
        cats = distribution.positions
        steps = [i for i, c in enumerate(cats) if c.support_size > 1]
        template = torch.tensor([int(c.ids[0]) for c in cats], dtype=torch.int64)
        return Layout(tuple(steps), tuple(cats[i].ids for i in steps), tuple(cats[i].probs.log() for i in steps),
                      template)

    @property
    def steps(self) -> int:
        return len(self.positions)

    def fill(self, n: int) -> torch.Tensor:
        """``n`` copies of the template ``[n, length]``."""
        return self.template.expand(n, -1).clone()

    def choices(self, tokens: torch.Tensor) -> torch.Tensor:
        """Each step's token as an index into that step's support, ``[n, steps]``; an error off the support."""
        out = torch.empty((tokens.shape[0], self.steps), dtype=torch.int64)
        for j, (p, support) in enumerate(zip(self.positions, self.supports, strict=True)):
            column = tokens[:, p].contiguous()
            index = torch.searchsorted(support, column).clamp(max=support.numel() - 1)
            if not torch.equal(support[index], column):
                raise LowprobError(f"a sequence has a token outside the distribution's support at position {p}")
            out[:, j] = index
        steps = set(self.positions)
        constant = [i for i in range(self.template.numel()) if i not in steps]
        if not torch.equal(tokens[:, constant], self.template[constant].expand(tokens.shape[0], -1)):
            raise LowprobError("a sequence differs from the distribution's constant positions")
        return out


def margin(logits: torch.Tensor, target: Target) -> torch.Tensor:
    """The target's logit margin (float64): best target logit minus best other logit; > 0 means a hit."""
    ids = torch.tensor(target.token_ids, device=logits.device)
    inside = logits[:, ids].max(dim=-1).values
    others = logits.index_fill(1, ids, -math.inf).max(dim=-1).values
    return (inside - others).double().cpu()


class Twist(Protocol):
    """What twisted SMC needs from a twist. ``hook`` names the activations it reads (``None``: none)."""

    hook: str | None

    def anchor(self, j: int) -> bool:
        """Whether step j reads fresh features (of the prefix x_{<p_j}, at position p_j − 1)."""

    def start(self, n: int) -> TwistState:
        """The state of ``n`` empty prefixes."""

    def log_table(self, j: int, state: TwistState,
                  features: torch.Tensor | None) -> tuple[torch.Tensor, TwistState]:
        """``log ψ_j(x_{<p_j}, v)`` ``[n, |supp D_{p_j}|]`` (float64) and the state after reading ``features``."""

    def advance(self, j: int, state: TwistState, choice: torch.Tensor) -> TwistState:
        """The state after each particle took support index ``choice[n]`` at step j."""

    def describe(self) -> dict[str, Any]:
        """JSON-serialisable facts about the twist, for diagnostics."""


@dataclass(frozen=True)
class MarginFit:
    """A linear model of the logit margin on draws from D: ``m(x) ≈ alpha + gamma·ℓ(x)``, residual s.d.
    ``sigma``, where ℓ(x) is the sum of the centred token scores of x."""

    alpha: float = 0.0
    gamma: float = 0.0
    sigma: float = 1.0
    samples: int = 0
    correlation: float = 0.0

    @staticmethod
    def fit(scores: torch.Tensor, margins: torch.Tensor) -> MarginFit:
        """Least squares; ``gamma`` is clipped at 0 (a score that does not predict the margin gives a flat twist).

        Infinite margins (a target holding every token has no competitor: +inf) carry no slope and are left
        out; with fewer than 3 finite ones the fit is flat, so the twist is flat and never NaN."""
        n = int(margins.numel())
        finite = torch.isfinite(margins)
        k = int(finite.sum())
        if k < 3:
            return MarginFit(samples=n)
        s, m = scores.double()[finite], margins.double()[finite]
        sd_m = float(m.std())
        var_s = float(s.var())
        cov = float(((s - s.mean()) * (m - m.mean())).sum()) / (k - 1)
        if var_s <= 1e-12 * (1 + float(s.abs().max()) ** 2) or cov <= 0 or sd_m == 0:
            return MarginFit(float(m.mean()), 0.0, max(sd_m, 1e-3), n, 0.0)
        gamma = cov / var_s
        alpha = float(m.mean()) - gamma * float(s.mean())
        resid = m - alpha - gamma * s
        sigma = max(math.sqrt(float((resid**2).sum()) / (k - 2)), 1e-3)
        return MarginFit(alpha, gamma, sigma, n, cov / math.sqrt(var_s) / sd_m)


class GradientTwist:
    """ψ_j(x_{≤p_j}) = Φ((α + γ·(ℓ_{≤j}(x) )) / (T·σ_j)), σ_j² = σ² + γ²·Σ_{k>j} Var_D(S̃_k): the chance that the
    linearly predicted margin ends positive when the remaining positions are drawn from D (a Gaussian sum).

    ``scores[j]`` ``[|supp_j|]`` are the token scores of step j centred under D_j (Σ_v D_j(v)·S̃_j(v) = 0), so
    the unseen suffix adds 0 to the predicted margin on average. With ``gamma = 0`` every table is constant: the
    proposal is D and the SMC is naive Monte Carlo.

    ``defensive`` δ floors the twist: ψ'_j = (1 − δ)·ψ_j + δ·ψ̄ with ψ̄ = Φ(α/(T·σ_{−1})) the twist's own prior
    chance of a hit. Since E_{D_j}[ψ'_j] ≈ ψ'_{j−1} along any path, a hit's weight ψ̄/ψ'_{m−1} stays below about
    1/δ (a naive draw's is 1), however wrong the margin model is there (a defensive mixture: Hesterberg 1995):
    the probit's Gaussian tail otherwise gives hits it did not foresee weights of ψ̄/Φ(−4) and more.
    """

    hook: str | None = None

    def __init__(self, layout: Layout, scores: tuple[torch.Tensor, ...], fit: MarginFit, temperature: float,
                 defensive: float = 0.0) -> None:
        self.layout = layout
        self.scores = scores
        self.fit = fit
        self.temperature = temperature
        self.defensive = defensive
        variances = [float((lp.exp() * s**2).sum()) for lp, s in zip(layout.log_d, scores, strict=True)]
        tails = [math.fsum(variances[j + 1:]) for j in range(layout.steps)]
        self.scales = [temperature * math.sqrt(fit.sigma**2 + fit.gamma**2 * t) for t in tails]
        prior = temperature * math.sqrt(fit.sigma**2 + fit.gamma**2 * math.fsum(variances))
        self.log_floor = (math.log(defensive) + float(torch.special.log_ndtr(torch.tensor(fit.alpha / prior)))
                          if defensive > 0 else -math.inf)

    def guard(self, log_psi: torch.Tensor) -> torch.Tensor:
        """``log((1 − δ)·ψ + δ·ψ̄)`` from ``log ψ`` (the identity for δ = 0)."""
        if self.defensive <= 0:
            return log_psi
        return torch.logaddexp(log_psi + math.log1p(-self.defensive), torch.full_like(log_psi, self.log_floor))

    @staticmethod
    def flat(layout: Layout) -> GradientTwist:
        """The constant twist: q = D, every incremental weight equal."""
        return GradientTwist(layout, tuple(torch.zeros_like(lp) for lp in layout.log_d), MarginFit(), 1.0)

    @staticmethod
    def from_gradients(layout: Layout, mean_gradients: torch.Tensor, tokens: torch.Tensor, margins: torch.Tensor,
                       temperature: float, defensive: float = 0.0) -> GradientTwist:
        """Fit on draws ``tokens`` from D with margins ``margins``; ``mean_gradients`` ``[length, vocab]`` is the
        batch-mean token-gradient table of the target score (ITGIS's S); ``defensive`` δ floors the twist."""
        scores = []
        for p, support, log_d in zip(layout.positions, layout.supports, layout.log_d, strict=True):
            raw = mean_gradients[p, support].double()
            scores.append(raw - (log_d.exp() * raw).sum())
        twist = GradientTwist(layout, tuple(scores), MarginFit(), temperature)
        fit = MarginFit.fit(twist.linear_scores(layout.choices(tokens)), margins)
        return GradientTwist(layout, tuple(scores), fit, temperature, defensive)

    def linear_scores(self, choices: torch.Tensor) -> torch.Tensor:
        """ℓ(x) = Σ_j S̃_j(x_{p_j}) for support indices ``choices`` ``[n, steps]``."""
        total = torch.zeros(choices.shape[0], dtype=torch.float64)
        for j, s in enumerate(self.scores):
            total = total + s[choices[:, j]]
        return total

    def anchor(self, j: int) -> bool:
        return False

    def start(self, n: int) -> TwistState:
        return {"score": torch.zeros(n, dtype=torch.float64)}

    def log_table(self, j: int, state: TwistState,
                  features: torch.Tensor | None) -> tuple[torch.Tensor, TwistState]:
        mean = self.fit.alpha + self.fit.gamma * (state["score"][:, None] + self.scores[j][None, :])
        return self.guard(torch.special.log_ndtr(mean / self.scales[j])), state

    def advance(self, j: int, state: TwistState, choice: torch.Tensor) -> TwistState:
        return {**state, "score": state["score"] + self.scores[j][choice]}

    def describe(self) -> dict[str, Any]:
        return {"twist": "gradient", "temperature": self.temperature, "defensive": self.defensive,
                "margin_alpha": self.fit.alpha,
                "margin_gamma": self.fit.gamma, "margin_sigma": self.fit.sigma,
                "margin_correlation": self.fit.correlation, "pilot_samples": self.fit.samples}


HeadKind = Literal["linear", "mlp"]


class HeadTwist(torch.nn.Module):
    """A learned twist: ``ψ_j(x_{≤p_j}) = Φ((α + Σ_{k≤j} [γ·S̃_k + e_k](x_{p_k}) + δ_j(f_b)) / (T·σ_j))``.

    It refines a :class:`GradientTwist` (α, γ, S̃, σ_j, T) with a learned per-step token table ``e_k`` (the
    predicted margin's per-token contributions) and a prefix-dependent shift ``δ_j(f_b)``: a head (linear, or an
    MLP with one hidden layer) on the layer-normalised activations ``f_b`` at ``hook`` of the prefix x_{<p_b},
    read at anchor steps b = 0, stride, 2·stride, … (zeros for an empty prefix), with one output per step of a
    block plus a per-step constant. All learned parts start at zero, so the untrained twist is its base; the
    probit keeps every ψ in (0, 1) and ties the tokens' tables to one predicted margin, which is what lets a
    few hundred training sequences generalise.
    """

    def __init__(self, layout: Layout, d_model: int, hook: str, kind: HeadKind, hidden: int, stride: int,
                 base: GradientTwist, generator: torch.Generator | Enumerator) -> None:
        super().__init__()
        if stride < 1:
            raise LowprobError(f"feature stride must be at least 1, got {stride}")
        self.layout = layout
        self.hook: str | None = hook
        self.kind = kind
        self.stride = stride
        self.base = base
        self.tokens = torch.nn.ParameterList(torch.nn.Parameter(torch.zeros(s.numel())) for s in layout.supports)
        self.constant = torch.nn.Parameter(torch.zeros(layout.steps))
        width = d_model
        if kind == "mlp":
            bound = 1 / math.sqrt(d_model)  # the usual uniform init, drawn from the run's generator
            self.inner = torch.nn.Parameter((2 * uniform((d_model, hidden), generator) - 1) * bound)
            self.inner_bias = torch.nn.Parameter(torch.zeros(hidden))
            width = hidden
        self.out = torch.nn.Parameter(torch.zeros(width, stride))

    def shift(self, j: int, features: torch.Tensor) -> torch.Tensor:
        """δ_j(f) ``[n]`` (float64, differentiable) from anchor features ``[n, d_model]``."""
        x = features.float() - features.float().mean(dim=-1, keepdim=True)
        x = x / torch.sqrt((x**2).mean(dim=-1, keepdim=True) + 1e-5)
        if self.kind == "mlp":
            x = torch.nn.functional.gelu(x @ self.inner + self.inner_bias)
        return (x @ self.out[:, j % self.stride] + self.constant[j]).double()

    def contribution(self, j: int) -> torch.Tensor:
        """``γ·S̃_j + e_j`` ``[|supp_j|]``: each candidate's contribution to the predicted margin."""
        return self.base.fit.gamma * self.base.scores[j] + self.tokens[j].double()

    def log_psi(self, j: int, prior: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """``log ψ_j`` ``[n, |supp_j|]`` for every candidate, given the prefix's summed contributions ``prior``."""
        mean = self.base.fit.alpha + prior[:, None] + self.contribution(j)[None, :] + self.shift(j, features)[:, None]
        return self.base.guard(torch.special.log_ndtr(mean / self.base.scales[j]))

    def contributions(self) -> torch.Tensor:
        """Every step's :meth:`contribution`, padded with zeros into ``[steps, largest support]``."""
        width = max((s.numel() for s in self.layout.supports), default=0)
        return torch.stack([torch.nn.functional.pad(self.contribution(j), (0, width - self.layout.supports[j].numel()))
                            for j in range(self.layout.steps)]) if self.layout.steps else torch.zeros((0, 0))

    @staticmethod
    def prior(contributions: torch.Tensor, choices: torch.Tensor) -> torch.Tensor:
        """Σ_k contribution_k(x_{p_k}) over the first ``k`` steps, support indices ``choices`` ``[n, k]``."""
        return contributions[torch.arange(choices.shape[1]), choices].sum(dim=1)

    def anchor(self, j: int) -> bool:
        return j % self.stride == 0

    def start(self, n: int) -> TwistState:
        return {"prior": torch.zeros(n, dtype=torch.float64)}

    def log_table(self, j: int, state: TwistState,
                  features: torch.Tensor | None) -> tuple[torch.Tensor, TwistState]:
        if self.anchor(j):
            if features is None:
                raise LowprobError("a head twist needs features at its anchor steps")
            state = {**state, "features": features}
        with torch.no_grad():
            return self.log_psi(j, state["prior"], state["features"]), state

    def advance(self, j: int, state: TwistState, choice: torch.Tensor) -> TwistState:
        with torch.no_grad():
            return {**state, "prior": state["prior"] + self.contribution(j)[choice]}

    def describe(self) -> dict[str, Any]:
        return {**self.base.describe(), "twist": f"{self.kind} head on {self.hook}", "feature_stride": self.stride,
                "head_parameters": sum(p.numel() for p in self.parameters())}
