"""Output-event estimators against brute-force ground truth: estimate, interval, coverage of the truth, cost.

Each event's ground truth is a ``lowprob ground-truth run --target`` file (committed under
``docs/results/output-events/ground-truth/``). Every estimator that supports the event runs at the same budget
for several seeds; a run *covers* when its interval contains the ground truth's empirical probability. Prints
one Markdown row per (event, estimator) and, with ``--output``, writes every run as one JSON line.

    python benchmarks/output_events.py                            # the four events, 10 seeds, 2048 calls
    python benchmarks/output_events.py --seeds 3 --budget 1024 --output /tmp/rows.jsonl
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from lowprob.api import compile_problem, resolve_spec, run_problem
from lowprob.core.budget import Budget
from lowprob.core.estimate import Estimate
from lowprob.core.stats import clopper_pearson
from lowprob.output_ground_truth import OutputGroundTruth
from lowprob.plugins import load_registry

GROUND_TRUTH = Path(__file__).resolve().parent.parent / "docs" / "results" / "output-events" / "ground-truth"


@dataclass(frozen=True)
class Event:
    """An output event of the benchmark, its ground-truth file and the estimators that take it."""

    target: str
    file: str
    estimators: tuple[str, ...]


EVENTS = (
    Event('sample(2) == " of the"', "of-the.json", ("naive", "conditional-exact", "output-tsmc")),
    Event('sample(1) contains {" in", " on", " at"}', "in-on-at.json", ("naive", "conditional-exact", "output-tsmc")),
    Event('sample(3) contains {" in"}', "contains-in-3.json", ("naive", "output-tsmc")),
    Event('greedy(2) == " of the"', "greedy-of-the.json", ("naive", "conditional-exact")),
)


def _row(event: Event, estimator: str, gt: OutputGroundTruth, runs: list[Estimate]) -> str:
    """One Markdown row summarising the seeds of one estimator on one event.

    ``z`` is the mean's distance from the truth in standard errors: the seeds' spread over sqrt(seeds) combined
    with the ground truth's own binomial error.
    """
    truth = gt.probability
    values = [run.raw_value for run in runs]
    covered = sum(run.ci is not None and run.ci.low <= truth <= run.ci.high for run in runs)
    widths = [run.ci.high - run.ci.low for run in runs if run.ci is not None]
    spread = statistics.stdev(values) if len(values) > 1 else float("nan")
    z = (statistics.mean(values) - truth) / math.sqrt(spread**2 / len(values) + truth * (1 - truth) / gt.samples)
    return (f"| `{event.target}` | {estimator} | {statistics.mean(values):.3e} | "
            f"{statistics.mean(values) / truth - 1:+.1%} | {z:.2f} | {spread / truth:.1%} | "
            f"{statistics.mean(widths) / truth:.2f} | {covered}/{len(runs)} | "
            f"{statistics.mean(run.generated_tokens for run in runs):.0f} | "
            f"{statistics.mean(run.seconds for run in runs):.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="lowprob-1l")
    parser.add_argument("--distribution", default="english")
    parser.add_argument("--budget", type=int, default=2048, help="model calls per run")
    parser.add_argument("--seeds", type=int, default=10, help="seeds 1..N per estimator and event")
    parser.add_argument("--ground-truth", type=Path, default=GROUND_TRUTH, help="folder of the ground-truth files")
    parser.add_argument("--output", type=Path, help="append every run here as a JSON line")
    parser.add_argument("--events", type=int, nargs="+", help="run only these events (0-based indices into EVENTS)")
    args = parser.parse_args()
    registry = load_registry()
    source = resolve_spec(args.distribution, registry)
    print(f"{args.seeds} seeds per row, {args.budget} model calls per run")
    print("| event | estimator | mean estimate | mean rel. error | z | sd / truth | CI width / truth | CI covers truth "
          "| generated tokens / run | s / run |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    truths = []
    for event in [EVENTS[i] for i in args.events] if args.events else EVENTS:
        gt = OutputGroundTruth.load(args.ground_truth / event.file)
        low, high = clopper_pearson(gt.hits, gt.samples)
        truths.append(f"`{event.target}`: {gt.hits} / {gt.samples} = {gt.probability:.3e} [{low:.3e}, {high:.3e}]")
        problem = compile_problem(registry, source, model=args.model, target=event.target)
        for estimator in event.estimators:
            runs = []
            for seed in range(1, args.seeds + 1):
                started = time.perf_counter()
                run = run_problem(registry, problem, estimator, None, Budget(model_calls=args.budget), seed,
                                  progress=False)
                runs.append(run)
                if args.output:
                    with args.output.open("a") as out:
                        out.write(json.dumps({"event": event.target, "estimator": estimator, "seed": seed,
                                              "truth": gt.probability, "value": run.raw_value,
                                              "ci": None if run.ci is None else [run.ci.low, run.ci.high],
                                              "model_calls": run.model_calls, "positions": run.positions,
                                              "generated_tokens": run.generated_tokens,
                                              "seconds": round(time.perf_counter() - started, 3)}) + "\n")
            print(_row(event, estimator, gt, runs), flush=True)
    print("\nGround truth (hits / inputs, Clopper-Pearson 95 %):")
    for line in truths:
        print(f"- {line}")


if __name__ == "__main__":
    main()
