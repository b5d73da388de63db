"""Token-score proposals shared by ITGIS and MHIS: D tilted by gradient scores, per position, in log space.

Both methods propose token ``v`` at position ``i`` with probability ∝ ``D_i(v) · exp(score[i, v] / τ)`` over
the support of ``D_i``; everything here works on dense ``[..., vocab]`` float64 tables with ``-inf`` off the
support, so off-support tokens are never proposed and constant positions get probability 1.
"""

from __future__ import annotations

import torch

from lowprob.core.random import categorical


def tilted_log_probs(log_d: torch.Tensor, scores: torch.Tensor, temperature: float) -> torch.Tensor:
    """``log q`` with ``q ∝ D · exp(scores / temperature)`` along the last axis, normalised exactly in log space."""
    return torch.log_softmax(log_d + scores.to(torch.float64) / temperature, dim=-1)


def sample_rows(log_q: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` draws from each row of ``log_q`` ``[rows, vocab]``, as ``[n, rows]`` int64 token ids."""
    return categorical(log_q.exp(), n, generator).T


def gather_rows(table: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """``out[b, i] = table[i, tokens[b, i]]`` for a ``[positions, vocab]`` table and ``[n, positions]`` tokens."""
    return table.gather(1, tokens.T).T
