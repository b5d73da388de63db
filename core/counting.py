"""Brute-force ground truth: which token is the last position's argmax, counted over many sampled inputs.

One pass counts every token at once (a ``bincount`` of argmaxes) and keeps, per token, the first few inputs
that hit it, in draw order, so exact samples from the conditional ``D(x | M(x) = t)`` are available later.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from lowprob.core.distribution import InputDistribution


@dataclass
class ArgmaxCounts:
    """Running argmax counts ``[d_vocab]`` and up to ``reservoir_size`` hitting inputs per token."""

    d_vocab: int
    reservoir_size: int
    counts: torch.Tensor = field(init=False)
    hits: dict[int, list[tuple[int, ...]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.counts = torch.zeros(self.d_vocab, dtype=torch.int64)

    @property
    def samples(self) -> int:
        return int(self.counts.sum())

    def add(self, tokens: torch.Tensor, argmax: torch.Tensor) -> None:
        """Count a batch (``tokens [B, n]`` with their argmaxes ``[B]``) and fill the reservoirs in draw order."""
        argmax = argmax.cpu()
        if self.reservoir_size > 0:
            order = torch.argsort(argmax, stable=True)
            ranked = argmax[order]
            rank = torch.arange(ranked.numel()) - torch.searchsorted(ranked, ranked, side="left")
            keep = order[rank + self.counts[ranked] < self.reservoir_size]
            rows = tokens[keep].cpu().tolist()
            for token, row in zip(argmax[keep].tolist(), rows, strict=True):
                self.hits.setdefault(token, []).append(tuple(row))
        self.counts += torch.bincount(argmax, minlength=self.d_vocab)


def count_argmax(argmax: Callable[[torch.Tensor], torch.Tensor], distribution: InputDistribution, samples: int,
                 generator: torch.Generator, *, batch_size: int = 4096, reservoir_size: int = 0,
                 on_batch: Callable[[int], None] | None = None) -> ArgmaxCounts:
    """Draw ``samples`` inputs from ``distribution`` with ``generator`` and count their argmax tokens.

    ``argmax`` maps a ``[B, n]`` token batch to its last-position argmax tokens ``[B]`` (ties to the lowest
    token id, as ``torch.argmax`` does); ``on_batch`` is called with each batch's size (for progress).
    """
    tally = ArgmaxCounts(distribution.vocab_size, reservoir_size)
    done = 0
    while done < samples:
        n = min(batch_size, samples - done)
        tokens = distribution.sample(n, generator)
        with torch.no_grad():
            tally.add(tokens, argmax(tokens))
        done += n
        if on_batch is not None:
            on_batch(n)
    return tally
