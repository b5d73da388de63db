"""Executors side by side: ground-truth shards on serial, local processes and a local Ray cluster, one run.

For each executor: the start-up (workers started, model loaded: a warm-up round of one shard per worker), the
throughput of ``--shards`` shards of ``--shard-size`` inputs (sequences per second and the ratio to serial), and
the per-task overhead: the wall time per task of ``--tiny`` one-input shards on one worker, less the time the
task itself ran in the worker (sending it, its result back, scheduling). Every executor
counts the same shard seeds and is checked to give the serial counts. Each worker and the serial run use one
torch thread, so the ratios say what the workers add, not what intra-op threads do. The load average of the
machine is printed before and after (other jobs on a shared machine move the ratios).

    python benchmarks/executors.py                     # lowprob-1l on hex, 2 workers
    python benchmarks/executors.py --workers 8 --shards 64 --kinds processes ray
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Hashable
from dataclasses import dataclass

import numpy as np
import torch

from lowprob.api import compile_source, resolve_spec
from lowprob.executors import EXECUTORS, ExecutorKind, ExecutorSettings
from lowprob.ground_truth import GroundTruth
from lowprob.ground_truth_tasks import ShardSettings, ShardTask
from lowprob.plugins import load_registry

WARM_UP_SEED = 1 << 40
"""Warm-up shards use seeds from here (not the measured ones)."""


@dataclass(frozen=True)
class Timed:
    """A shard task that also reports how long it ran in its worker."""

    shard: ShardTask

    @property
    def group(self) -> Hashable:
        return self.shard.group

    def run(self) -> tuple[GroundTruth, float]:
        started = time.perf_counter()
        return self.shard.run(), time.perf_counter() - started


def _timed(kind: ExecutorKind, workers: int, tasks: list[ShardTask]) -> tuple[float, float, np.ndarray]:
    """Wall seconds to run ``tasks`` on ``workers``, the seconds they ran in workers, and their summed counts."""
    executor = ExecutorSettings(executor=kind, workers=None if kind == "serial" else workers).create()
    started = time.perf_counter()
    results = [result for _, result in executor.run([Timed(t) for t in tasks])]
    wall = time.perf_counter() - started
    return wall, sum(s for _, s in results), np.asarray(sum(shard.counts for shard, _ in results))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="lowprob-1l")
    parser.add_argument("--distribution", default="hex")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--shard-size", type=int, default=1 << 12)
    parser.add_argument("--tiny", type=int, default=64, help="one-input tasks for the per-task overhead")
    parser.add_argument("--kinds", nargs="+", choices=EXECUTORS, default=list(EXECUTORS))
    args = parser.parse_args()
    torch.set_num_threads(1)
    registry = load_registry()
    source = resolve_spec(args.distribution, registry)
    model = compile_source(registry, source, model=args.model).model.name

    def shards(first: int, count: int, size: int) -> list[ShardTask]:
        settings = ShardSettings(size, reservoir_size=0, batch_size=min(size, 4096))
        return [ShardTask(model, source, None, source.name, first + i, settings) for i in range(count)]

    print(f"torch {torch.__version__}, {args.model}/{args.distribution}, {args.workers} workers of 1 thread, "
          f"{args.shards} shards of {args.shard_size}, {args.tiny} one-input tasks, {os.cpu_count()} CPUs, "
          f"load average {_load()}")
    print("| executor | start-up s | seconds | seq/s | × serial | overhead ms/task |")
    print("| --- | --- | --- | --- | --- | --- |")
    first: tuple[float, np.ndarray] | None = None
    for kind in args.kinds:
        start_up, _, _ = _timed(kind, args.workers, shards(WARM_UP_SEED, args.workers, 1))
        seconds, _, counts = _timed(kind, args.workers, shards(0, args.shards, args.shard_size))
        tiny_wall, tiny_busy, _ = _timed(kind, 1, shards(WARM_UP_SEED + 1000, args.tiny, 1))
        if first is None:
            first = (seconds, counts)
        elif not np.array_equal(counts, first[1]):
            raise SystemExit(f"{kind}: counts differ from {args.kinds[0]}'s")
        rate = args.shards * args.shard_size / seconds
        print(f"| {kind} | {start_up:.1f} | {seconds:.1f} | {rate:.0f} | {first[0] / seconds:.2f} | "
              f"{(tiny_wall - tiny_busy) / args.tiny * 1e3:.1f} |")
    print(f"load average {_load()}")


def _load() -> str:
    """The 1-, 5- and 15-minute load averages."""
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


if __name__ == "__main__":
    main()
