"""Planted models: transformers with weights set by construction whose argmax is a known rule on token counts, so
every target on them has an exact answer at any depth (docs/known-answer.md).

Three families, each a registered model ``planted-<family>`` over a 30-token vocabulary (``BOS``, ``EOS``,
``HIT``, ``MISS``, ``a`` … ``z``) on ``BOS`` + 32 tokens, with one registered spec per depth
(``planted-<family>-e<n>``, target ``hit``: ``argmax == "HIT"``, probability about ``10^-n``):

* ``threshold``: HIT wins iff at least 12 positions hold one of ``a b c d`` (HIT's logit grows with every one);
* ``two-modes``: HIT wins iff at least 8 positions hold ``a``/``b`` or at least 14 hold one of ``c`` … ``h``,
  the two modes weighted to equal mass; HIT's logit grows with progress toward either mode (the larger of
  ``c1 / 8`` and ``c2 / 14``), so each mode can be found by following the score;
* ``needle``: HIT wins iff ``n e e d l e`` sit at positions 4, 9, 14, 19, 24, 29 (positional attention; two
  layers). The needle neuron is far below its kink on typical inputs (no gradient), and HIT's logit grows a
  little with every decoy ``x y z``, so token gradients point to the decoys, never to the needle.

All go through LayerNorm, attention and a GELU MLP like the trained models, and pass the fast path's load-time
self-check. The exact value is :func:`lowprob.core.exact.exact_probability` of each family's :class:`CountRule`
under the compiled spec — independent of the weights, which tests check against it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache, cached_property

from lowprob.core.exact import CountRule, KnownAnswer, TokenClass, exact_probability
from lowprob.core.model import ModelAdapter
from lowprob.core.vocabulary import ListVocabulary
from lowprob.plugins.builtin.planted_circuit import Circuit, Neuron, build_bridge
from lowprob.plugins.hookspecs import hookimpl
from lowprob.plugins.registry import Registrar

BODY = 32
"""Tokens after BOS; every planted model has context ``BODY + 1`` and is built for exactly that length."""
LENGTH = BODY + 1
LETTERS = tuple(chr(c) for c in range(ord("a"), ord("z") + 1))
TOKENS = ("<|BOS|>", "<|EOS|>", "HIT", "MISS", *LETTERS)
HIT, MISS = TOKENS.index("HIT"), TOKENS.index("MISS")
TARGET = "hit"
"""The target name in every planted spec: ``argmax == "HIT"``."""


@cache
def planted_vocabulary() -> ListVocabulary:
    """The planted models' vocabulary (id 0 BOS, 1 EOS, 2 HIT, 3 MISS, then ``a`` … ``z``)."""
    return ListVocabulary(TOKENS, special={"BOS": 0, "EOS": 1})


def ids(letters: str) -> frozenset[int]:
    """Token ids of single-letter tokens."""
    return frozenset(TOKENS.index(ch) for ch in letters)


def _quote(letters: str) -> str:
    return "{" + ", ".join(f'"{ch}"' for ch in letters) + "}"


@dataclass(frozen=True)
class Depth:
    """One registered spec of a family: its nominal depth, its role and the alternatives' weights."""

    exponent: int
    role: str
    weights: tuple[float, ...]


@dataclass(frozen=True)
class Family:
    """A planted construction: the circuit the model computes, the rule it equals, and its specs by depth.

    ``sets`` are the spec's token sets (name, letters) drawn with ``Depth.weights`` per position; the last set
    takes the remaining mass.
    """

    name: str
    summary: str
    circuit: Circuit
    rule: CountRule
    sets: tuple[tuple[str, str], ...]
    depths: tuple[Depth, ...]

    @property
    def model(self) -> str:
        return f"planted-{self.name}"

    def spec_name(self, depth: Depth) -> str:
        return f"{self.model}-e{depth.exponent}"

    def spec_text(self, depth: Depth) -> str:
        """The DSL spec of one depth: BOS then 32 independent positions over the family's token sets."""
        weights = [*depth.weights, 1.0 - sum(depth.weights)]
        lines = [f"# {self.model} at depth ~1e-{depth.exponent} ({depth.role}): {self.summary}"]
        lines += [f"tokens {name} = {_quote(letters)}" for name, letters in self.sets]
        choice = " | ".join(f"{name} @ {w:.6g}" for (name, _), w in zip(self.sets, weights, strict=True))
        lines += [f"dist main = BOS ({choice}) * {BODY}", f'target {TARGET} = argmax == "HIT"']
        return "\n".join(lines) + "\n"


