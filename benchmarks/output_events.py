"""Output-event estimators against brute-force ground truth: estimate, interval, coverage of the truth, cost.

Each event's ground truth is a ``lowprob ground-truth run --target`` file (committed under
``docs/results/output-events/ground-truth/``). Every registered estimator with the ``output_events`` capability
that accepts the event (its ``check_problem``) runs at the same budget for several seeds; a run *covers* when its
interval contains the ground truth's empirical probability. Prints one Markdown row per (event, estimator) and the
refusals; with ``--output``, every run is one JSON line, and runs already in that file are read back, not rerun
(so a stopped benchmark resumes and a new estimator adds its rows to the old ones).

    python benchmarks/output_events.py --output /tmp/rows.jsonl      # the four events, 10 seeds, 2048 calls
    python benchmarks/output_events.py --seeds 3 --budget 1024 --estimators naive output-tsmc
    python benchmarks/output_events.py --output /tmp/rows.jsonl --report-only     # the table of what is there
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from lowprob.api import compile_problem, resolve_spec, run_problem
from lowprob.core.budget import Budget
from lowprob.core.errors import LowprobError
from lowprob.core.stats import clopper_pearson
from lowprob.output_ground_truth import OutputGroundTruth
from lowprob.plugins import load_registry

GROUND_TRUTH = Path(__file__).resolve().parent.parent / "docs" / "results" / "output-events" / "ground-truth"


@dataclass(frozen=True)
class Event:
    """An output event of the benchmark and its ground-truth file."""

    target: str
    file: str


EVENTS = (
    Event('sample(2) == " of the"', "of-the.json"),
    Event('sample(1) contains {" in", " on", " at"}', "in-on-at.json"),
    Event('sample(3) contains {" in"}', "contains-in-3.json"),
    Event('greedy(2) == " of the"', "greedy-of-the.json"),
)


@dataclass(frozen=True)
class Run:
    """One seeded run of one estimator on one event, as a line of the ``--output`` file."""

    event: str
    estimator: str
    seed: int
    truth: float
    value: float
    ci: tuple[float, float] | None
    model_calls: float
    positions: int
    generated_tokens: int
    seconds: float

    @classmethod
    def read(cls, path: Path | None) -> dict[tuple[str, str, int], Run]:
        """The runs in ``path`` (none when it is absent), by (event, estimator, seed)."""
        if path is None or not path.exists():
            return {}
        runs = [cls(**{**row, "ci": tuple(row["ci"]) if row["ci"] else None})
                for row in map(json.loads, path.read_text().splitlines())]
        return {(r.event, r.estimator, r.seed): r for r in runs}

    def write(self, path: Path) -> None:
        with path.open("a") as out:
            out.write(json.dumps(dataclasses.asdict(self)) + "\n")


def _row(event: Event, estimator: str, truth: float, truth_samples: int, runs: list[Run]) -> str:
    """One Markdown row summarising the seeds of one estimator on one event.

    ``z`` is the mean's distance from the truth in standard errors: the seeds' spread over sqrt(seeds) combined
    with the ground truth's own binomial error.
    """
    values = [run.value for run in runs]
    covered = sum(run.ci is not None and run.ci[0] <= truth <= run.ci[1] for run in runs)
    widths = [run.ci[1] - run.ci[0] for run in runs if run.ci is not None]
    spread = statistics.stdev(values) if len(values) > 1 else float("nan")
    z = (statistics.mean(values) - truth) / math.sqrt(spread**2 / len(values) + truth * (1 - truth) / truth_samples)
    width = f"{statistics.mean(widths) / truth:.2f}" if widths else "none"
    return (f"| `{event.target}` | {estimator} | {statistics.mean(values):.3e} | "
            f"{statistics.mean(values) / truth - 1:+.1%} | {z:.2f} | {spread / truth:.1%} | {width} | "
            f"{covered}/{len(runs)} | {statistics.mean(run.model_calls for run in runs):.0f} | "
            f"{statistics.mean(run.generated_tokens for run in runs):.0f} | "
            f"{statistics.mean(run.seconds for run in runs):.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="lowprob-1l")
    parser.add_argument("--distribution", default="english")
    parser.add_argument("--budget", type=int, default=2048, help="model calls per run")
    parser.add_argument("--seeds", type=int, default=10, help="seeds 1..N per estimator and event")
    parser.add_argument("--ground-truth", type=Path, default=GROUND_TRUTH, help="folder of the ground-truth files")
    parser.add_argument("--output", type=Path, help="append every run here as a JSON line (and reuse its runs)")
    parser.add_argument("--events", type=int, nargs="+", help="run only these events (0-based indices into EVENTS)")
    parser.add_argument("--estimators", nargs="+",
                        help="these estimators (default: every registered one with output events)")
    parser.add_argument("--report-only", action="store_true",
                        help="run nothing: summarise the runs already in --output (those of seeds 1..N)")
    args = parser.parse_args()
    registry = load_registry()
    source = resolve_spec(args.distribution, registry)
    names = args.estimators or [e.name for e in registry.entries("estimators")
                                if e.obj.capabilities.output_events]
    done = Run.read(args.output)
    print(f"{args.seeds} seeds per row, {args.budget} model calls per run; estimators: {', '.join(names)}")
    print("| event | estimator | mean estimate | mean rel. error | z | sd / truth | CI width / truth | CI covers truth "
          "| model calls / run | generated tokens / run | s / run |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    truths, refusals = [], []
    for event in [EVENTS[i] for i in args.events] if args.events else EVENTS:
        gt = OutputGroundTruth.load(args.ground_truth / event.file)
        low, high = clopper_pearson(gt.hits, gt.samples)
        truths.append(f"`{event.target}`: {gt.hits} / {gt.samples} = {gt.probability:.3e} [{low:.3e}, {high:.3e}]")
        problem = compile_problem(registry, source, model=args.model, target=event.target)
        for name in names:
            try:
                registry.create_estimator(name).check_problem(problem)
            except LowprobError as exc:
                refusals.append(f"{name} refuses `{event.target}`: {exc}")
                continue
            runs = []
            for seed in range(1, args.seeds + 1):
                key = (event.target, name, seed)
                if key not in done and not args.report_only:
                    started = time.perf_counter()
                    est = run_problem(registry, problem, name, None, Budget(model_calls=args.budget), seed,
                                      progress=False)
                    done[key] = Run(event.target, name, seed, gt.probability, est.raw_value,
                                    None if est.ci is None else (est.ci.low, est.ci.high), est.model_calls,
                                    est.positions, est.generated_tokens, round(time.perf_counter() - started, 3))
                    if args.output:
                        done[key].write(args.output)
                if key in done:
                    runs.append(done[key])
            if runs:
                print(_row(event, name, gt.probability, gt.samples, runs), flush=True)
    print("\nGround truth (hits / inputs, Clopper-Pearson 95 %):")
    for line in truths:
        print(f"- {line}")
    for line in refusals:
        print(f"- {line}")


if __name__ == "__main__":
    main()
