"""Ground truth counted as shard tasks on an executor (:mod:`lowprob.executors`): local processes or a Ray cluster.

Each shard is a task carrying the model name, the spec text and the shard's seed and settings; a worker loads the
model once and counts its shards. The driver merges shards in seed order as they arrive, into the same atomic,
resumable file a serial run writes, so the file (counts, seeds, reservoir, checksum) is bit-identical to a serial
run's for the same shard seeds. A shard that arrives ahead of an earlier seed waits in memory for it: a driver
killed mid-run loses at most those shards, and rerunning it resumes from the file.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from pathlib import Path

from lowprob.api import SpecSource, compile_source
from lowprob.core.distribution import InputDistribution
from lowprob.core.model import ModelAdapter
from lowprob.core.progress import progress_bar
from lowprob.executors import Executor, worker_context, worker_state
from lowprob.ground_truth import GroundTruth, check_run, count_shard, pending_seeds, run_ground_truth
from lowprob.plugins import load_registry


@dataclass(frozen=True)
class ShardSettings:
    """How every shard of a run is counted."""

    shard_size: int
    reservoir_size: int = 8
    reservoir_max_p: float = 1e-3
    batch_size: int = 4096
    precision: str = "fp32"


@dataclass(frozen=True)
class ShardTask:
    """Count shard ``seed`` of ``model`` on the spec's distribution; all a worker needs, no weights."""

    model: str
    source: SpecSource
    distribution: str | None
    name: str
    seed: int
    settings: ShardSettings
    device: str | None = None

    @property
    def group(self) -> Hashable:
        return self.model, self.source.text, self.distribution, self.device

    @property
    def description(self) -> str:
        return f"shard {self.seed} of {self.model}/{self.name}"

    def run(self) -> GroundTruth:
        adapter, distribution = worker_state(self.group, self._load)
        s = self.settings
        return count_shard(adapter, distribution, self.name, self.seed, s.shard_size, reservoir_size=s.reservoir_size,
                           reservoir_max_p=s.reservoir_max_p, batch_size=s.batch_size, precision=s.precision)

    def _load(self) -> tuple[ModelAdapter, InputDistribution]:
        """The model on this worker's device (its GPU if it has one) and the compiled distribution."""
        compiled = compile_source(load_registry(), self.source, model=self.model)
        adapter, device = compiled.model, worker_context().device or self.device or "cpu"
        if device != "cpu":
            adapter = ModelAdapter(adapter.model.to(device), adapter.vocab, adapter.name, device=device)
        return adapter, compiled.spec.distribution(self.distribution)


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
    merged = set(total.seeds) if total is not None else set()
    arrived: dict[int, GroundTruth] = {}
    position = 0
    with progress_bar(len(todo) * s.shard_size, f"{adapter.name}/{name}", progress, unit="seq") as bar:
        for task, shard in executor.run(tasks):
            bar.update(s.shard_size)
            arrived[task.seed] = shard
            changed = False
            while position < len(todo) and todo[position] in arrived:
                shard = arrived.pop(todo[position])
                position += 1
                if todo[position - 1] not in merged:  # merged by seed, once: a rerun shard never counts twice
                    total = shard if total is None else total.merge(shard)
                    merged.add(todo[position - 1])
                    changed = True
            if changed:
                assert total is not None
                total.save(output)
    if total is None:  # check_run refuses samples <= 0, so a shard was counted or already there
        raise AssertionError("no shard counted")
    return total
