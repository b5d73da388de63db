"""Twisted SMC over the input distribution, contrastive twist learning and bidirectional log-Z bounds.

Z = Σ_x D(x)·1[hit(x)] is the normalising constant of the final target D(x)·1[hit(x)]. Particles are prefixes,
extended one non-constant position at a time (steps j = 0 … m−1 at positions p_j); the intermediate targets are
π_j ∝ D(x_{≤p_j})·ψ_j(x_{≤p_j}) for a twist ψ (:mod:`lowprob.plugins.builtin.twists`). With the twist-induced
proposal ``q_j(v) ∝ D_j(v)·ψ_j(x_{<p_j}, v)`` the incremental weight of step j < m−1 is
``Σ_v D_j(v)·ψ_j(x_{<p_j}, v) / ψ_{j−1}(x_{<p_j})`` (ψ_{−1} = 1), and the last step replaces ψ by the exact
final potential: ``D_j(x)·1[hit(x)] / (q_j(x_{p_j})·ψ_{m−2})``. The product of mean incremental weights
(:class:`lowprob.core.smc.ParticleWeights`) is unbiased for Z whatever the twist, as long as ψ > 0 wherever a
hit is still possible.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from lowprob.core.errors import LowprobError
from lowprob.core.meter import MeteredModel
from lowprob.core.random import Enumerator, categorical
from lowprob.core.smc import LogBound, LogZBracket, ParticleWeights, Resampling, normalized_weights
from lowprob.core.target import Target
from lowprob.plugins.builtin.twists import HeadTwist, Layout, Twist, TwistState, margin

FinalPotential = Callable[[torch.Tensor], torch.Tensor]
"""``log G`` of the final target from last-position logits ``[n, vocab]`` (default: log 1[hit])."""


@dataclass(frozen=True)
class StepRecord:
    """The population entering step j, for contrastive twist learning: the twist state, the choices of steps
    < j, and ``offset`` ``[N, |supp_j|]`` = log W_n + log D_j(v) − log ψ_{j−1}(x_n), so that
    ``logsumexp(offset + log ψ_j)`` estimates log Z_j/Z_{j−1} for π_j ∝ D·ψ_j under any twist ψ_j."""

    state: TwistState
    choices: torch.Tensor
    offset: torch.Tensor


@dataclass(frozen=True)
class Sweep:
    """One SMC run: log Ẑ, the final particles with their log weights, hits and initial ancestors (``eve``,
    for the genealogy variance), and (when recorded) every step's population plus the anchor features along
    each final particle's path."""

    log_z: float
    tokens: torch.Tensor
    log_weights: torch.Tensor
    hits: torch.Tensor
    resamples: int
    min_ess_fraction: float
    choices: torch.Tensor
    eve: torch.Tensor
    records: tuple[StepRecord, ...] = ()
    path_features: tuple[torch.Tensor, ...] = ()