def _uniform(name: str, letters: str) -> TokenClass:
    return TokenClass(name, ids(letters))


def threshold_family() -> Family:
    """HIT wins iff at least K positions hold a token of S: HIT scores ``count + 1/2``, MISS scores K."""
    k, s = 12, "abcd"
    circuit = Circuit((_uniform("S", s),), (Neuron((1,), 0.5, {HIT: 1.0}), Neuron((0,), 0.5, {MISS: 2.0 * k})),
                      len(TOKENS), LENGTH)
    rule = CountRule((_uniform("S", s),), (k,), lambda c: c[0] >= k, f"at least {k} of {s}")
    return Family("threshold", f"HIT iff at least {k} positions hold one of {s}", circuit, rule,
                  (("S", s), ("rest", "".join(ch for ch in LETTERS if ch not in s))),
                  _depths(THRESHOLD_WEIGHTS))


def two_modes_family() -> Family:
    """HIT wins iff (at least K1 of S1) or (at least K2 of S2): HIT scores the progress toward the nearer mode,
    ``max(K2 c1, K1 c2)`` (as ``K1 c2 + 1/2 + relu(K2 c1 - K1 c2 + 1/2)``), MISS the constant ``K1 K2 - 7/2``, so
    HIT's logit grows toward each mode from the start and wins iff either count reaches its threshold."""
    (k1, s1), (k2, s2) = (8, "ab"), (14, "cdefgh")
    classes = (_uniform("S1", s1), _uniform("S2", s2))
    neurons = (Neuron((0, k1), 0.5, {HIT: 1.0}), Neuron((k2, -k1), 0.5, {HIT: 1.0}),
               Neuron((0, 0), 0.5, {MISS: 2.0 * k1 * k2 - 7.0}))
    rule = CountRule(classes, (k1, k2), lambda c: c[0] >= k1 or c[1] >= k2,
                     f"at least {k1} of {s1} or at least {k2} of {s2}")
    rest = "".join(ch for ch in LETTERS if ch not in s1 + s2)
    return Family("two-modes", f"HIT iff at least {k1} of {s1} or at least {k2} of {s2}",
                  Circuit(classes, neurons, len(TOKENS), LENGTH), rule,
                  (("S1", s1), ("S2", s2), ("rest", rest)), _depths(TWO_MODES_WEIGHTS))


NEEDLE = "needle"
NEEDLE_POSITIONS = (4, 9, 14, 19, 24, 29)
DECOYS = "xyz"


def needle_family() -> Family:
    """HIT wins iff the needle's letters sit at their positions (one positional head each); each decoy adds a
    little to HIT's score (at most 1/8 in all, below MISS's 1/4), so gradients point to the decoys."""
    needles = tuple(TokenClass(f"{ch}@{p}", ids(ch), frozenset({p}))
                    for ch, p in zip(NEEDLE, NEEDLE_POSITIONS, strict=True))
    m, decoy = len(needles), _uniform("decoy", DECOYS)
    neurons = (Neuron((1,) * m + (0,), 0.5 - m, {HIT: 1.0}),
               Neuron((0,) * m + (1,), 0.5, {HIT: 1.0 / (8 * LENGTH)}),
               Neuron((0,) * (m + 1), 0.5, {MISS: 0.5}))
    rule = CountRule(needles, (1,) * m, lambda c: all(c), f"{NEEDLE!r} at positions {NEEDLE_POSITIONS}")
    letters = "".join(sorted(set(NEEDLE)))
    rest = "".join(ch for ch in LETTERS if ch not in letters + DECOYS)
    return Family(NEEDLE, f"HIT iff {' '.join(NEEDLE)} sit at positions {NEEDLE_POSITIONS}; decoys {DECOYS}",
                  Circuit((*needles, decoy), neurons, len(TOKENS), LENGTH, n_layers=2), rule,
                  (("needle", letters), ("decoy", DECOYS), ("rest", rest)), _depths(NEEDLE_WEIGHTS))


