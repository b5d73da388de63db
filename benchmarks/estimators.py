"""Seconds per target for ITGIS and MHIS at the paper's budget, with the fast forward and with the plain one.

Both model paths run the same estimator, seed and budget in one process, so the ratio compares like with
like (the estimates agree up to float32 rounding); absolute seconds are context only.

    python benchmarks/estimators.py                       # lowprob-1l, hex, target "7", paper budgets
    python benchmarks/estimators.py --model lowprob-2l --scale 0.25
"""

from __future__ import annotations

import argparse
import time

from lowprob.api import compile_source, resolve_spec, run_problem
from lowprob.core.budget import Budget
from lowprob.core.model import ModelAdapter
from lowprob.plugins import load_registry


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="lowprob-1l")
    parser.add_argument("--distribution", default="hex")
    parser.add_argument("--target", default='argmax == "7"')
    parser.add_argument("--estimators", nargs="+", default=["itgis", "mhis"])
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the paper budget to spend")
    args = parser.parse_args()
    registry = load_registry()
    compiled = compile_source(registry, resolve_spec(args.distribution, registry), model=args.model,
                              targets=[args.target])
    fast = compiled.model
    plain = ModelAdapter(fast.model, fast.vocab, fast.name, fast=False)
    print(f"{args.model} / {args.distribution} / {args.target}; fast path in use: {fast.fast_path is not None}")
    for name in args.estimators:
        paper = registry.estimator(name).paper_budget()
        calls = int((paper.model_calls or 0) * args.scale)
        budget = Budget(model_calls=calls, backward_weight=paper.backward_weight)
        need = registry.estimator(name)(None).min_step_calls(budget.backward_weight)
        if calls < need:
            print(f"  {name:<6} skipped: {calls} calls is less than its first step ({need:.0f}); raise --scale")
            continue
        seconds = {}
        for label, adapter in (("fast", fast), ("plain", plain)):
            source = type(compiled)(adapter, compiled.spec, compiled.target_names)
            problem = source.problem(None, args.target)
            started = time.perf_counter()
            result = run_problem(registry, problem, name, None, budget, seed=0, progress=False)
            seconds[label] = time.perf_counter() - started
            print(f"  {name:<6} {label:<5} {seconds[label]:8.1f} s  {result.summary()}")
        print(f"  {name:<6} speed-up of the fast path: {seconds['plain'] / seconds['fast']:.1f}x "
              f"({calls} model calls, backward weight {budget.backward_weight})")


if __name__ == "__main__":
    main()