def _unique_rows(tokens: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """``fn`` applied to the distinct rows of ``tokens`` only (copies after resampling cost one pass)."""
    unique, inverse = torch.unique(tokens, dim=0, return_inverse=True)
    return fn(unique)[inverse]


def prefix_features(model: MeteredModel, prefix: torch.Tensor, hook: str) -> torch.Tensor:
    """Activations at ``hook`` at the last position of each prefix ``[n, p]`` → ``[n, d_model]`` (zeros when
    p = 0); one forward pass per distinct prefix."""
    if prefix.shape[1] == 0:
        return torch.zeros(prefix.shape[0], model.d_model)
    return _unique_rows(prefix, lambda t: model.activations(t, hook)[:, -1, :])


def replicate_calls(layout: Layout, twist: Twist, n: int) -> int:
    """The most forward passes one run of ``n`` particles can cost: one per distinct prefix at each anchor step
    (one in all for step 0, whose prefix is constant; none for an empty prefix) and ``n`` final passes."""
    calls = n
    if twist.hook is not None:
        for j, p in enumerate(layout.positions):
            if twist.anchor(j) and p > 0:
                calls += 1 if j == 0 else n
    return calls


def _reindex(state: TwistState, ancestors: torch.Tensor) -> TwistState:
    return {k: v[ancestors] for k, v in state.items()}


def run_twisted_smc(model: MeteredModel, layout: Layout, twist: Twist, target: Target, n: int,
                    generator: torch.Generator | Enumerator, *, resampling: Resampling = "systematic",
                    ess_threshold: float = 0.5, reference: torch.Tensor | None = None,
                    final: FinalPotential | None = None, record: bool = False) -> Sweep:
    """One twisted-SMC run of ``n`` particles; ``log_z`` is log Ẑ (``-inf`` when every particle ends at 0).

    ``reference`` (a token sequence ``[length]``) runs conditional SMC: particle 0 follows it and survives
    every (multinomial) resampling; driven by exact target samples this gives the upper bound on log Z.
    ``final`` replaces the indicator (contrastive twist learning trains toward a tempered final potential);
    ``record`` keeps every step's population for it.
    """
    return _sweep(model, layout, twist, target, n, 1, generator, resampling, ess_threshold, reference, final,
                  record)[0]


def run_replicates(model: MeteredModel, layout: Layout, twist: Twist, target: Target, n: int, replicates: int,
                   generator: torch.Generator | Enumerator, *, resampling: Resampling = "systematic",
                   ess_threshold: float = 0.5) -> list[Sweep]:
    """``replicates`` independent runs of ``n`` particles, stepped together: one batch of tensor operations and
    model passes per step, weights and resampling kept apart per run."""
    return _sweep(model, layout, twist, target, n, replicates, generator, resampling, ess_threshold, None, None,
                  False)


def _sweep(model: MeteredModel, layout: Layout, twist: Twist, target: Target, n: int, replicates: int,
           generator: torch.Generator | Enumerator, resampling: Resampling, ess_threshold: float,
           reference: torch.Tensor | None, final: FinalPotential | None, record: bool) -> list[Sweep]:
    """The runs of :func:`run_twisted_smc` and :func:`run_replicates`; run r holds rows r·n … (r+1)·n − 1."""
    total = n * replicates
    runs = [slice(r * n, (r + 1) * n) for r in range(replicates)]
    tokens = layout.fill(total)
    choices = torch.zeros((total, layout.steps), dtype=torch.int64)
    eve = torch.arange(total) % n
    weights = [ParticleWeights.start(n) for _ in runs]
    if layout.steps == 0:  # nothing random: Z is the indicator of the one sequence
        logits = model.last_logits(tokens[:1])
        log_phi = final(logits) if final is not None else torch.where(target.hits(logits), 0.0, -math.inf)
        hits = target.hits(logits).cpu().expand(n)
        done = [w.reweight(log_phi.double().cpu().expand(n)) for w in weights]
        return [Sweep(w.log_evidence, tokens[rows], w.log_weights, hits, 0, 1.0, choices[rows], torch.arange(n))
                for w, rows in zip(done, runs, strict=True)]
    keep, method = (0, "multinomial") if reference is not None else (None, resampling)
    forced = layout.choices(reference[None, :])[0] if reference is not None else None
    state = twist.start(total)
    log_psi = torch.zeros(total, dtype=torch.float64)
    records: list[StepRecord] = []
    path_features: list[torch.Tensor] = []
    last = layout.steps - 1
    for j, (p, support, log_d) in enumerate(zip(layout.positions, layout.supports, layout.log_d, strict=True)):
        features = None
        if twist.hook is not None and twist.anchor(j):
            features = prefix_features(model, tokens[:, :p], twist.hook)
            path_features.append(features)
        table, state = twist.log_table(j, state, features)
        logits = log_d[None, :] + table
        log_norm = torch.logsumexp(logits, dim=1)
        alive = torch.isfinite(log_norm)
        # A particle whose every continuation has ψ = 0 is dead (weight 0); it draws from D to keep shapes.
        probs = torch.where(alive[:, None], torch.exp(logits - torch.where(alive, log_norm, 0.0)[:, None]),
                            log_d.exp()[None, :])
        choice = categorical(probs, 1, generator)[:, 0]
        if forced is not None:
            choice[0] = forced[j]
        chosen = table.gather(1, choice[:, None])[:, 0]
        twisted = torch.where(alive, log_norm - log_psi, -math.inf)
        if record:
            entering = torch.cat([w.normalized() for w in weights]).log()
            records.append(StepRecord(state, choices[:, :j].clone(), entering[:, None] + log_d[None, :]
                                      - log_psi[:, None]))
        tokens[:, p] = support[choice]
        choices[:, j] = choice
        if j < last:
            log_psi = chosen
            state = twist.advance(j, state, choice)
            ancestors = torch.arange(total)
            for r, rows in enumerate(runs):
                weights[r], picked = weights[r].reweight(twisted[rows]).resample_if_needed(ess_threshold, method,
                                                                                          generator, keep)
                if picked is not None:
                    ancestors[rows] = picked + rows.start
            if not torch.equal(ancestors, torch.arange(total)):
                tokens, choices, eve = tokens[ancestors], choices[ancestors], eve[ancestors]
                log_psi = log_psi[ancestors]
                state = _reindex(state, ancestors)
                path_features = [f[ancestors] for f in path_features]
    final_logits = _unique_rows(tokens, model.last_logits)
    hits = target.hits(final_logits).cpu()
    log_phi = (final(final_logits).double().cpu() if final is not None
               else torch.where(hits, 0.0, -math.inf).double())
    increments = torch.where(alive, log_norm - chosen + log_phi - log_psi, -math.inf)
    done = [w.reweight(increments[rows]) for w, rows in zip(weights, runs, strict=True)]
    return [Sweep(w.log_evidence, tokens[rows], w.log_weights, hits[rows], w.resamples, w.min_ess_fraction,
                  choices[rows], eve[rows], tuple(records), tuple(f[rows] for f in path_features))
            for w, rows in zip(done, runs, strict=True)]


def proposal_log_weights(layout: Layout, twist: Twist, tokens: torch.Tensor) -> torch.Tensor:
    """``log D(x)/q(x)`` ``[k]`` of each sequence under the twist-induced sequential proposal
    ``q(x) = Π_j q_j(x_{p_j} | x_{<p_j})`` (a feature-free twist): the weight a hitting input gets relative to a
    naive draw's 1 in a run without resampling. Over exact hitting inputs (draws of D·1[hit]/Z) its mean is
    ``E_σ[D/q]``, the per-particle variance relative to naive Monte Carlo's; its large values are the hits the
    twist undersamples, which carry the estimate's skew."""
    if twist.hook is not None:
        raise LowprobError("proposal_log_weights needs a twist that reads no features")
    choices = layout.choices(tokens)
    state = twist.start(tokens.shape[0])
    out = torch.zeros(tokens.shape[0], dtype=torch.float64)
    for j, log_d in enumerate(layout.log_d):
        table, state = twist.log_table(j, state, None)
        log_q = torch.log_softmax(log_d[None, :] + table, dim=1)
        out += log_d[choices[:, j]] - log_q.gather(1, choices[:, j:j + 1])[:, 0]
        state = twist.advance(j, state, choices[:, j])
    return out


def tempered_potential(target: Target, temperature: float) -> FinalPotential:
    """``log Φ(margin/τ)``: a dense surrogate of the indicator (τ → 0 recovers it) for training twists."""
    return lambda logits: torch.special.log_ndtr(margin(logits, target) / temperature)


def ctl_loss(twist: HeadTwist, records: Sequence[StepRecord], features: Sequence[torch.Tensor],
             choices: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Contrastive twist learning, ``Σ_j log Ẑ_j(θ) − E_σ[log ψ_j^θ]`` over the steps, divided by their number.

    ``log Ẑ_j(θ)`` estimates the log normaliser of π_j ∝ D·ψ_j^θ (up to a constant) from the recorded
    population entering step j, importance-reweighted from the twist that drew it with every candidate token
    summed exactly, so its gradient is E_{π_j}[∇log ψ_j] under the current θ and several optimiser steps per SMC
    run stay consistent; the gradient of the whole is ``Σ_j E_{π_j}[∇log ψ_j] − E_σ[∇log ψ_j]``. The positives
    are paths with anchor ``features`` (one ``[k, d]`` per anchor step), support indices ``choices``
    ``[k, steps]`` and normalised ``weights`` ``[k]``.
    """
    steps = len(records)
    contributions = twist.contributions()
    positive = torch.zeros((), dtype=torch.float64)
    for j in range(steps):
        table = twist.log_psi(j, twist.prior(contributions, choices[:, :j]), features[j // twist.stride])
        positive = positive + (weights * table.gather(1, choices[:, j:j + 1])[:, 0]).sum()
    negative = torch.zeros((), dtype=torch.float64)
    for j, rec in enumerate(records):
        if torch.isfinite(rec.offset).any():
            table = twist.log_psi(j, twist.prior(contributions, rec.choices), rec.state["features"])
            negative = negative + torch.logsumexp((rec.offset + table).flatten(), dim=0)
    return (negative - positive) / max(steps, 1)


@dataclass(frozen=True)
class RoundReport:
    """One round of twist training: the tempering, the loss before and after the updates (``None``: no data
    yet), whether the round's run gave positives, and its SMC run."""

    margin_temperature: float | None
    positives: bool
    loss_before: float | None
    loss_after: float | None
    log_z: float | None
    min_ess_fraction: float
    hits: int


def positive_features(model: MeteredModel, layout: Layout, twist: HeadTwist,
                      positives: torch.Tensor) -> list[torch.Tensor]:
    """Anchor features of exact target samples ``[k, length]`` from one forward pass each (the model is
    causal: position p − 1 of the whole sequence sees exactly the prefix x_{<p})."""
    hook = twist.hook
    assert hook is not None
    acts = model.activations(positives, hook)
    return [acts[:, p - 1, :] if p > 0 else torch.zeros(positives.shape[0], acts.shape[-1])
            for j, p in enumerate(layout.positions) if twist.anchor(j)]


def train_twist(model: MeteredModel, layout: Layout, twist: HeadTwist, target: Target,
                generator: torch.Generator | Enumerator, *, rounds: int, particles: int, steps: int,
                learning_rate: float, margin_temperatures: Sequence[float], resampling: Resampling = "systematic",
                ess_threshold: float = 0.5, positives: torch.Tensor | None = None,
                weight_decay: float = 0.0) -> list[RoundReport]:
    """Contrastive twist learning (Zhao et al. 2024): each round runs twisted SMC with the current twist (the
    negatives: its intermediate populations) and takes ``steps`` Adam steps on the mean :func:`ctl_loss` of
    every round so far (older populations stay valid: the loss reweights them to the current twist).

    Positives are the final particles weighted toward the tempered potential Φ(margin/τ_r), τ_r from
    ``margin_temperatures`` (dense even when no particle hits), or the given exact target samples ``positives``
    ``[k, length]`` (uniform weights). ``weight_decay`` is an L2 pull of the learned parts toward zero, i.e.
    toward the base twist: with few distinct positives an unregularised twist memorises them.
    """
    optimizer = torch.optim.Adam(twist.parameters(), lr=learning_rate, weight_decay=weight_decay)
    exact = None
    if positives is not None:
        exact = (positive_features(model, layout, twist, positives), layout.choices(positives),
                 torch.full((positives.shape[0],), 1.0 / positives.shape[0], dtype=torch.float64))
    reports: list[RoundReport] = []
    data: list[tuple[Sequence[StepRecord], Sequence[torch.Tensor], torch.Tensor, torch.Tensor]] = []
    for r in range(rounds):
        tau = None if exact is not None else margin_temperatures[r]
        final = tempered_potential(target, tau) if tau is not None else None
        sweep = run_twisted_smc(model, layout, twist, target, particles, generator, resampling=resampling,
                                ess_threshold=ess_threshold, final=final, record=True)
        feats, chosen, w = exact or (list(sweep.path_features), sweep.choices, normalized_weights(sweep.log_weights))
        log_z = sweep.log_z if math.isfinite(sweep.log_z) else None
        positive = float(w.sum()) > 0
        if positive:
            data.append((sweep.records, feats, chosen, w))
        if not data:
            reports.append(RoundReport(tau, False, None, None, log_z, sweep.min_ess_fraction, int(sweep.hits.sum())))
            continue
        losses = []
        for _ in range(steps + 1):
            loss = sum((ctl_loss(twist, *item) for item in data), torch.zeros((), dtype=torch.float64)) / len(data)
            losses.append(float(loss.detach()))
            if len(losses) > steps:
                break
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        reports.append(RoundReport(tau, positive, losses[0], losses[-1], log_z, sweep.min_ess_fraction,
                                   int(sweep.hits.sum())))
    return reports


def log_z_lower_bound(model: MeteredModel, layout: Layout, twist: Twist, target: Target, *, particles: int,
                      runs: int, generator: torch.Generator | Enumerator, resampling: Resampling = "systematic",
                      ess_threshold: float = 0.5) -> LogBound:
    """E[log Ẑ] ≤ log Z (Jensen) estimated by the mean log Ẑ of ``runs`` independent runs."""
    return LogBound.of([run_twisted_smc(model, layout, twist, target, particles, generator, resampling=resampling,
                                        ess_threshold=ess_threshold).log_z for _ in range(runs)])


def log_z_upper_bound(model: MeteredModel, layout: Layout, twist: Twist, target: Target, positives: torch.Tensor, *,
                      particles: int, generator: torch.Generator | Enumerator,
                      ess_threshold: float = 0.5) -> LogBound:
    """E[log Ẑ] ≥ log Z for conditional SMC whose reference path is an exact sample of D·1[hit]/Z: the mean
    over one run per row of ``positives`` ``[k, length]`` (exact hitting inputs, e.g. a ground-truth
    reservoir; each must hit, or this raises)."""
    if positives.dim() != 2 or positives.shape[0] == 0:
        raise LowprobError(f"positives must be a non-empty [k, positions] token tensor, got {list(positives.shape)}")
    log_z = []
    for row in positives:
        sweep = run_twisted_smc(model, layout, twist, target, particles, generator, ess_threshold=ess_threshold,
                                reference=row)
        if not bool(sweep.hits[0]):
            raise LowprobError("a positive sample does not hit the target; the upper bound needs exact hitting "
                               "inputs")
        log_z.append(sweep.log_z)
    return LogBound.of(log_z)


def bidirectional_bounds(model: MeteredModel, layout: Layout, twist: Twist, target: Target, positives: torch.Tensor,
                         *, particles: int, runs: int, generator: torch.Generator | Enumerator,
                         resampling: Resampling = "systematic", ess_threshold: float = 0.5) -> LogZBracket:
    """``[lower, upper]`` brackets of log Z from ``runs`` forward runs and one conditional run per positive."""
    lower = log_z_lower_bound(model, layout, twist, target, particles=particles, runs=runs, generator=generator,
                              resampling=resampling, ess_threshold=ess_threshold)
    upper = log_z_upper_bound(model, layout, twist, target, positives, particles=particles, generator=generator,
                              ess_threshold=ess_threshold)
    return LogZBracket(lower, upper)
