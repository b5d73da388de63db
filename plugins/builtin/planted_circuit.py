"""Transformers whose weights are set by construction so that the last-position argmax is a known function of
token counts (the planted models of ``planted.py``; the construction is documented in docs/known-answer.md).

A :class:`Circuit` is a list of token classes (one attention head each, counting the class's tokens among its
positions) and ReLU-like neurons over those counts that write to the logits. :func:`build_bridge` turns it into a
standard pre-LayerNorm GELU transformer (``TransformerBridge.boot_native``): one-hot token and position embeddings
plus a constant dimension make every first-layer LayerNorm input the same mean and variance, so LayerNorm is a
known affine map there; every later read (MLP input, unembedding) has weights summing to zero over the residual
dimensions, so the LayerNorm before it only rescales by a positive factor and cannot move an argmax; and every
neuron's pre-activation is at least ``GAIN / 2`` (over the LayerNorm's scale) away from zero, where GELU equals
ReLU to far below float32 resolution. The logits are therefore a positive multiple of :meth:`Circuit.scores`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import torch

from lowprob.core.errors import LowprobError
from lowprob.core.exact import TokenClass

GAIN = 32.0
"""Neuron pre-activations are ``GAIN * (integer + 1/2) / (LayerNorm scale)``: |pre| >= 40 on every input."""
BETA = 30.0
"""Attention score of a positional head on its positions (0 elsewhere): leaks ``e^-30`` per other position."""
D_HEAD = 1
"""Each head computes one number, the share of its positions holding its class's tokens."""


@dataclass(frozen=True)
class Neuron:
    """``relu(sum_c weights[c] * count_c + bias)``, added ``out[token]`` times to each listed token's score.

    Integer weights and a half-integer bias keep the pre-activation at least 1/2 from the kink on every input.
    """

    weights: tuple[int, ...]
    bias: float
    out: Mapping[int, float]

    def __post_init__(self) -> None:
        if not float(2 * self.bias).is_integer() or float(self.bias).is_integer():
            raise LowprobError(f"neuron bias {self.bias} must be a half-integer (k + 1/2)")

    def value(self, counts: Sequence[int]) -> Fraction:
        """The neuron's exact output for uncapped class counts."""
        pre = sum((Fraction(w) * c for w, c in zip(self.weights, counts, strict=True)), Fraction(self.bias))
        return max(pre, Fraction(0))


@dataclass(frozen=True)
class Circuit:
    """Token classes counted by attention, neurons over the counts, on sequences of exactly ``length`` tokens."""

    classes: tuple[TokenClass, ...]
    neurons: tuple[Neuron, ...]
    vocab_size: int
    length: int
    n_layers: int = 1

    def __post_init__(self) -> None:
        for neuron in self.neurons:
            if len(neuron.weights) != len(self.classes):
                raise LowprobError("every neuron needs one weight per class")
        for cls in self.classes:
            if cls.positions is not None and (not cls.positions or max(cls.positions) >= self.length):
                raise LowprobError(f"class {cls.name!r}: positions must be non-empty and below {self.length}")

    def scores(self, counts: Sequence[int]) -> list[Fraction]:
        """Each token's exact score for uncapped class counts; the model's logits are a positive multiple."""
        out = [Fraction(0)] * self.vocab_size
        for neuron in self.neurons:
            value = neuron.value(counts)
            for token, weight in neuron.out.items():
                out[token] += Fraction(weight) * value
        return out

    def winner(self, counts: Sequence[int]) -> int:
        """The argmax token for ``counts`` (ties to the lowest id, as ``torch.argmax``)."""
        scores = self.scores(counts)
        return max(range(len(scores)), key=lambda t: (scores[t], -t))

    def margin(self, counts: Sequence[int]) -> Fraction:
        """The winner's score minus the runner-up's (in units of the neurons' counts)."""
        top, second = sorted(self.scores(counts), reverse=True)[:2]
        return top - second

    def width(self, cls: TokenClass) -> int:
        """How many positions the class's head averages over."""
        return self.length if cls.positions is None else len(cls.positions)


def _key(*parts: str) -> str:
    """The native bridge's parameter name for a TransformerLens-style path (``layers.0``, ``attn``, ``q``, ...)."""
    return ".".join(f"{part}._original_component" for part in parts[:-1]) + "." + parts[-1]


