"""The contract of estimators that bracket log Z from both sides given exact hitting inputs (``tsmc``,
``tsmc-ctl``), so harnesses reach them through the registry instead of a plugin's internals."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

from lowprob.core.estimator import Problem
from lowprob.core.smc import LogZBracket


@runtime_checkable
class LogZBracketing(Protocol):
    """An estimator (instance) with bidirectional log-Z bounds (Zhao et al. 2024).

    ``bounds`` returns the mean log Ẑ of ``runs`` forward runs (a lower bound on log Z) and of one run
    conditioned on each exact hitting input in ``positives`` ``[k, positions]`` (an upper bound), with
    ``particles`` particles per run (the estimator's own default when ``None``), seeded by ``seed``.
    """

    def bounds(self, problem: Problem, positives: torch.Tensor, *, runs: int = 16, particles: int | None = None,
               seed: int = 0) -> LogZBracket: ...
