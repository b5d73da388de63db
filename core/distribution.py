"""Compiled input distributions over fixed-length token sequences.

A distribution is a sequence of *blocks*. A block covers ``length`` consecutive positions and is a finite
mixture of *components*; each component is a product of independent per-position categoricals. The paper's
distributions are all blocks of one component and one position (independent tokens, ``is_factorized``);
weighted alternatives between sub-sequences ("He" | "She" " said") become multi-component blocks, which keeps
``log_prob`` exact and sampling cheap.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property

import torch

from lowprob.core.errors import LowprobError, WeightError
from lowprob.core.random import categorical

MAX_COMPONENTS = 4096
"""Largest number of mixture components one block may have after flattening nested alternatives."""


def _check_weights(weights: torch.Tensor, what: str) -> torch.Tensor:
    weights = weights.to(torch.float64)
    if weights.numel() == 0:
        raise WeightError(f"{what}: no weights given")
    if not torch.isfinite(weights).all():
        raise WeightError(f"{what}: weights must be finite, got {weights.tolist()[:8]}")
    if (weights < 0).any():
        raise WeightError(f"{what}: weights must be non-negative, got {weights.tolist()[:8]}")
    largest = weights.max()
    if largest <= 0:
        raise WeightError(f"{what}: weights sum to zero")
    scaled = weights / largest  # first, so that weights near the float limit cannot sum to infinity
    return scaled / scaled.sum()


@dataclass(frozen=True, eq=False)
class Categorical:
    """A distribution over token ids: ``ids`` (sorted, unique, int64) with positive ``probs`` summing to 1."""

    ids: torch.Tensor
    probs: torch.Tensor

    @staticmethod
    def from_weights(ids: Sequence[int] | torch.Tensor, weights: Sequence[float] | torch.Tensor,
                     what: str = "categorical") -> Categorical:
        """Normalise ``weights``; drop zero-weight ids; merge duplicate ids by adding their weights."""
        id_t = torch.as_tensor(ids, dtype=torch.int64).flatten()
        w = torch.as_tensor(weights, dtype=torch.float64).flatten()
        if id_t.numel() != w.numel():
            raise WeightError(f"{what}: {id_t.numel()} ids but {w.numel()} weights")
        w = _check_weights(w, what)
        keep = w > 0
        id_t, w = id_t[keep], w[keep]
        uniq, inverse = torch.unique(id_t, sorted=True, return_inverse=True)
        merged = torch.zeros(uniq.numel(), dtype=torch.float64).index_add_(0, inverse, w)
        return Categorical(uniq, merged / merged.sum())

    @staticmethod
    def uniform(ids: Iterable[int] | torch.Tensor, what: str = "categorical") -> Categorical:
        id_t = torch.unique(torch.as_tensor(list(ids) if not isinstance(ids, torch.Tensor) else ids,
                                            dtype=torch.int64))
        if id_t.numel() == 0:
            raise WeightError(f"{what}: empty token set")
        return Categorical(id_t, torch.full((id_t.numel(),), 1.0 / id_t.numel(), dtype=torch.float64))

    @staticmethod
    def constant(token_id: int) -> Categorical:
        return Categorical(torch.tensor([token_id], dtype=torch.int64), torch.ones(1, dtype=torch.float64))

    @property
    def support_size(self) -> int:
        return int(self.ids.numel())

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        if self.support_size == 1:
            return self.ids.expand(n).clone()
        idx = categorical(self.probs, n, generator)
        return self.ids[idx]

    def dense_log_probs(self, vocab_size: int) -> torch.Tensor:
        """``[vocab_size]`` float64 log-probabilities, ``-inf`` off the support."""
        out = torch.full((vocab_size,), -math.inf, dtype=torch.float64)
        out[self.ids] = self.probs.log()
        return out

    def key(self) -> tuple[tuple[int, ...], tuple[float, ...]]:
        return tuple(self.ids.tolist()), tuple(round(p, 15) for p in self.probs.tolist())


@dataclass(frozen=True, eq=False)
class Block:
    """``length`` consecutive positions drawn from a mixture of products of categoricals."""

    weights: torch.Tensor
    components: tuple[tuple[Categorical, ...], ...]

    def __post_init__(self) -> None:
        lengths = {len(c) for c in self.components}
        if len(lengths) != 1:
            raise LowprobError(f"block components have different lengths {sorted(lengths)}")
        if self.weights.numel() != len(self.components):
            raise LowprobError("block needs one weight per component")
        if len(self.components) > MAX_COMPONENTS:
            raise LowprobError(
                f"alternatives expand to {len(self.components)} combinations (more than {MAX_COMPONENTS}); "
                "simplify nested alternatives")

    @staticmethod
    def position(categorical: Categorical) -> Block:
        return Block(torch.ones(1, dtype=torch.float64), ((categorical,),))

    @staticmethod
    def mixture(branches: Sequence[tuple[float, Sequence[Block]]], what: str = "alternatives") -> Block:
        """One block from weighted branches, each branch a run of blocks; all branches need equal length."""
        weights = _check_weights(torch.tensor([w for w, _ in branches], dtype=torch.float64), what)
        comps: list[tuple[Categorical, ...]] = []
        comp_w: list[float] = []
        lengths = set()
        for w, blocks in zip(weights.tolist(), (b for _, b in branches), strict=True):
            merged = Block.concat(blocks)
            lengths.add(merged.length)
            if w == 0:
                continue
            comps.extend(merged.components)
            comp_w.extend((w * merged.weights).tolist())
        if len(lengths) != 1:
            raise LowprobError(f"{what} must all have the same number of tokens; got lengths {sorted(lengths)}")
        block = Block(torch.tensor(comp_w, dtype=torch.float64), tuple(comps))
        if lengths == {1}:  # single-token alternatives are just one categorical: keep it factorized
            return Block.position(block.marginals()[0])
        return block

    @staticmethod
    def concat(blocks: Sequence[Block]) -> Block:
        """Flatten a run of blocks into one block (the cartesian product of their components)."""
        if not blocks:
            raise LowprobError("empty sequence")
        n = math.prod(len(b.components) for b in blocks)
        if n > MAX_COMPONENTS:
            raise LowprobError(
                f"alternatives expand to {n} combinations (more than {MAX_COMPONENTS}); simplify them")
        comps, weights = [], []
        for choice in itertools.product(*(range(len(b.components)) for b in blocks)):
            comps.append(tuple(itertools.chain.from_iterable(b.components[k] for b, k in zip(blocks, choice,
                                                                                             strict=True))))
            weights.append(math.prod(float(b.weights[k]) for b, k in zip(blocks, choice, strict=True)))
        return Block(torch.tensor(weights, dtype=torch.float64), tuple(comps))

    @property
    def length(self) -> int:
        return len(self.components[0])

    @property
    def is_factorized(self) -> bool:
        return len(self.components) == 1

    def marginals(self) -> list[Categorical]:
        """Exact per-position marginals (the categoricals themselves when the block has one component)."""
        if self.is_factorized:
            return list(self.components[0])
        out = []
        for j in range(self.length):
            ids = torch.cat([c[j].ids for c in self.components])
            w = torch.cat([wk * c[j].probs for wk, c in zip(self.weights, self.components, strict=True)])
            out.append(Categorical.from_weights(ids, w))
        return out

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        if self.is_factorized:
            return torch.stack([c.sample(n, generator) for c in self.components[0]], dim=1)
        which = categorical(self.weights, n, generator)
        out = torch.empty((n, self.length), dtype=torch.int64)
        for k, comp in enumerate(self.components):
            rows = (which == k).nonzero(as_tuple=True)[0]
            if rows.numel():
                out[rows] = torch.stack([c.sample(rows.numel(), generator) for c in comp], dim=1)
        return out

    def outcomes(self) -> dict[tuple[int, ...], float]:
        """Every token tuple this block can produce, with its probability."""
        result: dict[tuple[int, ...], float] = {}
        for wk, comp in zip(self.weights.tolist(), self.components, strict=True):
            for choice in itertools.product(*(zip(c.ids.tolist(), c.probs.tolist(), strict=True) for c in comp)):
                toks = tuple(t for t, _ in choice)
                result[toks] = result.get(toks, 0.0) + wk * math.prod(p for _, p in choice)
        return result

    def outcome_bound(self) -> int:
        return sum(math.prod(c.support_size for c in comp) for comp in self.components)


@dataclass(frozen=True, eq=False)
class InputDistribution:
    """A distribution D over token sequences of fixed ``length`` for a vocabulary of ``vocab_size`` ids.

    ``source`` keeps the spec text it was compiled from (for provenance); ``names`` optional labels.
    """

    blocks: tuple[Block, ...]
    vocab_size: int
    source: str = ""
    name: str = ""
    _dense: dict[tuple[int, int, int], torch.Tensor] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.blocks:
            raise LowprobError("a distribution needs at least one position")
        for block in self.blocks:
            for comp in block.components:
                for cat in comp:
                    if cat.ids.numel() and (int(cat.ids.max()) >= self.vocab_size or int(cat.ids.min()) < 0):
                        raise LowprobError(
                            f"token id {int(cat.ids.max())} is outside the vocabulary (size {self.vocab_size})")

    @staticmethod
    def independent(positions: Sequence[Categorical], vocab_size: int, name: str = "") -> InputDistribution:
        """The paper's case: every position drawn independently."""
        return InputDistribution(tuple(Block.position(c) for c in positions), vocab_size, name=name)

    @cached_property
    def length(self) -> int:
        return sum(b.length for b in self.blocks)

    @cached_property
    def is_factorized(self) -> bool:
        """True when all positions are independent (what ITGIS-style proposals need)."""
        return all(b.is_factorized for b in self.blocks)

    @cached_property
    def positions(self) -> list[Categorical]:
        """Per-position categoricals: exact factors when factorized, otherwise the exact marginals."""
        return [c for b in self.blocks for c in b.marginals()]

    def dense_log_probs(self) -> torch.Tensor:
        """``[length, vocab_size]`` float64 per-position log-probabilities (marginals), ``-inf`` off support."""
        return torch.stack([c.dense_log_probs(self.vocab_size) for c in self.positions])

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` sequences as an int64 tensor ``[n, length]``; all randomness comes from ``generator``."""
        if n < 0:
            raise LowprobError(f"cannot draw {n} samples")
        return torch.cat([b.sample(n, generator) for b in self.blocks], dim=1)

    def log_prob(self, tokens: torch.Tensor) -> torch.Tensor:
        """Exact ``log D(x)`` for each row of ``tokens`` ``[n, length]`` (``-inf`` outside the support)."""
        tokens = torch.as_tensor(tokens, dtype=torch.int64)
        if tokens.dim() != 2 or tokens.shape[1] != self.length:
            raise LowprobError(f"expected tokens of shape [n, {self.length}], got {list(tokens.shape)}")
        total = torch.zeros(tokens.shape[0], dtype=torch.float64)
        start = 0
        for bi, block in enumerate(self.blocks):
            part = tokens[:, start:start + block.length]
            per_comp = []
            for ki, comp in enumerate(block.components):
                lp = block.weights[ki].log().expand(tokens.shape[0]).clone()
                for j, cat in enumerate(comp):
                    lp = lp + self._dense_for(bi, ki, j, cat)[part[:, j]]
                per_comp.append(lp)
            total = total + torch.logsumexp(torch.stack(per_comp), dim=0)
            start += block.length
        return total

    def _dense_for(self, bi: int, ki: int, j: int, cat: Categorical) -> torch.Tensor:
        key = (bi, ki, j)
        if key not in self._dense:
            self._dense[key] = cat.dense_log_probs(self.vocab_size)
        return self._dense[key]

    def support_bound(self) -> int:
        """An upper bound on the number of distinct sequences (exact when no alternatives overlap)."""
        return math.prod(b.outcome_bound() for b in self.blocks)

    def enumerate(self, limit: int = 1_000_000) -> tuple[torch.Tensor, torch.Tensor]:
        """All sequences with positive probability and their probabilities, when there are at most ``limit``."""
        bound = self.support_bound()
        if bound > limit:
            raise LowprobError(f"support has up to {bound} sequences, more than the enumeration limit {limit}")
        per_block = [list(b.outcomes().items()) for b in self.blocks]
        rows, probs = [], []
        for choice in itertools.product(*per_block):
            rows.append(tuple(itertools.chain.from_iterable(t for t, _ in choice)))
            probs.append(math.prod(p for _, p in choice))
        return torch.tensor(rows, dtype=torch.int64), torch.tensor(probs, dtype=torch.float64)

    @cached_property
    def content_hash(self) -> str:
        """A stable sha256 of the distribution's content (not its source text)."""
        h = hashlib.sha256(f"v{self.vocab_size}".encode())
        for b in self.blocks:
            h.update(repr(tuple(round(w, 15) for w in b.weights.tolist())).encode())
            for comp in b.components:
                for cat in comp:
                    h.update(repr(cat.key()).encode())
        return h.hexdigest()[:16]

    def describe(self) -> str:
        kinds = "independent positions" if self.is_factorized else "positions with weighted alternatives"
        sizes = [c.support_size for c in self.positions]
        return f"{self.length} {kinds}; per-position support sizes {sizes}"
