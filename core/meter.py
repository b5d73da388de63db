"""The metered model: the one place compute is counted, so budgets are comparable across estimators."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import torch

from lowprob.core import generation
from lowprob.core.errors import LowprobError
from lowprob.core.generation import Generation, Sampling
from lowprob.core.model import ModelAdapter
from lowprob.core.random import Enumerator
from lowprob.core.target import Target
from lowprob.core.vocabulary import Vocabulary

T = TypeVar("T")


@dataclass(frozen=True)
class Cost:
    """Compute spent: sequence passes through the model, seconds inside it, and the token positions run forward.

    A forward pass is one sequence through the model once, whatever its length. ``positions`` counts the token
    positions those passes processed (an n-token sequence: n), the unit for comparing work across lengths;
    ``generated_tokens`` counts tokens chosen by generation. Generating L tokens after an n-token prompt is one
    forward pass over n + L - 1 positions (the key/value cache processes each position once; the full recompute
    costs more seconds, never more passes), so budgets in model calls work unchanged for generation.
    """

    forward_passes: int = 0
    backward_passes: int = 0
    model_seconds: float = 0.0
    positions: int = 0
    generated_tokens: int = 0

    def model_calls(self, backward_weight: float) -> float:
        """Forward passes plus ``backward_weight`` times the backward passes."""
        return self.forward_passes + backward_weight * self.backward_passes

    def __sub__(self, other: Cost) -> Cost:
        return Cost(self.forward_passes - other.forward_passes, self.backward_passes - other.backward_passes,
                    self.model_seconds - other.model_seconds, self.positions - other.positions,
                    self.generated_tokens - other.generated_tokens)


class MeteredModel:
    """A :class:`ModelAdapter` that counts every sequence it runs forward and every one it back-propagates.

    One sequence through the model is one forward pass, whatever its length; a gradient computation is one
    forward and one backward pass per sequence. Generation and continuation log-probabilities count one forward
    pass per sequence too, over the positions of prompt and continuation but the last (see :class:`Cost`).
    """

    def __init__(self, adapter: ModelAdapter) -> None:
        self.adapter = adapter
        self._forward = 0
        self._backward = 0
        self._seconds = 0.0
        self._positions = 0
        self._generated = 0

    @property
    def cost(self) -> Cost:
        return Cost(self._forward, self._backward, self._seconds, self._positions, self._generated)

    @property
    def vocab(self) -> Vocabulary:
        return self.adapter.vocab

    @property
    def n_ctx(self) -> int:
        return self.adapter.n_ctx

    @property
    def d_vocab(self) -> int:
        return self.adapter.d_vocab

    @property
    def name(self) -> str:
        return self.adapter.name

    @property
    def W_U(self) -> torch.Tensor:  # noqa: N802
        return self.adapter.W_U

    def _metered(self, backward: bool, fn: Callable[..., T], tokens: torch.Tensor, *args: Any,
                 extra_positions: int = 0, generated: int = 0) -> T:
        """``fn(tokens, *args)``, counting one forward (and, with ``backward``, one backward) pass per sequence
        over its positions plus ``extra_positions``, and ``generated`` generated tokens per sequence."""
        started = time.perf_counter()
        out = fn(tokens, *args)
        n = tokens.shape[0]
        self._forward += n
        if backward:
            self._backward += n
        self._positions += n * (tokens.shape[1] + extra_positions)
        self._generated += n * generated
        self._seconds += time.perf_counter() - started
        return out

    def generate(self, tokens: torch.Tensor, steps: int, sampling: Sampling,
                 generator: torch.Generator | Enumerator) -> Generation:
        """``steps`` tokens after each prompt (:func:`lowprob.core.generation.generate`); one forward pass per
        sequence over ``n + steps - 1`` positions, ``steps`` generated tokens."""
        return self._metered(False, partial(generation.generate, self.adapter), tokens, steps, sampling, generator,
                             extra_positions=steps - 1, generated=steps)

    def continuation_logprobs(self, tokens: torch.Tensor, continuation: torch.Tensor,
                              sampling: Sampling) -> torch.Tensor:
        """``log p(y_i | x, y_<i)`` ``[B, L]`` (:func:`lowprob.core.generation.continuation_logprobs`); one
        forward pass per sequence over ``n + L - 1`` positions."""
        length = continuation.shape[-1] if isinstance(continuation, torch.Tensor) else 1
        return self._metered(False, partial(generation.continuation_logprobs, self.adapter), tokens, continuation,
                             sampling, extra_positions=length - 1)

    def last_logits(self, tokens: torch.Tensor) -> torch.Tensor:
        return self._metered(False, self.adapter.last_logits, tokens)

    def last_activations(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._metered(False, self.adapter.last_activations, tokens)

    def target_gradients(self, tokens: torch.Tensor, target: Target) -> tuple[torch.Tensor, torch.Tensor]:
        return self._metered(True, self.adapter.target_gradients, tokens, target)

    def mean_target_gradients(self, tokens: torch.Tensor, target: Target) -> tuple[torch.Tensor, torch.Tensor]:
        return self._metered(True, self.adapter.mean_target_gradients, tokens, target)

    def embedding_gradients(self, tokens: torch.Tensor, target: Target) -> tuple[torch.Tensor, torch.Tensor]:
        return self._metered(True, self.adapter.embedding_gradients, tokens, target)

    def decoding(self, tokens: torch.Tensor, steps: int, walked: int = 0) -> Decoding:
        """An incremental decoding session over the prompts ``tokens [B, n]`` for up to ``steps`` tokens, for
        estimators that choose each token themselves (twisted SMC over generated tokens); it costs what
        :meth:`generate` of ``steps`` tokens costs. The first ``walked`` of them are input positions the caller
        pushes (joint twisted SMC): positions, not generated tokens."""
        return Decoding(self, tokens, steps, walked)

    @property
    def W_E(self) -> torch.Tensor:  # noqa: N802
        return self.adapter.W_E

    @property
    def d_model(self) -> int:
        return self.adapter.d_model

    def activations(self, tokens: torch.Tensor, hook: str) -> torch.Tensor:
        """Activations at ``hook`` for every position (see :meth:`ModelAdapter.activations`); n forward passes."""
        return self._metered(False, self.adapter.activations, tokens, hook)

    def fork(self) -> MeteredModel:
        """A fresh meter over the same model: compute counted on it is reported apart from this one's (e.g.
        twist training kept outside an estimate's budget)."""
        return MeteredModel(self.adapter)