ROLES = {3: "calibration", 4: "calibration", 6: "tuning", 10: "tuning"}
"""Depths whose specs are not benchmark tests: brute-force checks (1e-3, 1e-4) and estimator tuning."""


def _depths(weights: Mapping[int, tuple[float, ...]]) -> tuple[Depth, ...]:
    return tuple(Depth(e, ROLES.get(e, "test"), w) for e, w in sorted(weights.items()))


THRESHOLD_WEIGHTS: dict[int, tuple[float, ...]] = {
    3: (0.143,), 5: (0.08888,), 6: (0.07127,), 7: (0.05753,), 9: (0.03799,), 10: (0.03101,), 11: (0.02537,),
    12: (0.02079,)}
"""Exponent -> weight of S per position (the rest goes to the other 22 letters)."""
TWO_MODES_WEIGHTS: dict[int, tuple[float, ...]] = {
    3: (0.06037, 0.1752), 5: (0.03135, 0.1163), 6: (0.02298, 0.09608), 7: (0.01696, 0.07981),
    9: (0.009343, 0.0557), 10: (0.006962, 0.04672), 11: (0.005196, 0.03927),
    12: (0.003883, 0.03306)}
"""Exponent -> weights of S1 and S2, each mode carrying half the mass."""
NEEDLE_WEIGHTS: dict[int, tuple[float, ...]] = {
    4: (0.8618, 0.1), 5: (0.5871, 0.1), 6: (0.4, 0.1), 7: (0.2725, 0.1), 9: (0.1265, 0.1), 10: (0.08618, 0.1),
    11: (0.05871, 0.1), 12: (0.04, 0.1)}
"""Exponent -> weights of the needle letters (uniform among n, e, d, l) and the decoys."""


@cache
def families() -> tuple[Family, ...]:
    """Every planted family."""
    return threshold_family(), two_modes_family(), needle_family()


class PlantedModel:
    """The lazy loader of one planted model; it also lists the family's problems with their exact answers."""

    def __init__(self, family: Family) -> None:
        self.family = family

    def __call__(self) -> ModelAdapter:
        return ModelAdapter(build_bridge(self.family.circuit), planted_vocabulary(), self.family.model)

    @cached_property
    def _answers(self) -> tuple[KnownAnswer, ...]:
        from lowprob.dsl import load_spec

        out = []
        for depth in self.family.depths:
            spec = load_spec(self.family.spec_text(depth), planted_vocabulary(), max_length=LENGTH,
                             filename=f"<{self.family.spec_name(depth)}>")
            out.append(KnownAnswer(self.family.model, self.family.spec_name(depth), TARGET, self.family.name,
                                   10.0 ** -depth.exponent, depth.role,
                                   exact_probability(spec.distribution(), self.family.rule), self.family.rule))
        return tuple(out)

    def known_answers(self) -> Sequence[KnownAnswer]:
        """The family's problems, one per registered spec, with exact probabilities (computed on first call)."""
        return self._answers


@hookimpl
def register_models(registrar: Registrar) -> None:
    """Register ``planted-threshold``, ``planted-two-modes`` and ``planted-needle`` (built, not trained)."""
    for family in families():
        registrar.add_model(family.model, PlantedModel(family),
                            description=f"planted model, exact answers known: {family.summary}")


@hookimpl
def register_distributions(registrar: Registrar) -> None:
    """Register each planted family's specs ``planted-<family>-e<n>`` (target ``hit``, probability ~1e-n)."""
    for family in families():
        for depth in family.depths:
            registrar.add_distribution(family.spec_name(depth), family.spec_text(depth),
                                       description=f"{family.model} at ~1e-{depth.exponent} ({depth.role}); "
                                                   f"{family.summary}")
