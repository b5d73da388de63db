"""Conformance kit for estimator authors: toy problems small enough to enumerate, and checks against them.

A toy problem is a tiny model (a handful of tokens, a few positions) with an input distribution whose every
sequence can be run through the model, so the exact target probability is known. Two kinds of model: tiny
random TransformerLens-native transformers, and lookup-table models whose logits are a sum of per-position
table rows (so token gradients are exact, which makes gradient-guided proposals easy to reason about).
``check_unbiased`` computes the estimator's exact expectation where its randomness can be enumerated (every
joint outcome of its ``lowprob.core.random`` draws, one run per path; tolerance ``EXACT_REL_TOL``) and otherwise
judges seeded replicates (mean within 4 standard errors, and ``inconclusive`` rather than ``passed`` when the
replicates could not have seen a relative bias of ``RESOLUTION``); ``check_error_bars`` and ``check_consistent``
run fixed seeds and judge with tolerances derived from the estimator's own spread, so a biased estimator fails.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

import torch
from scipy import stats

from lowprob.core.budget import Budget
from lowprob.core.distribution import Categorical, InputDistribution
from lowprob.core.estimate import Estimate
from lowprob.core.estimator import Estimator, Problem
from lowprob.core.meter import MeteredModel
from lowprob.core.model import ModelAdapter
from lowprob.core.output_target import Event
from lowprob.core.random import EnumerationError, Enumerator, Expectation, expectation
from lowprob.core.runner import run_estimator
from lowprob.core.target import ArgmaxIs, Target
from lowprob.core.vocabulary import ListVocabulary


def tiny_model(d_vocab: int = 6, n_ctx: int = 8, n_layers: int = 1, d_model: int = 16,
               seed: int = 0) -> ModelAdapter:
    """A seeded random TransformerLens-native model over the letters ``a, b, c, ...``."""
    from transformer_lens.model_bridge import TransformerBridge

    cfg = dict(n_layers=n_layers, d_model=d_model, n_heads=2, d_head=d_model // 2, d_mlp=4 * d_model,
               n_ctx=n_ctx, d_vocab=d_vocab, act_fn="gelu", normalization_type="LN", seed=seed)
    bridge = TransformerBridge.boot_native(cfg)  # type: ignore[attr-defined]
    vocab = ListVocabulary([chr(ord("a") + i) for i in range(d_vocab)])
    return ModelAdapter(bridge, vocab, f"tiny-{n_layers}l-v{d_vocab}-s{seed}")


class LookupTableModel(torch.nn.Module):
    """A stand-in for a TransformerLens model: last-position logits = Σ_i table[i, x_i, :].

    It speaks the part of the TransformerLens interface :class:`ModelAdapter` uses (``cfg``, ``W_E``,
    ``W_U``, calling, ``run_with_hooks`` with ``hook_embed`` and ``ln_final.hook_out``). The embedding is the
    identity (``d_model == d_vocab``), so the token-gradient score G[i, v] is exactly ``table[i, v, t]``.
    """

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        positions, d_vocab, _ = table.shape
        self.table = torch.nn.Parameter(table.to(torch.float32), requires_grad=False)
        self.W_E = torch.nn.Parameter(torch.eye(d_vocab), requires_grad=False)
        self.W_U = torch.nn.Parameter(torch.eye(d_vocab), requires_grad=False)
        self.cfg = type("Config", (), {"n_ctx": positions, "d_vocab": d_vocab, "d_model": d_vocab})()

    def run_with_hooks(self, tokens: torch.Tensor, fwd_hooks: Sequence[tuple[str, Any]] = ()) -> torch.Tensor:
        hooks = dict(fwd_hooks)
        embed = self.W_E[tokens]
        if "hook_embed" in hooks:
            embed = hooks["hook_embed"](embed, None)
        n = tokens.shape[1]
        last = torch.einsum("bpd,pdv->bv", embed, self.table[-n:]) if n else torch.zeros(0)
        if "ln_final.hook_out" in hooks:
            resid = torch.zeros(tokens.shape[0], n, self.cfg.d_model)
            resid[:, -1] = last
            last = hooks["ln_final.hook_out"](resid, None)[:, -1]
        logits = torch.zeros(tokens.shape[0], n, self.cfg.d_vocab)
        logits[:, -1] = last @ self.W_U
        return logits

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.run_with_hooks(tokens)


def lookup_model(positions: int = 3, d_vocab: int = 5, seed: int = 0, scale: float = 2.0) -> ModelAdapter:
    """A seeded random :class:`LookupTableModel` over the letters ``a, b, c, ...``."""
    gen = torch.Generator().manual_seed(seed)
    table = scale * torch.randn(positions, d_vocab, d_vocab, generator=gen)
    vocab = ListVocabulary([chr(ord("a") + i) for i in range(d_vocab)])
    return ModelAdapter(LookupTableModel(table), vocab, f"lookup-p{positions}-v{d_vocab}-s{seed}")


def exact_probability(model: ModelAdapter, distribution: InputDistribution, target: Target) -> float:
    """``Pr_{x~D}[target hit]`` by running every sequence of ``distribution`` through ``model``."""
    tokens, probs = distribution.enumerate()
    hits = target.hits(model.last_logits(tokens))
    return float(probs[hits].sum())


def argmax_probabilities(model: ModelAdapter, distribution: InputDistribution) -> torch.Tensor:
    """Exact probability of every token being the last-position argmax, ``[d_vocab]`` float64."""
    tokens, probs = distribution.enumerate()
    argmax = model.last_logits(tokens).argmax(dim=-1)
    return torch.zeros(model.d_vocab, dtype=torch.float64).index_add_(0, argmax, probs)


@dataclass
class ToyProblem:
    """A problem together with its exact answer."""

    model: ModelAdapter
    distribution: InputDistribution
    target: Event
    exact: float

    def problem(self) -> Problem:
        """A fresh :class:`Problem` with its own meter."""
        return Problem(MeteredModel(self.model), self.distribution, self.target)


def toy_problem(seed: int = 0, d_vocab: int = 6, length: int = 3, band: tuple[float, float] = (0.005, 0.3),
                model: ModelAdapter | None = None) -> ToyProblem:
    """A random toy problem: random per-position weights, and the target whose exact probability is the
    smallest one inside ``band`` (so it is rare but estimable).

    Valid settings: ``length >= 1`` positions, each over all ``d_vocab`` tokens, so the exact answer runs all
    ``d_vocab ** length`` sequences through the model: at most 1,000,000 (the enumeration limit; 6 tokens × 7
    positions works, × 8 does not), and a few hundred keep exact-mode checks fast. ``model`` defaults to a
    :func:`tiny_model` with context ``max(8, length)``; one you pass must have ``d_vocab`` tokens and a context
    of at least ``length`` (e.g. ``lookup_model(positions=length, d_vocab=d_vocab)``). Whether a token's exact
    probability falls inside ``band`` depends on ``seed``: with 2 or 3 tokens one token is often the argmax
    almost everywhere.

    Raises ``ValueError`` when no token's probability lies in ``band`` (the message lists them: try another
    ``seed`` or a wider band) or ``model`` has another vocabulary size, and ``LowprobError`` when the model's
    context or the enumeration limit cannot take ``length``.
    """
    if model is not None and model.d_vocab != d_vocab:
        raise ValueError(f"toy problem {seed}: d_vocab={d_vocab} but the model {model.name!r} has {model.d_vocab} "
                         f"tokens; pass d_vocab={model.d_vocab}")
    gen = torch.Generator().manual_seed(seed)
    model = model or tiny_model(d_vocab=d_vocab, n_ctx=max(8, length), seed=seed)
    positions = [
        Categorical.from_weights(torch.arange(d_vocab), torch.rand(d_vocab, generator=gen, dtype=torch.float64)
                                 + 0.05)
        for _ in range(length)
    ]
    dist = InputDistribution.independent(positions, d_vocab, name=f"toy-{seed}")
    probs = argmax_probabilities(model, dist)
    inside = [(float(p), t) for t, p in enumerate(probs.tolist()) if band[0] <= p <= band[1]]
    if not inside:
        raise ValueError(f"toy problem {seed}: no token has probability in {band}; got {probs.tolist()}")
    exact, token = min(inside)
    return ToyProblem(model, dist, ArgmaxIs(token, model.vocab.token_string(token)), exact)


MAX_PATHS = 10_000
"""Default cap on the runs of an exact expectation (one run per joint outcome of the estimator's draws)."""

EXACT_REL_TOL = 1e-9
"""Relative tolerance of the exact check. Path probabilities are products of a few dozen float64 factors and the
expectation is an exactly rounded sum (``math.fsum``), so rounding moves it by about 1e-15 relative; so do the
estimators' own float64 weights. 1e-9 leaves six orders of magnitude for that, and is far below any bias a
replicate test could see."""

RESOLUTION = 0.10
"""The relative bias a replicate check must be able to see before it may say ``passed``."""

POWER = 0.8
"""The probability with which a replicate check must detect a bias of its ``detectable_bias``."""

UnbiasedMode = Literal["auto", "exact", "replicates"]
"""How :func:`check_unbiased` judges: ``exact`` enumerates the estimator's draws, ``replicates`` runs seeds,
``auto`` enumerates when it can and otherwise runs seeds."""

Verdict = Literal["passed", "failed", "inconclusive"]


@dataclass
class CheckReport:
    """What a statistical check measured, for assertion messages.

    ``passed`` is true only for the verdict ``passed``; ``inconclusive`` means the check saw no bias but could
    not have seen one of ``RESOLUTION`` (:func:`check_unbiased` in replicate mode). ``mode`` is how it judged
    (``exact`` or ``replicates``); ``mean`` is the exact expectation or the replicate mean; ``paths`` is the
    number of enumerated paths in exact mode; ``detectable_bias`` is the smallest relative bias the replicates
    detect with probability ``POWER`` (``rel_tol`` in exact mode, where any larger bias fails).
    """

    passed: bool
    detail: str
    estimates: list[Estimate]
    mode: str = "replicates"
    mean: float | None = None
    paths: int = 0
    inconclusive: bool = False
    detectable_bias: float | None = None

    @property
    def verdict(self) -> Verdict:
        """``passed``, ``failed`` or ``inconclusive``."""
        return "passed" if self.passed else "inconclusive" if self.inconclusive else "failed"


def replicate(estimator_cls: type[Estimator[Any]], toy: ToyProblem, budget: Budget, seeds: range,
              options: Mapping[str, Any] | None = None) -> list[Estimate]:
    """Run the estimator once per seed on fresh meters."""
    estimator = estimator_cls(options)
    return [run_estimator(estimator, toy.problem(), budget, seed, progress=False) for seed in seeds]


def exact_expectation(estimator_cls: type[Estimator[Any]], toy: ToyProblem, budget: Budget,
                      options: Mapping[str, Any] | None = None, max_paths: int = MAX_PATHS) -> Expectation:
    """The exact expected estimate: one run per joint outcome of the estimator's draws, weighted by its
    probability (see :func:`lowprob.core.random.expectation`).

    Raises :class:`~lowprob.core.random.EnumerationError` when the draws cannot be enumerated within
    ``max_paths`` runs, and torch's ``TypeError`` (with a note) when a draw bypasses ``lowprob.core.random``.
    """
    estimator = estimator_cls(options)

    def run(enumerator: Enumerator) -> float:
        # Deliberately not a torch.Generator: only lowprob.core.random can draw from it, anything else fails.
        generator = cast(torch.Generator, enumerator)
        return run_estimator(estimator, toy.problem(), budget, 0, progress=False, generator=generator).raw_value

    try:
        return expectation(run, max_paths)
    except (TypeError, AttributeError) as error:
        error.add_note(f"estimator {estimator.name!r} used its generator outside lowprob.core.random, so its "
                       "draws cannot be enumerated; draw through lowprob.core.random to allow the exact check")
        raise


def check_unbiased(estimator_cls: type[Estimator[Any]], toy: ToyProblem, budget: Budget,
                   seeds: range = range(100), options: Mapping[str, Any] | None = None,
                   sigmas: float = 4.0, mode: UnbiasedMode = "auto", max_paths: int = MAX_PATHS,
                   rel_tol: float = EXACT_REL_TOL) -> CheckReport:
    """The estimator's expected estimate equals the exact value: exactly where its draws can be enumerated,
    otherwise (or with ``mode="replicates"``) within ``sigmas`` standard errors of seeded replicates.

    ``mode="auto"`` tries the exact expectation (at most ``max_paths`` runs) and falls back to replicates,
    saying why in ``detail``; ``mode="exact"`` raises instead of falling back. The exact check passes when the
    expectation is within ``rel_tol`` (relative) of the exact value. The replicate check fails when the mean is
    more than ``sigmas`` standard errors off, and is ``inconclusive`` (not passed) when the smallest relative
    bias it detects with probability ``POWER``, ``(sigmas + z_POWER) · sem / exact``, exceeds ``RESOLUTION``:
    add seeds or budget, or use a toy small enough to enumerate.
    """
    if mode != "replicates":
        try:
            return _check_exact(estimator_cls, toy, budget, options, max_paths, rel_tol)
        except (EnumerationError, TypeError, AttributeError) as error:
            if mode == "exact":
                raise
            report = _check_replicates(estimator_cls, toy, budget, seeds, options, sigmas)
            reason = str(error).splitlines()[0]
            report.detail = f"exact mode unavailable ({type(error).__name__}: {reason}), so replicates: {report.detail}"
            return report
    return _check_replicates(estimator_cls, toy, budget, seeds, options, sigmas)


def _check_exact(estimator_cls: type[Estimator[Any]], toy: ToyProblem, budget: Budget,
                 options: Mapping[str, Any] | None, max_paths: int, rel_tol: float) -> CheckReport:
    """The exact expectation lies within ``rel_tol`` (relative) of the exact value."""
    result = exact_expectation(estimator_cls, toy, budget, options, max_paths)
    scale = max(abs(result.value), toy.exact)
    gap = abs(result.value - toy.exact) / scale if scale else 0.0
    passed = gap <= rel_tol
    detail = (f"exact expectation {result.value:.17g} vs exact {toy.exact:.17g}: relative gap "
              f"{gap:.3g} (tolerance {rel_tol:g}; {result.paths} paths, "
              f"total probability {result.mass:.17g})")
    return CheckReport(passed, detail, [], mode="exact", mean=result.value, paths=result.paths,
                       detectable_bias=rel_tol)


def _check_replicates(estimator_cls: type[Estimator[Any]], toy: ToyProblem, budget: Budget, seeds: range,
                      options: Mapping[str, Any] | None, sigmas: float) -> CheckReport:
    """The mean of seeded replicate estimates lies within ``sigmas`` standard errors of the exact value.

    The standard error of the mean comes from the replicates' own spread, so the tolerance shrinks as the
    estimator gets more precise and a biased estimator fails.
    """
    estimates = replicate(estimator_cls, toy, budget, seeds, options)
    values = [e.raw_value for e in estimates]
    mean = statistics.fmean(values)
    sem = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else math.inf
    if sem == 0:
        unbiased = math.isclose(mean, toy.exact, rel_tol=1e-9, abs_tol=1e-15)
    else:
        unbiased = abs(mean - toy.exact) <= sigmas * sem
    detectable = (sigmas + float(stats.norm.ppf(POWER))) * sem / toy.exact
    inconclusive = unbiased and detectable > RESOLUTION
    verdict = "failed" if not unbiased else "inconclusive" if inconclusive else "passed"
    detail = (f"{verdict}: mean {mean:.6g} vs exact {toy.exact:.6g}: "
              f"{abs(mean - toy.exact) / sem if sem else 0:.2f} standard errors (sem {sem:.3g}, {len(values)} "
              f"replicates, tolerance {sigmas}); detects a relative bias of {detectable:.3g} with probability "
              f"{POWER:g}" + (f", more than {RESOLUTION:g}: add seeds or budget, or use a toy small enough to "
                              "enumerate" if inconclusive else ""))
    return CheckReport(unbiased and not inconclusive, detail, estimates, mode="replicates", mean=mean,
                       inconclusive=inconclusive, detectable_bias=detectable)


def check_error_bars(estimator_cls: type[Estimator[Any]], toy: ToyProblem, budget: Budget,
                     seeds: range = range(200), options: Mapping[str, Any] | None = None,
                     level: float = 0.95, sigmas: float = 3.0) -> CheckReport:
    """The reported intervals cover the exact value at (at least) their nominal rate.

    Coverage is a binomial count: it passes when it is no more than ``sigmas`` binomial standard deviations
    below ``level``. Conservative intervals (coverage above nominal) pass.
    """
    estimates = replicate(estimator_cls, toy, budget, seeds, options)
    if any(e.ci is None for e in estimates):
        return CheckReport(False, "some estimates have no confidence interval", estimates)
    covered = sum(e.ci.low <= toy.exact <= e.ci.high for e in estimates if e.ci is not None)
    n = len(estimates)
    floor = level - sigmas * math.sqrt(level * (1 - level) / n)
    passed = covered / n >= floor
    return CheckReport(passed, f"coverage {covered}/{n} = {covered / n:.3f}; floor {floor:.3f} "
                               f"(nominal {level})", estimates)


def check_consistent(estimator_cls: type[Estimator[Any]], toy: ToyProblem, budgets: Sequence[Budget],
                     seeds: range = range(20), options: Mapping[str, Any] | None = None) -> CheckReport:
    """The root-mean-square error against the exact value shrinks as the budget grows (for MCMC-type
    estimators, which are consistent but not unbiased).

    Passes when the RMSE at the largest budget is below the RMSE at the smallest one by more than the
    sampling noise of the RMSE estimates themselves (each RMSE's standard error from its replicates).
    """
    rmses, noise, everything = [], [], []
    for budget in budgets:
        estimates = replicate(estimator_cls, toy, budget, seeds, options)
        everything += estimates
        sq = [(e.raw_value - toy.exact) ** 2 for e in estimates]
        mse = statistics.fmean(sq)
        rmse = math.sqrt(mse)
        rmses.append(rmse)
        # delta method: s.e.(sqrt(m)) = s.e.(m) / (2 sqrt(m))
        noise.append(statistics.stdev(sq) / math.sqrt(len(sq)) / (2 * rmse) if rmse > 0 else 0.0)
    passed = rmses[-1] + 2 * noise[-1] < rmses[0] - 2 * noise[0]
    detail = "RMSE by budget: " + ", ".join(
        f"{b.describe()}: {r:.3g} ± {n:.2g}" for b, r, n in zip(budgets, rmses, noise, strict=True))
    return CheckReport(passed, detail, everything)


def check_sane(estimate: Estimate) -> list[str]:
    """Problems with an estimate's basic invariants (finite, non-negative, zero hits never NaN)."""
    problems = []
    if not (math.isfinite(estimate.value) and estimate.value >= 0):
        problems.append(f"value {estimate.value!r} is not a finite non-negative number")
    if estimate.std_error is not None and not math.isfinite(estimate.std_error):
        problems.append(f"std_error {estimate.std_error!r} is not finite")
    if estimate.ci is not None and not (0 <= estimate.ci.low <= estimate.ci.high):
        problems.append(f"interval [{estimate.ci.low}, {estimate.ci.high}] is malformed")
    if estimate.value == 0 and estimate.ci is not None and not math.isfinite(estimate.ci.high):
        problems.append("a zero estimate has no finite upper bound")
    return problems