class Decoding:
    """Next-token logits of ``B`` sequences that grow one chosen token at a time, on a :class:`MeteredModel`.

    ``logits`` ``[B, d_vocab]`` are those after the tokens so far; :meth:`push` appends one token per sequence
    (at most ``steps - 1`` times: the last chosen token is never run), :meth:`select` keeps sequences by index
    (resampling; free, since it copies computed keys and values). Opening the session costs what
    :meth:`MeteredModel.generate` of ``steps`` tokens costs (one forward pass per sequence over ``n + steps - 1``
    positions, ``steps`` generated tokens), counted when it opens.
    """

    def __init__(self, meter: MeteredModel, tokens: torch.Tensor, steps: int, walked: int = 0) -> None:
        started = time.perf_counter()
        tokens = generation.check_request(meter.adapter, tokens, steps, "decoding")
        self.meter, self.steps, self.pushed = meter, steps, 0
        self.decoder = generation.decoder(meter.adapter, tokens.shape[1] + steps - 1)
        self.logits = self.decoder.start(tokens)
        meter._forward += tokens.shape[0]
        meter._positions += tokens.shape[0] * (tokens.shape[1] + steps - 1)
        meter._generated += tokens.shape[0] * (steps - walked)
        meter._seconds += time.perf_counter() - started

    @property
    def batch(self) -> int:
        return int(self.logits.shape[0])

    @property
    def features(self) -> torch.Tensor:
        """The final LayerNorm's output ``[B, d_model]`` (TransformerLens ``ln_final.hook_out``) behind
        :attr:`logits`: the residual stream of each sequence's last position, computed anyway (free)."""
        return self.decoder.normed

    def push(self, tokens: torch.Tensor) -> torch.Tensor:
        """Append ``tokens [B]`` and return the next logits ``[B, d_vocab]``."""
        if self.pushed + 1 >= self.steps:
            raise LowprobError(f"decoding: this session was opened for {self.steps} tokens, and the last one is "
                               "chosen from the logits, never pushed")
        if tokens.shape != (self.batch,):
            raise LowprobError(f"decoding: push one token per sequence ([{self.batch}]), got {list(tokens.shape)}")
        started = time.perf_counter()
        self.logits = self.decoder.push(tokens.to(self.logits.device))
        self.pushed += 1
        self.meter._seconds += time.perf_counter() - started
        return self.logits

    def select(self, index: torch.Tensor) -> None:
        """Keep the sequences ``index [B]`` (repeats allowed), in that order; the batch size stays ``B``."""
        if index.shape != (self.batch,):
            raise LowprobError(f"decoding: select needs {self.batch} indices, got {list(index.shape)}")
        self.decoder.select(index)
        self.logits = self.logits[index.to(self.logits.device)]
