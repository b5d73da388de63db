"""Ground truth of an output event: how many sampled inputs' generated continuations hit it, by brute force.

Shards work as for argmax ground truths (:mod:`lowprob.ground_truth`): shard ``s`` is ``shard_size`` inputs drawn
with the generator of seed ``s`` (the same inputs an argmax ground truth of that seed counts, at the same batch
size), each continued by the model under the event's sampling with a second generator derived from ``s``; a file
records its shard seeds, runs resume shard by shard, and files with disjoint seeds of the same model,
distribution and event merge by adding hits. Files carry a sha256 checksum and are validated when read.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from lowprob import __version__
from lowprob.core.distribution import InputDistribution
from lowprob.core.errors import LowprobError
from lowprob.core.generation import generate
from lowprob.core.model import ModelAdapter
from lowprob.core.output_target import OutputTarget, check_fits
from lowprob.core.progress import progress_bar
from lowprob.core.random import MAX_SEED
from lowprob.ground_truth import (
    MAX_RESERVOIR,
    MAX_SHARD_SIZE,
    MAX_SHARDS,
    GroundTruth,
    check_output,
    check_settings,
    compress_seeds,
    expand_seeds,
    shard_generator,
)
from lowprob.shards import merge_arrivals, merge_order, missing_seeds, parse_file, read_json, write_json

FORMAT = "lowprob-output-ground-truth/1"
IDENTITY = ("model", "distribution", "distribution_hash", "target", "shard_size")
"""What files must share to merge: their shards count the same event the same way."""


@dataclass(frozen=True)
class OutputGroundTruth:
    """Hits of the output event ``target`` (its description) over ``samples`` inputs of ``distribution``.

    ``reservoir`` keeps the first ``reservoir_size`` hitting inputs with their continuations (input ids then
    the continuation's), exact samples from the event's posterior.
    """

    model: str
    distribution: str
    distribution_hash: str
    target: str
    shard_size: int
    seeds: tuple[int, ...]
    hits: int
    reservoir: tuple[tuple[int, ...], ...] = ()
    reservoir_size: int = 0
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(set(self.seeds)) != len(self.seeds):
            raise LowprobError("output ground truth lists a shard seed twice")
        if not 0 <= self.hits <= self.samples:
            raise LowprobError(f"output ground truth has {self.hits} hits in {self.samples} samples")

    @property
    def samples(self) -> int:
        """Number of inputs counted."""
        return len(self.seeds) * self.shard_size

    @property
    def probability(self) -> float:
        """The empirical probability of the event."""
        return self.hits / self.samples if self.samples else math.nan

    def merge(self, other: OutputGroundTruth) -> OutputGroundTruth:
        """The ground truth over both files' shards; same model, distribution, event and shard size, no shared
        seed."""
        first, second = merge_order(self, other, IDENTITY, "output ground truths")
        size = max(self.reservoir_size, other.reservoir_size)
        seconds = float(self.metadata.get("seconds", 0)) + float(other.metadata.get("seconds", 0))
        return OutputGroundTruth(self.model, self.distribution, self.distribution_hash, self.target, self.shard_size,
                                 tuple(sorted(self.seeds + other.seeds)), self.hits + other.hits,
                                 (first.reservoir + second.reservoir)[:size], size,
                                 {**second.metadata, **first.metadata, "seconds": round(seconds, 1)})

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict with a ``checksum`` of everything but the metadata."""
        data = {"format": FORMAT, "model": self.model, "distribution": self.distribution,
                "distribution_hash": self.distribution_hash, "target": self.target, "samples": self.samples,
                "shard_size": self.shard_size, "seeds": compress_seeds(self.seeds), "hits": self.hits,
                "reservoir_size": self.reservoir_size, "reservoir": [list(r) for r in self.reservoir],
                "metadata": dict(self.metadata)}
        return {**data, "checksum": _checksum(data)}

    @classmethod
    def from_json(cls, data: Any, source: str = "<data>") -> OutputGroundTruth:
        """Inverse of :meth:`to_json`, validated; ``source`` names the file in errors."""
        file = parse_file(data, _File, FORMAT, "output ground-truth", source)
        if file.checksum != _checksum(data):
            raise LowprobError(f"{source}: damaged output ground-truth file: checksum: does not match the file's "
                               "contents (it was edited or damaged after it was written)")
        seeds = expand_seeds(file.seeds)
        if len(seeds) > MAX_SHARDS or file.samples != len(seeds) * file.shard_size:
            raise LowprobError(f"{source}: says {file.samples} samples but its shards hold "
                               f"{len(seeds) * file.shard_size}")
        if len(file.reservoir) > min(file.reservoir_size, file.hits):
            raise LowprobError(f"{source}: damaged output ground-truth file: reservoir: {len(file.reservoir)} rows, "
                               f"more than the reservoir size {file.reservoir_size} or the hits {file.hits}")
        return cls(file.model, file.distribution, file.distribution_hash, file.target, file.shard_size, seeds,
                   file.hits, tuple(tuple(r) for r in file.reservoir), file.reservoir_size, dict(file.metadata))

    def save(self, path: Path | str) -> None:
        """Write atomically."""
        write_json(path, self.to_json())

    @classmethod
    def load(cls, path: Path | str) -> OutputGroundTruth:
        """Read and validate a file; damage is a :class:`LowprobError` naming the file."""
        return cls.from_json(read_json(Path(path), "output ground-truth"), str(path))

    def describe(self) -> str:
        """One line: what was counted and the empirical probability."""
        return (f"{self.model} on {self.distribution} (hash {self.distribution_hash[:16]}), {self.target}: "
                f"{self.hits} hits in {self.samples} samples ({len(self.seeds)} shards of {self.shard_size}), "
                f"p = {self.probability:.3e}")


_Count = Annotated[int, Field(strict=True, ge=0, lt=1 << 62)]


class _File(BaseModel):
    """The schema of an output ground-truth file."""

    model_config = ConfigDict(extra="forbid", strict=True)

    format: Literal["lowprob-output-ground-truth/1"]
    model: str
    distribution: str
    distribution_hash: str
    target: str
    samples: _Count
    shard_size: int = Field(ge=1, le=MAX_SHARD_SIZE)
    seeds: list[Annotated[list[Annotated[int, Field(ge=0, le=MAX_SEED)]], Field(min_length=2, max_length=2)]] = \
        Field(max_length=MAX_SHARDS)
    hits: _Count
    reservoir_size: int = Field(ge=0, le=MAX_RESERVOIR)
    reservoir: list[list[_Count]]
    metadata: dict[str, Any]
    checksum: str


def _checksum(data: Mapping[str, Any]) -> str:
    payload = json.dumps({k: v for k, v in data.items() if k not in ("metadata", "checksum")}, sort_keys=True,
                         separators=(",", ":"))
    return "sha256:" + hashlib.sha256(payload.encode()).hexdigest()


def continuation_generator(seed: int) -> torch.Generator:
    """The generator of shard ``seed``'s continuations (apart from its inputs' generator)."""
    digest = hashlib.sha256(f"lowprob-ground-truth/continuations/{seed}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def count_output_shard(adapter: ModelAdapter, distribution: InputDistribution, name: str, target: OutputTarget,
                       seed: int, shard_size: int, *, reservoir_size: int = 8, batch_size: int = 4096,
                       on_batch: Callable[[int], None] | None = None) -> OutputGroundTruth:
    """Shard ``seed``: generate a continuation for each of ``shard_size`` inputs and count the hits."""
    check_fits(target, distribution.length, adapter.n_ctx)
    inputs, continuations = shard_generator(seed), continuation_generator(seed)
    started, hits, done = time.perf_counter(), 0, 0
    reservoir: list[tuple[int, ...]] = []
    while done < shard_size:
        n = min(batch_size, shard_size - done)
        tokens = distribution.sample(n, inputs)
        generated = generate(adapter, tokens, target.length, target.sampling, continuations).tokens.cpu()
        hit = target.hits(generated, adapter.vocab)
        hits += int(hit.sum())
        for row in torch.cat([tokens.cpu(), generated], dim=1)[hit][:reservoir_size - len(reservoir)].tolist():
            reservoir.append(tuple(row))
        done += n
        if on_batch is not None:
            on_batch(n)
    metadata = {"seconds": round(time.perf_counter() - started, 1), "batch_size": batch_size, "lowprob": __version__,
                "torch": torch.__version__, "decoding": "kv-cache" if adapter.fast_path is not None else "recompute"}
    return OutputGroundTruth(adapter.name, name, distribution.content_hash, target.describe(), shard_size, (seed,),
                             hits, tuple(reservoir), reservoir_size, metadata)


def check_output_run(output: Path, *, samples: int, shard_size: int = 1 << 12, first_seed: int = 0,
                     reservoir_size: int = 8, batch_size: int = 4096) -> OutputGroundTruth | None:
    """Validate a counting run before any model work (settings in range, output writable); returns the output
    ground truth already in ``output``, which the run resumes, or ``None``."""
    check_settings(samples=samples, shard_size=shard_size, first_seed=first_seed, reservoir_size=reservoir_size,
                   batch_size=batch_size)
    check_output(output)
    return OutputGroundTruth.load(output) if output.exists() else None


def pending_output_seeds(existing: OutputGroundTruth | None, adapter: ModelAdapter, distribution: InputDistribution,
                         name: str, target: OutputTarget, output: Path, *, samples: int, shard_size: int,
                         first_seed: int = 0) -> list[int]:
    """The shard seeds a run still has to count; ``existing`` (the file at ``output``) must count the same event
    of the same model and distribution in shards of the same size."""
    check_fits(target, distribution.length, adapter.n_ctx)
    identity = dict(zip(IDENTITY, (adapter.name, name, distribution.content_hash, target.describe(), shard_size),
                        strict=True))
    return missing_seeds(existing, identity, output, "output ground truth", shards=samples // shard_size,
                         first_seed=first_seed)


def run_output_ground_truth(adapter: ModelAdapter, distribution: InputDistribution, name: str, target: OutputTarget,
                            output: Path, *, samples: int, shard_size: int = 1 << 12, first_seed: int = 0,
                            reservoir_size: int = 8, batch_size: int = 4096,
                            progress: bool | None = None) -> OutputGroundTruth:
    """Count shards ``first_seed ..`` until ``samples`` inputs are in ``output``, resuming what is there; the file
    is rewritten atomically after each shard."""
    total = check_output_run(output, samples=samples, shard_size=shard_size, first_seed=first_seed,
                             reservoir_size=reservoir_size, batch_size=batch_size)
    todo = pending_output_seeds(total, adapter, distribution, name, target, output, samples=samples,
                                shard_size=shard_size, first_seed=first_seed)
    with progress_bar(len(todo) * shard_size, f"{adapter.name}/{name}", progress, unit="seq") as bar:
        shards = ((seed, count_output_shard(adapter, distribution, name, target, seed, shard_size,
                                            reservoir_size=reservoir_size, batch_size=batch_size,
                                            on_batch=bar.update)) for seed in todo)
        return merge_arrivals(total, todo, shards, output)


def load_any(path: Path | str) -> Any:
    """A ground-truth file of either kind: an :class:`OutputGroundTruth` or an argmax
    :class:`~lowprob.ground_truth.GroundTruth`, by its ``format``."""
    data = read_json(Path(path), "ground-truth")
    if isinstance(data, dict) and data.get("format") == FORMAT:
        return OutputGroundTruth.from_json(data, str(path))
    return GroundTruth.from_json(data, str(path))
