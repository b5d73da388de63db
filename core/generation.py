"""Autoregressive generation and teacher-forced continuation log-probabilities, for targets on what a model writes.

The interface estimators use (through :class:`~lowprob.core.meter.MeteredModel`, which meters it):

- :class:`Sampling` says how the next token is chosen: ``Sampling.greedy()`` (the argmax) or
  ``Sampling.sample(temperature, top_k)`` (a draw from the softmax of ``logits / temperature``, optionally
  truncated to the ``top_k`` largest logits).
- ``generate(tokens [B, n], steps, sampling, generator) -> Generation``: ``steps`` tokens after each prompt,
  batched, every draw through :mod:`lowprob.core.random` with the given generator (same seed, same tokens; an
  :class:`~lowprob.core.random.Enumerator` enumerates them).
- ``continuation_logprobs(tokens [B, n], continuation [L] or [B, L], sampling) -> [B, L]``: ``log p(y_i | x, y_<i)``
  under the same sampling distribution, teacher-forced, in one pass over prompt and continuation.

Both refuse ``n + steps > n_ctx``. A :class:`Decoder` gives the next-token logits of a growing batch of
sequences: by the key/value cache of :class:`~lowprob.core.fast_forward.FastForward` where the model has the
standard architecture (checked against the model's own forward at load), else by recomputing each whole prefix
through the adapter (any model). Both consume the generator identically, so they give the same tokens.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, TypeAlias

import torch

from lowprob.core.errors import LowprobError
from lowprob.core.fast_forward import FastForward, KVCache
from lowprob.core.model import ModelAdapter
from lowprob.core.random import Enumerator, categorical

RandomSource: TypeAlias = torch.Generator | Enumerator
"""Where draws come from: a seeded ``torch.Generator``, or the conformance kit's enumerator."""


@dataclass(frozen=True)
class Sampling:
    """How the next token is chosen: the argmax (``greedy``), or a draw at ``temperature`` from the ``top_k``
    largest logits (all of them when ``top_k`` is ``None``; ties at the k-th logit are all kept)."""

    greedy: bool = False
    temperature: float = 1.0
    top_k: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.greedy, bool):
            raise LowprobError(f"sampling: greedy must be true or false, got {self.greedy!r}")
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, int | float) or not (t > 0 and math.isfinite(t)):
            raise LowprobError(f"sampling: temperature must be a positive finite number, got {t!r}")
        k = self.top_k
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
            raise LowprobError(f"sampling: top_k must be a positive integer, got {k!r}")
        if self.greedy and (t != 1.0 or k is not None):
            raise LowprobError("sampling: greedy decoding takes no temperature or top_k")

    @classmethod
    def argmax(cls) -> Sampling:
        """Greedy decoding: the token of largest logit (the first of equal ones)."""
        return cls(greedy=True)

    @classmethod
    def sample(cls, temperature: float = 1.0, top_k: int | None = None) -> Sampling:
        """Ancestral sampling at ``temperature``, optionally from the ``top_k`` largest logits."""
        return cls(temperature=temperature, top_k=top_k)

    def describe(self) -> str:
        """``greedy`` or ``sample(temperature=…, top_k=…)``, as the DSL spells it."""
        if self.greedy:
            return "greedy"
        k = "" if self.top_k is None else f", top_k={self.top_k}"
        return f"sample(temperature={self.temperature:g}{k})"

    def log_probs(self, logits: torch.Tensor) -> torch.Tensor:
        """Log-probabilities of every token under this sampling distribution, ``[..., d_vocab]`` float32
        (``-inf`` outside its support; a point mass on the argmax when greedy)."""
        logits = logits.float()
        if self.greedy:
            out = torch.full_like(logits, -math.inf)
            return out.scatter_(-1, logits.argmax(-1, keepdim=True), 0.0)
        scaled = logits / self.temperature
        if self.top_k is not None and self.top_k < scaled.shape[-1]:
            kth = scaled.topk(self.top_k, dim=-1).values[..., -1:]
            scaled = scaled.masked_fill(scaled < kth, -math.inf)
        return torch.log_softmax(scaled, dim=-1)

    def choose(self, logits: torch.Tensor, generator: RandomSource) -> tuple[torch.Tensor, torch.Tensor]:
        """The next token of each row of ``logits [B, d_vocab]`` and its log-probability, ``([B], [B])``."""
        if self.greedy:
            return logits.argmax(-1), torch.zeros(logits.shape[0], device=logits.device)
        log_p = self.log_probs(logits)
        probs = log_p.exp()
        if isinstance(generator, torch.Generator) and generator.device != probs.device:
            probs = probs.to(generator.device)
        tokens = categorical(probs, 1, generator)[:, 0].to(logits.device)
        return tokens, log_p.gather(-1, tokens[:, None])[:, 0]


