"""ModelAdapter: exactly what estimators need from a TransformerLens model, and nothing they must re-implement.

Estimators never touch the model directly; they go through a :class:`~lowprob.core.meter.MeteredModel` that
wraps this adapter and counts every sequence pass.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from lowprob.core.errors import LowprobError
from lowprob.core.fast_forward import FastForward
from lowprob.core.target import Target
from lowprob.core.vocabulary import Vocabulary

EMBED_HOOK = "hook_embed"
PRE_UNEMBED_HOOK = "ln_final.hook_out"


CPU_CHUNK_ROWS = 256
"""Sequences per model pass on a CPU: small enough that one pass's activations stay in the caches. Measured with
benchmarks/chunk_size.py (2-core EPYC, one thread, side by side): 1.2-1.6x the sequences per second of 1024-row
chunks for the forward and the token gradients of planted-needle, lowprob-1l and lowprob-2l; no change on the
tiny one-layer planted models; the same logits (bit for bit there)."""
DEVICE_CHUNK_ROWS = 1024
"""Sequences per model pass on an accelerator, which wants large batches."""


class ModelAdapter:
    """Wraps a TransformerLens 4 model (a ``TransformerBridge``) and its vocabulary.

    ``chunk_size`` bounds how many sequences go through the model at once (memory and speed, not semantics: the
    logits do not depend on it); by default :data:`CPU_CHUNK_ROWS` on a CPU and :data:`DEVICE_CHUNK_ROWS`
    elsewhere. With
    ``fast`` (the default) the last-position methods use :class:`~lowprob.core.fast_forward.FastForward` when
    the model's architecture allows it (checked against the model's own forward at load time); ``fast_path``
    says whether it is in use.
    """

    def __init__(self, model: Any, vocab: Vocabulary, name: str, chunk_size: int | None = None,
                 device: str | torch.device = "cpu", fast: bool = True) -> None:
        self.model = model
        self.vocab = vocab
        self.name = name
        self.device = torch.device(device)
        if chunk_size is not None and chunk_size < 1:
            raise LowprobError(f"chunk_size must be at least 1 sequence, got {chunk_size}")
        if chunk_size is None:
            chunk_size = CPU_CHUNK_ROWS if self.device.type == "cpu" else DEVICE_CHUNK_ROWS
        self.chunk_size = chunk_size
        cfg = model.cfg
        self.n_ctx: int = int(cfg.n_ctx)
        self.d_vocab: int = int(cfg.d_vocab)
        self.d_model: int = int(cfg.d_model)
        if vocab.size != self.d_vocab:
            raise LowprobError(
                f"model {name!r} has d_vocab {self.d_vocab} but its vocabulary has {vocab.size} tokens")
        for p in model.parameters():
            p.requires_grad_(False)
        model.eval()
        self.fast_path: FastForward | None = FastForward.from_model(model) if fast else None

    @property
    def W_E(self) -> torch.Tensor:  # noqa: N802 - TransformerLens naming
        return self.model.W_E

    @property
    def W_U(self) -> torch.Tensor:  # noqa: N802
        return self.model.W_U

    def _check(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.dim() != 2:
            raise LowprobError(f"expected a [batch, positions] token tensor, got shape {list(tokens.shape)}")
        if tokens.shape[1] > self.n_ctx:
            raise LowprobError(f"sequences of {tokens.shape[1]} tokens exceed the model's context {self.n_ctx}")
        return tokens.to(self.device)

    def _chunks(self, tokens: torch.Tensor, fn: Callable[[torch.Tensor], Any]) -> list[Any]:
        return [fn(tokens[i:i + self.chunk_size]) for i in range(0, tokens.shape[0], self.chunk_size)]

    def _last(self, tokens: torch.Tensor, hooks: list[tuple[str, Any]] | None = None,
              keep: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Last-position logits ``[batch, d_vocab]`` through the reference TransformerBridge forward: the final
        residual is cut to the last position before the unembedding, so the other positions' logits are never
        computed. ``keep`` receives the pre-unembed activations when given."""

        def last_only(act: torch.Tensor, hook: Any) -> torch.Tensor:
            if keep is not None:
                keep["a"] = act[:, -1, :].float()
            return act[:, -1:, :]

        logits = self.model.run_with_hooks(tokens, fwd_hooks=[*(hooks or []), (PRE_UNEMBED_HOOK, last_only)])
        return logits[:, -1, :].float()

    def _activations(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(pre-unembed activations, logits)`` at the last position, by the fast path when there is one."""
        if self.fast_path is not None:
            a, logits = self.fast_path.last_activations(tokens)
            return a.float(), logits.float()
        keep: dict[str, torch.Tensor] = {}
        logits = self._last(tokens, keep=keep)
        return keep["a"], logits

    @torch.no_grad()
    def last_logits(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits at the last position, ``[batch, d_vocab]`` float32."""
        tokens = self._check(tokens)
        parts = self._chunks(tokens, lambda t: self._activations(t)[1])
        return torch.cat(parts) if parts else torch.empty((0, self.d_vocab))

    @torch.no_grad()
    def last_activations(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pre-unembed activations (after the final LayerNorm) at the last position and the logits they give.

        Returns ``(activations [batch, d_model], logits [batch, d_vocab])``; ``logits == activations @ W_U``.
        """
        tokens = self._check(tokens)
        parts = self._chunks(tokens, self._activations)
        return torch.cat([a for a, _ in parts]), torch.cat([lg for _, lg in parts])

    def embedding_gradients(self, tokens: torch.Tensor, target: Target) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits [batch, d_vocab], d s / d h [batch, positions, d_model])`` where ``h`` is the token
        embedding (``hook_embed``): :meth:`target_gradients` before its projection onto ``W_E``, for callers
        that need only some positions' scores (``G[b, i] = grad[b, i] @ W_E.T``)."""
        tokens = self._check(tokens)
        parts = self._chunks(tokens, lambda t: self._embedding_gradients(t, target))
        return torch.cat([lg for lg, _ in parts]), torch.cat([g for _, g in parts])

    def _embedding_gradients(self, tokens: torch.Tensor, target: Target) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`embedding_gradients` of one chunk."""
        ids = torch.tensor(target.token_ids, device=self.device)
        store: dict[str, torch.Tensor] = {}

        def leaf(act: torch.Tensor, hook: Any) -> torch.Tensor:
            store["e"] = act.detach().requires_grad_(True)
            return store["e"]

        with torch.enable_grad():
            if self.fast_path is not None:
                store["e"] = self.fast_path.W_E[tokens].detach().requires_grad_(True)
                logits = self.fast_path.from_embeddings(store["e"])[1].float()
            else:
                logits = self._last(tokens, hooks=[(EMBED_HOOK, leaf)])
            score = torch.logsumexp(logits[:, ids], dim=-1) if ids.numel() > 1 else logits[:, ids[0]]
            score.sum().backward()
        grad = store["e"].grad
        assert grad is not None
        return logits.detach(), grad

    def target_gradients(self, tokens: torch.Tensor, target: Target) -> tuple[torch.Tensor, torch.Tensor]:
        """Token-gradient scores of the target logit.

        Returns ``(logits [batch, d_vocab], G [batch, positions, d_vocab])`` where
        ``G[b, i, v] = (d s(x_b) / d h_i) · W_E[v]`` — the gradient with respect to a one-hot choice of token
        ``v`` at position ``i`` (positional embeddings cancel). ``s`` is the target logit; for a set target,
        the log-sum-exp of the set's logits.
        """
        tokens = self._check(tokens)

        def run(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            logits, grad = self._embedding_gradients(t, target)
            return logits, grad @ self.W_E.T.to(grad.dtype)

        parts = self._chunks(tokens, run)
        return torch.cat([lg for lg, _ in parts]), torch.cat([g for _, g in parts])

    def mean_target_gradients(self, tokens: torch.Tensor, target: Target) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits [batch, d_vocab], mean over the batch of G [positions, d_vocab])`` as :meth:`target_gradients`
        gives them, but averaged before the projection onto ``W_E`` (linear, so equal up to rounding), which
        saves a ``[batch, positions, d_vocab]`` product when only the batch mean is needed (ITGIS)."""
        tokens = self._check(tokens)
        parts = self._chunks(tokens, lambda t: self._embedding_gradients(t, target))
        mean = torch.stack([g.sum(dim=0) for _, g in parts]).sum(dim=0) / tokens.shape[0]
        return torch.cat([lg for lg, _ in parts]), mean @ self.W_E.T.to(mean.dtype)

    @torch.no_grad()
    def activations(self, tokens: torch.Tensor, hook: str) -> torch.Tensor:
        """Activations at the TransformerLens hook point ``hook`` for every position, ``[batch, positions, d]``
        float32. In a causal model position ``i`` depends only on tokens ``≤ i``, so one pass gives the features
        of every prefix (twisted SMC's twist heads read them). Only the last position is unembedded."""
        tokens = self._check(tokens)
        name = hook

        def run(t: torch.Tensor) -> torch.Tensor:
            keep: dict[str, torch.Tensor] = {}

            def grab(act: torch.Tensor, hook: Any) -> torch.Tensor:
                keep["a"] = act.detach().float().clone()
                return act

            def last_only(act: torch.Tensor, hook: Any) -> torch.Tensor:
                if name == PRE_UNEMBED_HOOK:
                    grab(act, hook)
                return act[:, -1:, :]

            hooks = [] if name == PRE_UNEMBED_HOOK else [(name, grab)]
            unknown = LowprobError(f"model {self.name!r} has no hook point {name!r}; use a TransformerLens hook name "
                                   "such as 'blocks.0.hook_resid_post' or 'ln_final.hook_out'")
            try:
                self.model.run_with_hooks(t, fwd_hooks=[*hooks, (PRE_UNEMBED_HOOK, last_only)])
            except KeyError as error:
                raise unknown from error
            if "a" not in keep:
                raise unknown
            return keep["a"]

        parts = self._chunks(tokens, run)
        return torch.cat(parts) if parts else torch.empty((0, tokens.shape[1], self.d_model))
