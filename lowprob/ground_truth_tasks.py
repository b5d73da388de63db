"""Ground truth counted as shard tasks on an executor (:mod:`lowprob.executors`): local processes or a Ray cluster.

Each shard is a task carrying the model name, the spec text, the output event (if any) and the shard's seed and
settings; a worker loads the model once and counts its shards. The driver merges shards in seed order as they
arrive (:func:`lowprob.shards.merge_arrivals`), into the same atomic, resumable file a serial run writes, so the
file (counts or hits, seeds, reservoir, checksum) is identical to a serial run's for the same shard seeds. A shard
that arrives ahead of an earlier seed waits in memory for it: a driver killed mid-run loses at most those shards,
and rerunning it resumes from the file. Argmax and output-event ground truths run the same way.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, TypeVar

from lowprob.api import SpecSource, compile_source
from lowprob.core.distribution import InputDistribution
from lowprob.core.errors import LowprobError
from lowprob.core.model import ModelAdapter
from lowprob.core.output_target import OutputTarget
from lowprob.core.progress import progress_bar
from lowprob.executors import Executor, worker_context, worker_state
from lowprob.ground_truth import GroundTruth, check_run, count_shard, pending_seeds, run_ground_truth
from lowprob.output_ground_truth import (
    OutputGroundTruth,
    check_output_run,
    count_output_shard,
    pending_output_seeds,
    run_output_ground_truth,
)
from lowprob.plugins import load_registry
from lowprob.shards import ShardedCount, merge_arrivals

C = TypeVar("C", bound=ShardedCount)


@dataclass(frozen=True)
class ShardSettings:
    """How every shard of a run is counted (``reservoir_max_p`` and ``precision``: argmax ground truths only)."""

    shard_size: int
    reservoir_size: int = 8
    reservoir_max_p: float = 1e-3
    batch_size: int = 4096
    precision: str = "fp32"


class _Loaded(NamedTuple):
    """A worker's state for one group of shards: the model on its device, the distribution, the output event."""

    adapter: ModelAdapter
    distribution: InputDistribution
    event: OutputTarget | None


@dataclass(frozen=True)
class ShardTask:
    """Count shard ``seed`` of ``model`` on the spec's distribution (argmax tokens, or with ``target`` the hits of
    that output event: a target name of the spec or an expression); all a worker needs, no weights."""

    model: str
    source: SpecSource
    distribution: str | None
    name: str
    seed: int
    settings: ShardSettings
    device: str | None = None
    target: str | None = None

    @property
    def group(self) -> Hashable:
        return self.model, self.source.text, self.distribution, self.target, self.device

    @property
    def description(self) -> str:
        return f"shard {self.seed} of {self.model}/{self.name}" + (f" ({self.target})" if self.target else "")

    def run(self) -> GroundTruth | OutputGroundTruth:
        adapter, distribution, event = worker_state(self.group, self._load)
        s = self.settings
        if event is not None:
            return count_output_shard(adapter, distribution, self.name, event, self.seed, s.shard_size,
                                      reservoir_size=s.reservoir_size, batch_size=s.batch_size)
        return count_shard(adapter, distribution, self.name, self.seed, s.shard_size, reservoir_size=s.reservoir_size,
                           reservoir_max_p=s.reservoir_max_p, batch_size=s.batch_size, precision=s.precision)

    def _load(self) -> _Loaded:
        """The model on this worker's device (its GPU if it has one), the compiled distribution and event."""
        targets = [self.target] if self.target is not None else []
        compiled = compile_source(load_registry(), self.source, model=self.model, targets=targets)
        adapter, device = compiled.model, worker_context().device or self.device or "cpu"
        if device != "cpu":
            adapter = ModelAdapter(adapter.model.to(device), adapter.vocab, adapter.name, device=device)
        event = None
        if self.target is not None:
            event = compiled.spec.target(compiled.target_names.get(self.target, self.target))
            if not isinstance(event, OutputTarget):
                raise LowprobError(f"{self.description}: {self.target!r} is not an output event")
        return _Loaded(adapter, compiled.spec.distribution(self.distribution), event)


