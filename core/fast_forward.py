"""An exact forward pass that computes only what the last position's logits need.

For a pre-LayerNorm GELU transformer (the TransformerLens "standard" architecture of the paper's models and the
built-in ones), every layer but the last runs at all positions; the last layer computes keys and values at all
positions but its query, attention output and MLP only at the last position; the final LayerNorm and the
unembedding run on one vector per sequence. The arithmetic is the same float32 arithmetic as the reference
forward, reordered, so results agree up to float32 rounding (tests and a load-time self-check compare them).
Counting argmaxes can also run the unembedding in a cheaper precision with a proof that the argmax is unchanged
(:mod:`lowprob.core.certified_argmax`).

Incremental decoding (:meth:`FastForward.decode`) runs the same blocks over new positions only, reading the
keys and values of earlier positions from a :class:`KVCache`: generating L tokens after an n-token prompt
processes n + L - 1 positions instead of the full recompute's n·L + L(L-1)/2.

``FastForward.from_model`` returns ``None`` for anything it cannot prove it reproduces (other architectures,
stand-in models), and the caller keeps the reference path; the load-time self-check covers the cached path too.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812 - the usual alias

ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu": F.gelu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
}
"""Activations the fast path reproduces, by TransformerLens ``cfg.act_fn`` name."""

SELF_CHECK_TOLERANCE = 1e-3
"""Largest absolute logit difference from the reference forward accepted by the load-time self-check."""


@dataclass(frozen=True)
class LayerNorm:
    """A LayerNorm's affine parameters and epsilon."""

    weight: torch.Tensor
    bias: torch.Tensor
    eps: float

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, (x.shape[-1],), self.weight, self.bias, self.eps)


@dataclass(frozen=True)
class LayerWeights:
    """One transformer block's weights, heads flattened: ``W_QKV [d, 3·H·dh]``, ``W_O [H·dh, d]``."""

    ln1: LayerNorm
    W_QKV: torch.Tensor  # noqa: N815 - TransformerLens naming
    b_QKV: torch.Tensor  # noqa: N815
    W_O: torch.Tensor  # noqa: N815
    b_O: torch.Tensor  # noqa: N815
    ln2: LayerNorm
    W_in: torch.Tensor  # noqa: N815
    b_in: torch.Tensor
    W_out: torch.Tensor  # noqa: N815
    b_out: torch.Tensor


def _layer_norm(module: Any) -> LayerNorm | None:
    inner = getattr(module, "_original_component", module)
    if not isinstance(inner, torch.nn.LayerNorm) or inner.weight is None or inner.bias is None:
        return None
    return LayerNorm(inner.weight.detach(), inner.bias.detach(), float(inner.eps))


