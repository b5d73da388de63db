"""Sequences per second of the model's batched calls at several chunk sizes, side by side in one run.

``ModelAdapter`` cuts every call into chunks (``chunk_rows``) before the model sees it; the chunk decides how
large the activation tensors of one pass are, and so whether they stay in the CPU's caches. Every chunk size runs
on the same sampled inputs, interleaved over ``--repeats`` rounds (the fastest round counts), for the
last-position forward (what naive and ground truth call) and the token gradients (ITGIS, MHIS, tsmc); each is
checked to give the same logits as the 1024-row chunk (largest absolute difference printed). Ratios are to the
1024-row chunk; absolute rates are context only (they depend on the machine and its load).

    python benchmarks/chunk_size.py
    python benchmarks/chunk_size.py --models planted-needle lowprob-1l --sizes 64 256 1024 --samples 4096
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from functools import partial

import torch

from lowprob.api import compile_problem, resolve_spec
from lowprob.core.model import ModelAdapter
from lowprob.core.target import Target
from lowprob.plugins import load_registry

PROBLEMS = {"planted-needle": ("planted-needle-e6", "hit"), "planted-threshold": ("planted-threshold-e6", "hit"),
            "lowprob-1l": ("hex", "argmax == #9"), "lowprob-2l": ("hex", "argmax == #9")}
"""A distribution and target per model (the inputs' length and the model's width set the activations' size)."""


def timed(adapter: ModelAdapter, rows: int, call: Callable[[], torch.Tensor]) -> tuple[float, torch.Tensor]:
    adapter.chunk_size = rows
    start = time.perf_counter()
    out = call()
    return time.perf_counter() - start, out


def gradients(adapter: ModelAdapter, tokens: torch.Tensor, target: Target) -> torch.Tensor:
    return adapter.embedding_gradients(tokens, target)[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(PROBLEMS), choices=list(PROBLEMS))
    parser.add_argument("--sizes", nargs="+", type=int, default=[32, 64, 128, 256, 512, 1024, 4096])
    parser.add_argument("--samples", type=int, default=8192)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    registry = load_registry()
    sizes = sorted({*args.sizes, 1024})
    print(f"torch {torch.__version__}, 1 thread, {args.samples} sequences per call; seq/s (ratio to 1024 rows)")
    for name in args.models:
        spec, target_text = PROBLEMS[name]
        problem = compile_problem(registry, resolve_spec(spec, registry), model=name, target=target_text)
        adapter = problem.model.adapter
        tokens = problem.distribution.sample(args.samples, torch.Generator().manual_seed(0))
        target: Target = problem.target
        calls: dict[str, Callable[[], torch.Tensor]] = {
            "forward": partial(adapter.last_logits, tokens),
            "gradients": partial(gradients, adapter, tokens, target),
        }
        for op, call in calls.items():
            best = {rows: float("inf") for rows in sizes}
            outs: dict[int, torch.Tensor] = {}
            for _ in range(args.repeats):
                for rows in sizes:
                    seconds, outs[rows] = timed(adapter, rows, call)
                    best[rows] = min(best[rows], seconds)
            base = args.samples / best[1024]
            cells = " | ".join(f"{rows:>4}: {args.samples / best[rows]:7.0f} ({args.samples / best[rows] / base:4.2f}x)"
                               for rows in sizes)
            diff = max(float((outs[rows] - outs[1024]).abs().max()) for rows in sizes)
            print(f"{name:<18} {op:<9} L={tokens.shape[1]} d={adapter.d_model}  {cells}  max |diff| {diff:.1e}")


if __name__ == "__main__":
    main()
