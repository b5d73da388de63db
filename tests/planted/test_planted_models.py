"""The planted models compute their rule: on every count state, on sampled inputs, through every forward path."""

from __future__ import annotations

import itertools
import random
from fractions import Fraction

import pytest
import torch

from lowprob.core.distribution import InputDistribution
from lowprob.core.exact import exact_probability
from lowprob.core.model import ModelAdapter
from lowprob.core.target import Target
from lowprob.dsl import load_spec
from lowprob.plugins import load_registry
from lowprob.plugins.builtin.planted import BODY, HIT, LENGTH, Family, families, planted_vocabulary

FAMILIES = {family.name: family for family in families()}


@pytest.fixture(scope="module")
def models() -> dict[str, ModelAdapter]:
    registry = load_registry(entry_points=False)
    return {name: registry.model(family.model) for name, family in FAMILIES.items()}


def _neutral(family: Family) -> int:
    """A letter in none of the circuit's classes."""
    used = set().union(*(cls.tokens for cls in family.circuit.classes))
    return next(t for t in range(4, planted_vocabulary().size) if t not in used)


def count_states(family: Family) -> list[tuple[int, ...]]:
    """Every feasible vector of uncapped class counts on BOS + 32 tokens."""
    classes = family.circuit.classes
    ranges = [range(2) if cls.positions is not None else range(BODY + 1) for cls in classes]
    states = []
    for counts in itertools.product(*ranges):
        taken = sum(c for c, cls in zip(counts, classes, strict=True) if cls.positions is not None)
        if sum(c for c, cls in zip(counts, classes, strict=True) if cls.positions is None) <= BODY - taken:
            states.append(counts)
    return states


def realize(family: Family, counts: tuple[int, ...], rng: random.Random) -> list[int]:
    """A random sequence with exactly ``counts`` (positional classes first, then uniform classes elsewhere)."""
    seq = [0] + [_neutral(family)] * BODY
    free = set(range(1, LENGTH))
    for cls, c in zip(family.circuit.classes, counts, strict=True):
        if cls.positions is not None and c:
            (p,) = cls.positions
            seq[p] = rng.choice(sorted(cls.tokens))
            free.discard(p)
    for cls, c in zip(family.circuit.classes, counts, strict=True):
        if cls.positions is None:
            for p in rng.sample(sorted(free), c):
                seq[p] = rng.choice(sorted(cls.tokens))
                free.discard(p)
    return seq


def capped(family: Family, counts: tuple[int, ...]) -> tuple[int, ...]:
    """The rule's capped counts for circuit counts (the rule's classes are the circuit's first ones)."""
    return tuple(min(c, cap) for c, cap in zip(counts, family.rule.caps, strict=False))


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_argmax_is_the_rule_on_every_count_state(models: dict[str, ModelAdapter], name: str) -> None:
    """Each feasible count vector, realised by a random sequence: the model's argmax is the circuit's winner, the
    winner is HIT exactly where the family's rule holds, and the top-two logit gap is at least 1 % of the
    largest logit, five orders of magnitude above float32 rounding."""
    family, model = FAMILIES[name], models[name]
    rng = random.Random(0)
    states = count_states(family)
    tokens = torch.tensor([realize(family, s, rng) for s in states])
    logits = model.last_logits(tokens)
    winners = torch.tensor([family.circuit.winner(s) for s in states])
    assert torch.equal(logits.argmax(-1), winners)
    assert all((int(w) == HIT) == family.rule.accept(capped(family, s)) for w, s in zip(winners, states, strict=True))
    assert bool(family.rule.holds(tokens).eq(winners == HIT).all())
    top = logits.topk(2, dim=-1).values
    relative = (top[:, 0] - top[:, 1]) / logits.abs().max(dim=-1).values
    assert float(relative.min()) > 0.01, "an argmax within 1% of the logit scale (float32 resolves ~1e-7)"
    assert min(family.circuit.margin(s) for s in states) >= Fraction(1, 8)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_fast_path_and_first_layer_table_equal_the_transformerlens_forward(models: dict[str, ModelAdapter],
                                                                           name: str) -> None:
    model = models[name]
    assert model.fast_path is not None, "the fast path's load-time self-check failed"
    gen = torch.Generator().manual_seed(1)
    tokens = torch.randint(model.d_vocab, (256, LENGTH), generator=gen)
    reference = model.model(tokens)[:, -1, :].float()
    fast = model.fast_path.last_logits(tokens)
    support = torch.ones(LENGTH, model.d_vocab, dtype=torch.bool)
    tabled = model.fast_path.last_logits(tokens, model.fast_path.first_layer_table(support))
    for other in (fast, tabled, model._last(tokens)):
        assert float((other - reference).abs().max()) < 1e-3
        assert torch.equal(other.argmax(-1), reference.argmax(-1))
    activations, logits = model.last_activations(tokens)
    assert torch.allclose(activations @ model.W_U, logits, atol=1e-3)
    resid = model.activations(tokens, "blocks.0.hook_resid_post")
    assert resid.shape == (256, LENGTH, model.d_model)