@dataclass(frozen=True)
class Generation:
    """Generated continuations: ``tokens [B, steps]`` (int64 ids) and ``logprobs [B, steps]``, the
    log-probability of each chosen token under the sampling distribution (0 for greedy)."""

    tokens: torch.Tensor
    logprobs: torch.Tensor

    @property
    def logprob(self) -> torch.Tensor:
        """Log-probability of each whole continuation, ``[B]``."""
        return self.logprobs.sum(dim=1)


class Decoder(Protocol):
    """Next-token logits of a batch of sequences that grows by one token per call of :meth:`push`."""

    def start(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, d_vocab]`` after the prompts ``tokens [B, n]``."""
        ...

    def push(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, d_vocab]`` after appending ``tokens [B]``."""
        ...

    def select(self, index: torch.Tensor) -> None:
        """Keep the sequences ``index [B]`` (with repeats: resampled particles), in that order."""
        ...

    @property
    def normed(self) -> torch.Tensor:
        """The final LayerNorm's output ``[B, d_model]`` (``ln_final.hook_out``) behind the last logits."""
        ...

    def final_logits(self, tokens: torch.Tensor, keep: int) -> torch.Tensor:
        """Logits ``[B, keep, d_vocab]`` at the last ``keep`` positions of ``tokens [B, n]`` (position i sees
        tokens ≤ i), teacher-forced."""
        ...


class CachedDecoder:
    """A :class:`Decoder` over :class:`FastForward`'s key/value cache: each call processes new positions only."""

    def __init__(self, fast: FastForward, capacity: int) -> None:
        self.fast, self.capacity = fast, capacity
        self.cache: KVCache | None = None
        self._normed = torch.empty(0)

    @property
    def normed(self) -> torch.Tensor:
        return self._normed[:, -1].float()

    def _logits(self, tokens: torch.Tensor) -> torch.Tensor:
        assert self.cache is not None, "start the decoder first"
        self._normed = self.fast.decode_normed(self.cache, tokens)
        return (self._normed @ self.fast.W_U + self.fast.b_U)[:, -1].float()

    def start(self, tokens: torch.Tensor) -> torch.Tensor:
        self.cache = self.fast.new_cache(tokens.shape[0], self.capacity)
        return self._logits(tokens)

    def push(self, tokens: torch.Tensor) -> torch.Tensor:
        return self._logits(tokens[:, None])

    def select(self, index: torch.Tensor) -> None:
        assert self.cache is not None, "start the decoder first"
        self.cache = self.cache.select(index.to(self.cache.keys[0].device))
        self._normed = self._normed[index.to(self._normed.device)]

    def final_logits(self, tokens: torch.Tensor, keep: int) -> torch.Tensor:
        return self.fast.decode(self.fast.new_cache(tokens.shape[0], tokens.shape[1]), tokens, keep).float()


class RecomputeDecoder:
    """A :class:`Decoder` that runs each whole prefix through the adapter: slower, correct for any model."""

    def __init__(self, adapter: ModelAdapter) -> None:
        self.adapter = adapter
        self.sequences = torch.empty(0, 0, dtype=torch.long)
        self.normed = torch.empty(0)

    def start(self, tokens: torch.Tensor) -> torch.Tensor:
        self.sequences = tokens
        self.normed, logits = self.adapter.last_activations(tokens)
        return logits

    def push(self, tokens: torch.Tensor) -> torch.Tensor:
        self.sequences = torch.cat([self.sequences, tokens[:, None].to(self.sequences.device)], dim=1)
        self.normed, logits = self.adapter.last_activations(self.sequences)
        return logits

    def select(self, index: torch.Tensor) -> None:
        self.sequences = self.sequences[index.to(self.sequences.device)]
        self.normed = self.normed[index.to(self.normed.device)]

    def final_logits(self, tokens: torch.Tensor, keep: int) -> torch.Tensor:
        n = tokens.shape[1]
        return torch.stack([self.adapter.last_logits(tokens[:, :i + 1]) for i in range(n - keep, n)], dim=1)


def decoder(adapter: ModelAdapter, capacity: int, cache: bool = True) -> Decoder:
    """The cached decoder where the adapter has a fast path (and ``cache``), else the full recompute."""
    if cache and adapter.fast_path is not None:
        return CachedDecoder(adapter.fast_path, capacity)
    return RecomputeDecoder(adapter)