class FastForward:
    """Last-position logits of a standard pre-LN transformer, computed exactly and cheaply."""

    def __init__(self, W_E: torch.Tensor, W_pos: torch.Tensor, blocks: list[LayerWeights],  # noqa: N803
                 ln_final: LayerNorm, W_U: torch.Tensor, b_U: torch.Tensor, n_heads: int,  # noqa: N803
                 d_head: int, attn_scale: float, act: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.W_E, self.W_pos, self.blocks, self.ln_final = W_E, W_pos, blocks, ln_final
        self.W_U, self.b_U = W_U, b_U
        self.n_heads, self.d_head, self.attn_scale, self.act = n_heads, d_head, attn_scale, act

    @classmethod
    def from_model(cls, model: Any) -> FastForward | None:
        """The fast path for a TransformerLens model, or ``None`` where its architecture is not the standard one."""
        cfg = getattr(model, "cfg", None)
        act = ACTIVATIONS.get(str(getattr(cfg, "act_fn", "")))
        standard = (cfg is not None and act is not None
                    and getattr(cfg, "positional_embedding_type", None) == "standard"
                    and getattr(cfg, "normalization_type", None) == "LN"
                    and not getattr(cfg, "attn_only", False) and not getattr(cfg, "parallel_attn_mlp", False)
                    and not getattr(cfg, "gated_mlp", False) and getattr(cfg, "n_key_value_heads", None) is None
                    and getattr(cfg, "use_attn_scale", True))
        if not standard:
            return None
        try:
            fast = cls._extract(model, cfg, act)  # type: ignore[arg-type]
        except (AttributeError, RuntimeError, TypeError, IndexError):
            return None
        return fast if fast is not None and fast.self_check(model) else None

    @classmethod
    def _extract(cls, model: Any, cfg: Any, act: Callable[[torch.Tensor], torch.Tensor]) -> FastForward | None:
        n_layers, n_heads, d_head = int(cfg.n_layers), int(cfg.n_heads), int(cfg.d_head)
        scale = float(cfg.attn_scale) if float(getattr(cfg, "attn_scale", -1.0)) > 0 else math.sqrt(d_head)
        blocks = []
        for i in range(n_layers):
            ln1, ln2 = _layer_norm(model.blocks[i].ln1), _layer_norm(model.blocks[i].ln2)
            if ln1 is None or ln2 is None:
                return None

            def heads_in(w: torch.Tensor) -> torch.Tensor:  # [H, d, dh] -> [d, H·dh]
                return w.permute(1, 0, 2).reshape(w.shape[1], -1)

            w_qkv = torch.cat([heads_in(model.W_Q[i]), heads_in(model.W_K[i]), heads_in(model.W_V[i])], dim=1)
            b_qkv = torch.cat([model.b_Q[i].reshape(-1), model.b_K[i].reshape(-1), model.b_V[i].reshape(-1)])
            blocks.append(LayerWeights(ln1, w_qkv.detach().contiguous(), b_qkv.detach(),
                                model.W_O[i].reshape(n_heads * d_head, -1).detach().contiguous(),
                                model.b_O[i].detach(), ln2, model.W_in[i].detach(), model.b_in[i].detach(),
                                model.W_out[i].detach(), model.b_out[i].detach()))
        ln_final = _layer_norm(model.ln_final)
        if ln_final is None:
            return None
        return cls(model.W_E.detach(), model.W_pos.detach(), blocks, ln_final, model.W_U.detach(),
                   model.b_U.detach(), n_heads, d_head, scale, act)

    def self_check(self, model: Any, samples: int = 4, positions: int = 7, seed: int = 0) -> bool:
        """Whether this path matches the model's own forward on a few seeded random inputs: the last-position
        logits, and every position's logits when decoded incrementally (a prompt, a block of new positions,
        then one token at a time: each attention case of :meth:`decode`)."""
        gen = torch.Generator().manual_seed(seed)
        n = min(positions, self.W_pos.shape[0])
        tokens = torch.randint(self.W_E.shape[0], (samples, n), generator=gen).to(self.W_E.device)
        with torch.no_grad():
            reference = model(tokens).float()
            ours = self.last_logits(tokens)
            cache = self.new_cache(samples, n)
            bounds = sorted({0, (n + 2) // 3, (2 * n + 2) // 3, *range((2 * n + 2) // 3, n + 1)})
            steps = [self.decode(cache, tokens[:, a:b], keep=b - a) for a, b in itertools.pairwise(bounds)]
            decoded = torch.cat(steps, dim=1).float()
        return bool(ours.shape == reference[:, -1].shape and decoded.shape == reference.shape
                    and (ours - reference[:, -1]).abs().max() <= SELF_CHECK_TOLERANCE
                    and (decoded - reference).abs().max() <= SELF_CHECK_TOLERANCE)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(*x.shape[:-1], self.n_heads, self.d_head)

    def _full_block(self, block: LayerWeights, x: torch.Tensor, qkv: torch.Tensor | None = None) -> torch.Tensor:
        batch, n, _ = x.shape
        qkv = block.ln1(x) @ block.W_QKV + block.b_QKV if qkv is None else qkv
        q, k, v = (self._split_heads(t).transpose(1, 2) for t in qkv.chunk(3, dim=-1))
        z = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=1.0 / self.attn_scale)
        x = x + z.transpose(1, 2).reshape(batch, n, -1) @ block.W_O + block.b_O
        return x + self.act(block.ln2(x) @ block.W_in + block.b_in) @ block.W_out + block.b_out

    def _last_block(self, block: LayerWeights, x: torch.Tensor, kv: torch.Tensor | None = None) -> torch.Tensor:
        """The last layer at the last position only; ``x`` is the residual ``[B, n, d]`` (or ``[B, 1, d]``
        when ``kv``, the keys and values at every position, come precomputed)."""
        hd = self.n_heads * self.d_head
        x_last = x[:, -1]
        kv = block.ln1(x) @ block.W_QKV[:, hd:] + block.b_QKV[hd:] if kv is None else kv
        k, v = (self._split_heads(t) for t in kv.chunk(2, dim=-1))  # [B, n, H, dh]
        q = self._split_heads(block.ln1(x_last) @ block.W_QKV[:, :hd] + block.b_QKV[:hd])  # [B, H, dh]
        pattern = torch.softmax(torch.einsum("bhd,bnhd->bhn", q, k) / self.attn_scale, dim=-1)
        z = torch.einsum("bhn,bnhd->bhd", pattern, v).reshape(x.shape[0], hd)
        r = x_last + z @ block.W_O + block.b_O
        return r + self.act(block.ln2(r) @ block.W_in + block.b_in) @ block.W_out + block.b_out

    def new_cache(self, batch: int, capacity: int) -> KVCache:
        """An empty cache for ``batch`` sequences of up to ``capacity`` positions (at most the model's context)."""
        if capacity > self.W_pos.shape[0]:
            raise ValueError(f"a cache of {capacity} positions exceeds the context of {self.W_pos.shape[0]}")
        shape = (batch, self.n_heads, capacity, self.d_head)
        like = self.W_E
        return KVCache([like.new_zeros(shape) for _ in self.blocks], [like.new_zeros(shape) for _ in self.blocks], 0)

    def decode(self, cache: KVCache, tokens: torch.Tensor, keep: int = 1) -> torch.Tensor:
        """Logits ``[B, keep, d_vocab]`` at the last ``keep`` of the positions ``tokens [B, m]`` appends to the
        ``cache.length`` positions already in ``cache``. Writes the new positions' keys and values into ``cache``
        and advances its length; as in :meth:`last_logits`, the last layer's attention output and MLP run only at
        the ``keep`` positions whose logits are asked for."""
        return self.decode_normed(cache, tokens, keep) @ self.W_U + self.b_U

    def decode_normed(self, cache: KVCache, tokens: torch.Tensor, keep: int = 1) -> torch.Tensor:
        """:meth:`decode` up to the final LayerNorm's output ``[B, keep, d_model]`` (``ln_final.hook_out``), which
        the unembedding reads: what twist heads over generated tokens read, at no extra cost."""
        start, m = cache.length, tokens.shape[1]
        if start + m > cache.keys[0].shape[2]:
            raise ValueError(f"decoding {m} positions after {start} overflows a cache of {cache.keys[0].shape[2]}")
        if not 1 <= keep <= m:
            raise ValueError(f"keep must be between 1 and the {m} new positions, got {keep}")
        x = self.W_E[tokens] + self.W_pos[start:start + m]
        last = len(self.blocks) - 1
        for i, (block, keys, values) in enumerate(zip(self.blocks, cache.keys, cache.values, strict=True)):
            x = self._cached_block(block, x, keys, values, start, keep if i == last else m)
        cache.length = start + m
        return self.ln_final(x)

    def _cached_block(self, block: LayerWeights, x: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                      start: int, keep: int) -> torch.Tensor:
        """One block over new positions ``start .. start + m - 1`` (``x [B, m, d]``), attending to the cached
        keys and values of every earlier position; stores the new positions' keys and values and returns the
        block's output at the last ``keep`` of them."""
        batch, m, _ = x.shape
        qkv = block.ln1(x) @ block.W_QKV + block.b_QKV
        q, k, v = (self._split_heads(t).transpose(1, 2) for t in qkv.chunk(3, dim=-1))  # [B, H, m, dh]
        end = start + m
        keys[:, :, start:end], values[:, :, start:end] = k, v
        x, q = x[:, m - keep:], q[:, :, m - keep:]
        if keep == 1 or start + m == keep:  # one query sees every key; or a causal square block
            z = F.scaled_dot_product_attention(q, keys[:, :, :end], values[:, :, :end], is_causal=keep > 1,
                                               scale=1.0 / self.attn_scale)
        else:  # query j (position end - keep + j) sees keys up to it
            mask = torch.ones(keep, end, dtype=torch.bool, device=x.device).tril(diagonal=end - keep)
            z = F.scaled_dot_product_attention(q, keys[:, :, :end], values[:, :, :end], attn_mask=mask,
                                               scale=1.0 / self.attn_scale)
        x = x + z.transpose(1, 2).reshape(batch, keep, -1) @ block.W_O + block.b_O
        return x + self.act(block.ln2(x) @ block.W_in + block.b_in) @ block.W_out + block.b_out

    def first_layer_table(self, support: torch.Tensor) -> FirstLayerTable:
        """Precomputed first-layer attention inputs for every ``(position, token)`` with ``support[i, v]``.

        The first layer's queries, keys and values at position ``i`` depend only on ``x_i`` (LayerNorm acts per
        position), so for inputs drawn from a known per-position support they are table lookups. A one-layer
        model needs only keys and values (its query runs at the last position only).
        """
        block = self.blocks[0]
        positions, tokens = support.nonzero(as_tuple=True)
        cols = slice(self.n_heads * self.d_head, None) if len(self.blocks) == 1 else slice(None)
        with torch.no_grad():
            rows = block.ln1(self.W_E[tokens] + self.W_pos[positions]) @ block.W_QKV[:, cols] + block.b_QKV[cols]
        index = torch.full(support.shape, -1, dtype=torch.long, device=rows.device)
        index[positions, tokens] = torch.arange(rows.shape[0], device=rows.device)
        return FirstLayerTable(index, rows.contiguous())

    def last_normed(self, tokens: torch.Tensor, table: FirstLayerTable | None = None) -> torch.Tensor:
        """The final LayerNorm's output at the last position ``[B, d]``, which the unembedding reads.

        With ``table`` (from :meth:`first_layer_table`), every token must lie in the table's support.
        """
        if table is not None and len(self.blocks) == 1:
            x = (self.W_E[tokens[:, -1]] + self.W_pos[tokens.shape[1] - 1]).unsqueeze(1)
            return self.ln_final(self._last_block(self.blocks[0], x, table.lookup(tokens)))
        return self._normed(self.W_E[tokens], table.lookup(tokens) if table is not None else None)

    def _normed(self, embeddings: torch.Tensor, first: torch.Tensor | None = None) -> torch.Tensor:
        x = embeddings + self.W_pos[: embeddings.shape[1]]
        for i, block in enumerate(self.blocks[:-1]):
            x = self._full_block(block, x, first if i == 0 else None)
        return self.ln_final(self._last_block(self.blocks[-1], x))

    def last_activations(self, tokens: torch.Tensor,
                         table: FirstLayerTable | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Pre-unembed activations (after the final LayerNorm) at the last position and their logits."""
        a = self.last_normed(tokens, table)
        return a, a @ self.W_U + self.b_U

    def from_embeddings(self, embeddings: torch.Tensor,
                        first: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`last_activations` from token embeddings ``[B, n, d]`` (``hook_embed``), so callers can take
        gradients with respect to them; ``first`` optionally holds the first layer's precomputed attention inputs."""
        a = self._normed(embeddings, first)
        return a, a @ self.W_U + self.b_U

    def last_logits(self, tokens: torch.Tensor, table: FirstLayerTable | None = None) -> torch.Tensor:
        """Logits at the last position, ``[batch, d_vocab]``."""
        return self.last_activations(tokens, table)[1]


@dataclass(frozen=True)
class FirstLayerTable:
    """First-layer attention inputs by ``(position, token)``: ``rows[index[i, v]]``; ``-1`` marks no row."""

    index: torch.Tensor
    rows: torch.Tensor

    def lookup(self, tokens: torch.Tensor) -> torch.Tensor:
        """The rows of a ``[B, n]`` token batch, ``[B, n, width]``; tokens outside the support are an error."""
        idx = self.index[torch.arange(tokens.shape[1], device=tokens.device), tokens]
        if bool((idx < 0).any()):
            raise ValueError("a token lies outside the first-layer table's support")
        return self.rows[idx]


@dataclass
class KVCache:
    """Keys and values of every layer at the first ``length`` positions of a batch of sequences, each
    ``[batch, heads, capacity, d_head]``; :meth:`FastForward.decode` fills it in place."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    length: int

    def select(self, index: torch.Tensor) -> KVCache:
        """The cache of sequences ``index`` (e.g. resampled particles), as a new cache."""
        return KVCache([k[index] for k in self.keys], [v[index] for v in self.values], self.length)