def count_ground_truth(executor: Executor, adapter: ModelAdapter, distribution: InputDistribution, name: str,
                       output: Path, *, source: SpecSource, dist_name: str | None, samples: int,
                       settings: ShardSettings, first_seed: int = 0, device: str | None = None,
                       progress: bool | None = None) -> GroundTruth:
    """Count shards ``first_seed ..`` until ``samples`` inputs are in ``output`` (resuming it) on ``executor``.

    The serial executor is :func:`lowprob.ground_truth.run_ground_truth` itself (with ``adapter``); others send
    :class:`ShardTask` s (``source`` and ``dist_name`` say what each worker compiles) and merge what comes back.
    """
    s = settings
    if executor.in_process:
        return run_ground_truth(adapter, distribution, name, output, samples=samples, shard_size=s.shard_size,
                                first_seed=first_seed, reservoir_size=s.reservoir_size,
                                reservoir_max_p=s.reservoir_max_p, batch_size=s.batch_size, precision=s.precision,
                                progress=progress)
    total = check_run(output, samples=samples, shard_size=s.shard_size, first_seed=first_seed,
                      reservoir_size=s.reservoir_size, reservoir_max_p=s.reservoir_max_p, batch_size=s.batch_size)
    todo = pending_seeds(total, adapter, distribution, name, output, samples=samples, shard_size=s.shard_size,
                         first_seed=first_seed)
    tasks = [ShardTask(adapter.name, source, dist_name, name, seed, s, device) for seed in todo]
    return _merge_tasks(executor, tasks, total, output, f"{adapter.name}/{name}", progress)


def count_output_ground_truth(executor: Executor, adapter: ModelAdapter, distribution: InputDistribution, name: str,
                              event: OutputTarget, output: Path, *, source: SpecSource, dist_name: str | None,
                              target: str, samples: int, settings: ShardSettings, first_seed: int = 0,
                              device: str | None = None, progress: bool | None = None) -> OutputGroundTruth:
    """:func:`count_ground_truth` for the output event ``event`` (``target`` is how the spec names it, which
    each worker compiles): :func:`lowprob.output_ground_truth.run_output_ground_truth` on the serial executor."""
    s = settings
    if executor.in_process:
        return run_output_ground_truth(adapter, distribution, name, event, output, samples=samples,
                                       shard_size=s.shard_size, first_seed=first_seed,
                                       reservoir_size=s.reservoir_size, batch_size=s.batch_size, progress=progress)
    total = check_output_run(output, samples=samples, shard_size=s.shard_size, first_seed=first_seed,
                             reservoir_size=s.reservoir_size, batch_size=s.batch_size)
    todo = pending_output_seeds(total, adapter, distribution, name, event, output, samples=samples,
                                shard_size=s.shard_size, first_seed=first_seed)
    tasks = [ShardTask(adapter.name, source, dist_name, name, seed, s, device, target) for seed in todo]
    return _merge_tasks(executor, tasks, total, output, f"{adapter.name}/{name}", progress)


def _merge_tasks(executor: Executor, tasks: list[ShardTask], total: C | None, output: Path, label: str,
                 progress: bool | None) -> C:
    """Run ``tasks`` on ``executor`` and merge their shards into ``total`` and ``output`` as they arrive."""
    todo = [task.seed for task in tasks]
    shard_size = tasks[0].settings.shard_size if tasks else 0
    with progress_bar(len(tasks) * shard_size, label, progress, unit="seq") as bar:
        def arrivals() -> Iterator[tuple[int, C]]:
            for task, shard in executor.run(tasks):
                bar.update(shard_size)
                yield task.seed, shard

        return merge_arrivals(total, todo, arrivals(), output)