def check_request(adapter: ModelAdapter, tokens: torch.Tensor, steps: int, what: str) -> torch.Tensor:
    """``tokens`` on the adapter's device if ``tokens [B, n]`` followed by ``steps`` tokens is a valid request."""
    tokens = _token_ids(adapter, tokens, what, "prompts")
    if tokens.shape[1] < 1:
        raise LowprobError(f"{what}: the prompt needs at least one token")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise LowprobError(f"{what}: the number of continuation tokens must be a positive integer, got {steps!r}")
    if tokens.shape[1] + steps > adapter.n_ctx:
        raise LowprobError(f"{what}: a {tokens.shape[1]}-token prompt and {steps} continuation tokens exceed "
                           f"model {adapter.name!r}'s context of {adapter.n_ctx} tokens")
    return tokens


def _token_ids(adapter: ModelAdapter, tokens: torch.Tensor, what: str, name: str) -> torch.Tensor:
    """``tokens`` as int64 on the adapter's device if it is a ``[batch, positions]`` tensor of valid ids."""
    if not isinstance(tokens, torch.Tensor) or tokens.dim() != 2 or tokens.dtype.is_floating_point \
            or tokens.dtype == torch.bool:
        shape = list(tokens.shape) if isinstance(tokens, torch.Tensor) else type(tokens).__name__
        raise LowprobError(f"{what}: the {name} must be a [batch, positions] integer token tensor, got {shape}")
    if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= adapter.d_vocab):
        raise LowprobError(f"{what}: token ids of the {name} must lie in [0, {adapter.d_vocab}), got "
                           f"{int(tokens.min())}..{int(tokens.max())}")
    return tokens.to(device=adapter.device, dtype=torch.long)


def _chunked(adapter: ModelAdapter, tokens: torch.Tensor,
             fn: Callable[[slice], tuple[torch.Tensor, ...]]) -> list[tuple[torch.Tensor, ...]]:
    return [fn(slice(i, i + adapter.chunk_size)) for i in range(0, tokens.shape[0], adapter.chunk_size)]


@torch.no_grad()
def generate(adapter: ModelAdapter, tokens: torch.Tensor, steps: int, sampling: Sampling, generator: RandomSource,
             cache: bool = True) -> Generation:
    """``steps`` tokens after each prompt of ``tokens [B, n]`` (see the module docstring); ``cache=False``
    forces the full recompute."""
    tokens = check_request(adapter, tokens, steps, "generate")

    def run(rows: slice) -> tuple[torch.Tensor, torch.Tensor]:
        dec = decoder(adapter, tokens.shape[1] + steps - 1, cache)
        logits = dec.start(tokens[rows])
        chosen, logprobs = [], []
        for i in range(steps):
            next_tokens, log_p = sampling.choose(logits, generator)
            chosen.append(next_tokens)
            logprobs.append(log_p)
            if i + 1 < steps:
                logits = dec.push(next_tokens)
        return torch.stack(chosen, dim=1), torch.stack(logprobs, dim=1)

    parts = _chunked(adapter, tokens, run)
    if not parts:
        return Generation(torch.empty(0, steps, dtype=torch.long), torch.empty(0, steps))
    return Generation(torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]))


def as_batch(continuation: torch.Tensor, batch: int) -> torch.Tensor:
    """A continuation ``[L]`` (the same for every prompt) or ``[B, L]`` as ``[B, L]``."""
    if not isinstance(continuation, torch.Tensor) or continuation.dim() not in (1, 2):
        raise LowprobError("continuation_logprobs: the continuation must be a token tensor [L] or [B, L]")
    if continuation.dim() == 1:
        return continuation.unsqueeze(0).expand(batch, -1)
    if continuation.shape[0] != batch:
        raise LowprobError(f"continuation_logprobs: {continuation.shape[0]} continuations for {batch} prompts")
    return continuation


@torch.no_grad()
def continuation_logprobs(adapter: ModelAdapter, tokens: torch.Tensor, continuation: torch.Tensor,
                          sampling: Sampling, cache: bool = True) -> torch.Tensor:
    """``log p(y_i | x, y_<i)`` of ``continuation`` after each prompt, ``[B, L]`` (see the module docstring)."""
    what = "continuation_logprobs"
    batch = tokens.shape[0] if isinstance(tokens, torch.Tensor) and tokens.dim() == 2 else 0
    ys = as_batch(continuation, batch)
    tokens = check_request(adapter, tokens, ys.shape[1], what)
    ys = _token_ids(adapter, ys, what, "continuation")
    n, length = tokens.shape[1], ys.shape[1]

    def run(rows: slice) -> tuple[torch.Tensor]:
        sequences = torch.cat([tokens[rows], ys[rows, :-1]], dim=1)
        logits = decoder(adapter, n + length - 1, cache).final_logits(sequences, length)
        return (sampling.log_probs(logits).gather(-1, ys[rows, :, None])[..., 0],)

    parts = _chunked(adapter, tokens, run)
    return torch.cat([p[0] for p in parts]) if parts else torch.empty(0, length)