def _zero_sum(column: torch.Tensor, zero_dim: int) -> None:
    """Make a read vector sum to zero using the always-zero residual dimension, so LayerNorm's mean cancels."""
    column[zero_dim] = 0.0
    column[zero_dim] = -column.sum()


def build_bridge(circuit: Circuit) -> Any:
    """The TransformerLens-native model computing ``circuit``: every parameter is set here, none is trained."""
    from transformer_lens.model_bridge import TransformerBridge

    V, L, F, N = circuit.vocab_size, circuit.length, len(circuit.classes), len(circuit.neurons)  # noqa: N806
    one, zero, feat, neur = V + L, V + L + 1, V + L + 2, V + L + 2 + F
    d = neur + N
    config = dict(n_layers=circuit.n_layers, d_model=d, n_heads=max(F, 1), d_head=D_HEAD, d_mlp=max(N, 1),
                  n_ctx=L, d_vocab=V, act_fn="gelu", normalization_type="LN", seed=0)
    bridge = TransformerBridge.boot_native(config)  # type: ignore[attr-defined]
    cfg = bridge.cfg
    eps = float(cfg.eps)
    # Every first-layer input is one-hot token + one-hot position + the constant dimension: three ones.
    s = math.sqrt(3 / d - 9 / d**2 + eps)
    scale = float(cfg.attn_scale) if float(cfg.attn_scale) > 0 else math.sqrt(D_HEAD)
    w: dict[str, torch.Tensor] = {}
    f64: dict[str, Any] = dict(dtype=torch.float64)
    w[_key("tok_embed", "weight")] = torch.zeros(V, d, **f64)
    w[_key("tok_embed", "weight")][torch.arange(V), torch.arange(V)] = 1.0
    w[_key("tok_embed", "weight")][:, one] = 1.0
    w[_key("pos", "weight")] = torch.zeros(L, d, **f64)
    w[_key("pos", "weight")][torch.arange(L), V + torch.arange(L)] = 1.0
    heads = max(F, 1)
    q_w, q_b, k_w, v_w = torch.zeros(heads, d, **f64), torch.zeros(heads, **f64), torch.zeros(heads, d, **f64), \
        torch.zeros(heads, d, **f64)
    o_w = torch.zeros(d, heads, **f64)
    for h, cls in enumerate(circuit.classes):
        if cls.positions is not None:  # attend to the class's positions only; a uniform head keeps all scores 0
            q_b[h] = BETA * scale
            k_w[h, [V + p for p in sorted(cls.positions)]] = s
            _zero_sum(k_w[h], zero)
        v_w[h, sorted(cls.tokens)] = s
        _zero_sum(v_w[h], zero)
        o_w[feat + h, h] = 1.0
    fc_in, fc_out = torch.zeros(max(N, 1), d, **f64), torch.zeros(d, max(N, 1), **f64)
    head = torch.zeros(V, d, **f64)
    for n, neuron in enumerate(circuit.neurons):
        for h, (cls, count_weight) in enumerate(zip(circuit.classes, neuron.weights, strict=True)):
            fc_in[n, feat + h] = GAIN * count_weight * circuit.width(cls)
        fc_in[n, one] = GAIN * neuron.bias
        _zero_sum(fc_in[n], zero)
        fc_out[neur + n, n] = 1.0
        for token, weight in neuron.out.items():
            head[token, neur + n] += weight
    for token in range(V):
        _zero_sum(head[token], zero)
    first, last = "layers.0", f"layers.{circuit.n_layers - 1}"
    w[_key(first, "attn", "q", "weight")], w[_key(first, "attn", "q", "bias")] = q_w, q_b
    w[_key(first, "attn", "k", "weight")], w[_key(first, "attn", "v", "weight")] = k_w, v_w
    w[_key(first, "attn", "o", "weight")] = o_w
    w[_key(last, "mlp", "fc_in", "weight")], w[_key(last, "mlp", "fc_out", "weight")] = fc_in, fc_out
    w[_key("head", "weight")] = head
    for layer in range(circuit.n_layers):
        for norm in ("ln1", "ln2"):
            w[_key(f"layers.{layer}", norm, "weight")] = torch.ones(d, **f64)
    w[_key("ln_out", "weight")] = torch.ones(d, **f64)
    params = dict(bridge.original_model.named_parameters())
    unknown = sorted(set(w) - set(params))
    if unknown:
        raise LowprobError(f"the native TransformerLens model has no parameters {unknown[:3]}")
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(w[name].to(param.dtype) if name in w else torch.zeros_like(param))
    return bridge
