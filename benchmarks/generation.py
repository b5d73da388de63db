"""Generation speed with the key/value cache against the full recompute, side by side in one run.

Every path generates the same number of tokens after the same sampled prompts with the same seed, one after the
other in one process, and is checked to give the cached path's tokens, so the printed ratios compare like with
like. ``recompute`` runs each whole prefix through the exact fast last-position forward (the fallback's
arithmetic on a standard model); ``--plain`` adds the recompute through the plain TransformerLens forward (the
fallback for other architectures). Absolute tokens per second are context only.

    python benchmarks/generation.py                          # lowprob-1l, caps prompts, 16 and 40 tokens
    python benchmarks/generation.py --plain --device cuda    # also the plain forward, on a GPU
"""

from __future__ import annotations

import argparse
import time

import torch

from lowprob.api import compile_source, resolve_spec
from lowprob.core.generation import Generation, Sampling, generate
from lowprob.core.model import ModelAdapter
from lowprob.plugins import load_registry


def _timed(adapter: ModelAdapter, prompts: list[torch.Tensor], steps: int, sampling: Sampling, cache: bool,
           device: str) -> tuple[float, list[Generation]]:
    """Generated tokens per second over ``prompts`` (after one untimed warm-up batch) and the generations."""

    def run(batch: torch.Tensor, seed: int) -> Generation:
        return generate(adapter, batch, steps, sampling, torch.Generator(device).manual_seed(seed), cache=cache)

    run(prompts[0], 0)
    if device == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    out = [run(batch, seed) for seed, batch in enumerate(prompts, start=1)]
    if device == "cuda":
        torch.cuda.synchronize()
    return sum(batch.shape[0] for batch in prompts) * steps / (time.perf_counter() - started), out


def compare(label: str, adapter: ModelAdapter, prompts: list[torch.Tensor], steps: int, sampling: Sampling,
            plain: bool, device: str) -> None:
    """Print cached vs recompute (vs plain recompute) generated tokens per second for one setting."""
    cached_rate, reference = _timed(adapter, prompts, steps, sampling, True, device)
    paths = [("recompute", adapter)]
    if plain:
        paths.append(("plain recompute", ModelAdapter(adapter.model, adapter.vocab, adapter.name,
                                                      adapter.chunk_size, device, fast=False)))
    print(f"{label:<40} cached {cached_rate:>8.0f} tok/s", end="")
    for name, path in paths:
        rate, out = _timed(path, prompts, steps, sampling, False, device)
        differ = sum(int((a.tokens != b.tokens).any(dim=1).sum()) for a, b in zip(out, reference, strict=True))
        agree = "" if differ == 0 else f", TOKENS DIFFER in {differ} sequences"
        print(f" | {name} {rate:>7.0f} tok/s (cache {cached_rate / rate:5.1f}x faster{agree})", end="")
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--models", nargs="+", default=["lowprob-1l"])
    parser.add_argument("--distribution", default="caps", help="the prompts' distribution")
    parser.add_argument("--steps", type=int, nargs="+", default=[16, 40], help="tokens generated per prompt")
    parser.add_argument("--batch", type=int, default=256, help="prompts per generate call")
    parser.add_argument("--batches", type=int, default=2, help="timed generate calls per path")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--greedy", action="store_true", help="greedy decoding instead of sampling")
    parser.add_argument("--plain", action="store_true", help="also recompute through the plain forward (slow)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    torch.set_num_threads(args.threads)
    registry = load_registry()
    sampling = Sampling.argmax() if args.greedy else Sampling.sample(args.temperature)
    print(f"torch {torch.__version__}, device {args.device}, {torch.get_num_threads()} threads, {sampling.describe()}, "
          f"{args.distribution} prompts, {args.batches} x {args.batch} prompts per path")
    for name in args.models:
        compiled = compile_source(registry, resolve_spec(args.distribution, registry), model=name)
        model = compiled.model.model.to(args.device)
        adapter = ModelAdapter(model, compiled.model.vocab, compiled.model.name, device=args.device)
        if adapter.fast_path is None:
            print(f"{name}: no fast path, nothing to compare the cache with")
            continue
        dist = compiled.spec.distribution(None)
        gen = torch.Generator().manual_seed(0)
        prompts = [dist.sample(args.batch, gen).to(args.device) for _ in range(args.batches + 1)]
        for steps in args.steps:
            compare(f"{name} {dist.length} + {steps} tokens", adapter, prompts, steps, sampling, args.plain,
                    args.device)


if __name__ == "__main__":
    main()