def _spec(text: str) -> tuple[InputDistribution, Target]:
    compiled = load_spec(text + 'target hit = argmax == "HIT"\n', planted_vocabulary(), max_length=LENGTH)
    return compiled.distribution(), compiled.target("hit")


BRUTE_FORCE = {
    "threshold": 'dist main = BOS ([{"a", "b", "c", "d"}] @ 0.3 | [{"e", "f", "z"}] @ 0.7) * 32\n',
    "two-modes": 'dist main = BOS ([{"a", "b"}] @ 0.2 | [{"c", "d", "e", "f", "g", "h"}] @ 0.35 | "z" @ 0.45) * 32\n',
    "needle": ('tokens r = {"a", "x", "y", "z"}\ntokens n = {"n", "a"}\ntokens e = {"e", "a"}\n'
               'tokens d = {"d", "a"}\ntokens l = {"l", "a"}\n'
               "dist main = BOS r * 3 n r * 4 e r * 4 e r * 4 d r * 4 l r * 4 e r * 3\n"),
}
"""Specs where each rule has probability 0.01-0.3, so brute force pins the exact value down tightly."""


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_exact_value_matches_brute_force_counting(models: dict[str, ModelAdapter], name: str) -> None:
    """On 8192 seeded samples the model's hits are exactly the rule's, and their count agrees with the DP."""
    family, model = FAMILIES[name], models[name]
    distribution, target = _spec(BRUTE_FORCE[name])
    exact = exact_probability(distribution, family.rule).p
    assert 0.01 < exact < 0.5
    n = 8192
    tokens = distribution.sample(n, torch.Generator().manual_seed(2))
    hits = target.hits(model.last_logits(tokens))
    assert torch.equal(hits, family.rule.holds(tokens))
    assert abs(int(hits.sum()) - n * exact) <= 4 * (n * exact * (1 - exact)) ** 0.5


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_registered_calibration_spec_matches_brute_force(models: dict[str, ModelAdapter], name: str) -> None:
    """The registered shallow spec (p ~ 1e-3 or 1e-4): 2^14 samples agree with the rule sample by sample and the hit
    count is within 4 standard deviations of the exact value."""
    family, model = FAMILIES[name], models[name]
    (depth,) = [d for d in family.depths if d.role == "calibration"]
    compiled = load_spec(family.spec_text(depth), planted_vocabulary(), max_length=LENGTH)
    distribution, target = compiled.distribution(), compiled.target("hit")
    exact = exact_probability(distribution, family.rule).p
    n = 2**14
    tokens = distribution.sample(n, torch.Generator().manual_seed(3))
    hits = target.hits(model.last_logits(tokens))
    assert torch.equal(hits, family.rule.holds(tokens))
    assert abs(int(hits.sum()) - n * exact) <= 4 * (n * exact) ** 0.5 + 1


def _mean_scores(model: ModelAdapter, family: Family, exponent: int) -> torch.Tensor:
    """The batch-mean token-gradient scores ``[positions, d_vocab]`` of HIT at the family's spec ~1e-exponent."""
    depth = next(d for d in family.depths if d.exponent == exponent)
    compiled = load_spec(family.spec_text(depth), planted_vocabulary(), max_length=LENGTH)
    distribution, target = compiled.distribution(), compiled.target("hit")
    tokens = distribution.sample(256, torch.Generator().manual_seed(4))
    _, grads = model.target_gradients(tokens, target)
    return grads.mean(dim=0)


def test_needle_gradient_points_to_the_decoys_not_the_needle(models: dict[str, ModelAdapter]) -> None:
    """At typical inputs the target's token gradient prefers a decoy to the needle letter at every needle position."""
    family = FAMILIES["needle"]
    scores = _mean_scores(models["needle"], family, 7)
    vocab = planted_vocabulary()
    decoy = vocab.encode("x")[0]
    for cls in family.rule.classes:
        assert cls.positions is not None
        (p,), (needle,) = cls.positions, cls.tokens
        assert float(scores[p, decoy]) > float(scores[p, needle])


def test_threshold_gradient_points_to_the_set(models: dict[str, ModelAdapter]) -> None:
    """At typical inputs the target's token gradient prefers every token of S to every other letter, at every
    position after BOS: the smooth case for gradient-guided proposals."""
    family = FAMILIES["threshold"]
    scores = _mean_scores(models["threshold"], family, 7)
    (cls,) = family.rule.classes
    s = sorted(cls.tokens)
    others = [t for t in range(4, planted_vocabulary().size) if t not in cls.tokens]
    assert bool((scores[1:, s].min(dim=1).values > scores[1:, others].max(dim=1).values).all())


def test_two_modes_gradient_points_to_both_modes(models: dict[str, ModelAdapter]) -> None:
    """At typical inputs the target's token gradient prefers every token of S1 and of S2 to every other letter, at
    every position after BOS: HIT's logit grows with progress toward either mode, so each mode can be followed."""
    family = FAMILIES["two-modes"]
    scores = _mean_scores(models["two-modes"], family, 9)
    modes = sorted(set().union(*(cls.tokens for cls in family.rule.classes)))
    others = [t for t in range(4, planted_vocabulary().size) if t not in modes]
    assert bool((scores[1:, modes].min(dim=1).values > scores[1:, others].max(dim=1).values).all())
