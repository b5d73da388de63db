"""Ground-truth files: how often each token is the argmax over many sampled inputs, with their provenance.

A ground truth is built from *shards*: shard ``s`` is ``shard_size`` inputs drawn with a generator seeded by
``s``, so any set of distinct shards can be counted on different machines, at different times, and merged by
adding counts. A file records which shard seeds it holds; merging refuses overlapping seeds or mismatched
model, distribution or shard size, so no input is ever counted twice.

Files are validated field by field when read (token ids in the vocabulary, counts non-negative and summing to
the samples, reservoir inputs made of vocabulary ids) and carry a sha256 ``checksum`` of their counting payload,
so a damaged or edited file is refused with the file and the field named, never silently used.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import re
import stat
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import torch
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from lowprob import __version__
from lowprob.core.certified_argmax import CertifiedArgmax, CertifiedUnembedding, matmul_mode
from lowprob.core.counting import count_argmax
from lowprob.core.distribution import InputDistribution
from lowprob.core.errors import LowprobError
from lowprob.core.fast_forward import FirstLayerTable
from lowprob.core.model import ModelAdapter
from lowprob.core.progress import progress_bar
from lowprob.core.random import MAX_SEED
from lowprob.shards import merge_arrivals, merge_order, missing_seeds, parse_file, read_json, write_json

FORMAT = "lowprob-ground-truth/1"
SHIPPED_PACKAGE = "lowprob"
SHIPPED_DIR = "data/ground_truth"
"""Package-data folder (under ``lowprob``) of the shipped ground truths, one ``<model>/<distribution>.json``."""
TABLE_BYTES_LIMIT = 1 << 30
"""First-layer tables larger than this are not built (the fast path then computes the first layer)."""
MAX_SHARDS = 1 << 20
"""Shards one file may hold (its seeds are kept in memory); more samples need a larger shard size."""
MAX_SHARD_SIZE = 1 << 32
MAX_RESERVOIR = 1 << 12
"""Hitting inputs kept per token at most."""
IDENTITY = ("model", "distribution", "distribution_hash", "d_vocab", "shard_size")
"""What files must share to merge: their shards count the same thing."""
CHECKSUMMED = ("model", "distribution", "distribution_hash", "d_vocab", "samples", "shard_size", "seeds", "counts",
               "reservoir_size", "reservoir")
"""The fields the checksum covers: everything but ``metadata`` (timings and versions, rewritten by merges)."""


@dataclass(frozen=True)
class GroundTruth:
    """Argmax counts over ``samples`` inputs of ``distribution`` for ``model``, for every token at once.

    ``reservoir`` keeps up to ``reservoir_size`` exact hitting inputs (token-id lists) per token whose count
    is small, so estimators that need samples from the target (twisted-SMC upper bounds) can use them.
    """

    model: str
    distribution: str
    distribution_hash: str
    d_vocab: int
    shard_size: int
    seeds: tuple[int, ...]
    counts: np.ndarray
    reservoir: Mapping[int, tuple[tuple[int, ...], ...]] = field(default_factory=dict)
    reservoir_size: int = 0
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.counts.shape != (self.d_vocab,):
            raise LowprobError(f"ground truth counts have shape {list(self.counts.shape)}, expected [{self.d_vocab}]")
        if len(set(self.seeds)) != len(self.seeds):
            raise LowprobError("ground truth lists a shard seed twice")
        if int(self.counts.sum()) != self.samples:
            raise LowprobError(f"ground truth counts sum to {int(self.counts.sum())}, not {self.samples} samples")

    @property
    def samples(self) -> int:
        """Number of inputs counted."""
        return len(self.seeds) * self.shard_size

    def probability(self, token: int) -> float:
        """The empirical probability that ``token`` is the argmax."""
        return float(self.counts[token]) / self.samples if self.samples else math.nan

    def probabilities(self) -> np.ndarray:
        """Empirical probabilities of every token, ``[d_vocab]`` float64."""
        return self.counts / max(self.samples, 1)

    def relative_error(self, token: int) -> float:
        """Binomial relative standard error of :meth:`probability` (``inf`` with no hits)."""
        k = int(self.counts[token])
        return math.inf if k == 0 else math.sqrt((1 - k / self.samples) / k)

    def hits(self, token: int) -> int:
        """How many counted inputs have ``token`` as their argmax."""
        return int(self.counts[token])

    def hitting_inputs(self, token: int) -> tuple[tuple[int, ...], ...]:
        """Stored hitting inputs of ``token`` (possibly fewer than its hits, possibly none)."""
        return tuple(self.reservoir.get(token, ()))

    def merge(self, other: GroundTruth) -> GroundTruth:
        """The ground truth over both files' shards; they must describe the same model, distribution and shards."""
        first, second = merge_order(self, other, IDENTITY, "ground truths")
        size = max(self.reservoir_size, other.reservoir_size)
        counts = self.counts + other.counts
        samples = self.samples + other.samples
        max_p = float(self.metadata.get("reservoir_max_p", 1.0))
        reservoir = {t: tuple([*first.hitting_inputs(t), *second.hitting_inputs(t)][:size])
                     for t in sorted(set(self.reservoir) | set(other.reservoir)) if counts[t] <= max_p * samples}
        return GroundTruth(self.model, self.distribution, self.distribution_hash, self.d_vocab, self.shard_size,
                           tuple(sorted(self.seeds + other.seeds)), counts, reservoir, size,
                           {**second.metadata, **first.metadata, **_summed_metadata(self.metadata, other.metadata)})

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict; counts are stored sparsely as ``{token id: count}``, with a ``checksum``."""
        nonzero = np.flatnonzero(self.counts)
        data = {"format": FORMAT, "model": self.model, "distribution": self.distribution,
                "distribution_hash": self.distribution_hash, "d_vocab": self.d_vocab, "samples": self.samples,
                "shard_size": self.shard_size, "seeds": compress_seeds(self.seeds),
                "metadata": dict(self.metadata),
                "counts": {str(int(t)): int(self.counts[t]) for t in nonzero},
                "reservoir_size": self.reservoir_size,
                "reservoir": {str(t): [list(x) for x in xs] for t, xs in sorted(self.reservoir.items())}}
        return {**data, "checksum": checksum(data)}

    @classmethod
    def from_json(cls, data: Any, source: str = "<data>") -> GroundTruth:
        """Inverse of :meth:`to_json`, validated field by field; ``source`` names the file in errors."""
        return parse_file(data, _GroundTruthFile, FORMAT, "ground-truth", source).ground_truth(source, data)

    def save(self, path: Path | str) -> None:
        """Write atomically (a killed write never leaves a half-written file)."""
        write_json(path, self.to_json())

    @classmethod
    def load(cls, path: Path | str) -> GroundTruth:
        """Read and validate a ground-truth file; any damage is a :class:`LowprobError` naming file and field."""
        return cls.from_json(read_json(Path(path), "ground-truth"), str(path))


def checksum(data: Mapping[str, Any]) -> str:
    """``sha256:<hex>`` of the :data:`CHECKSUMMED` fields of a ground-truth file's JSON, canonically encoded."""
    payload = json.dumps({k: data.get(k) for k in CHECKSUMMED}, sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(payload.encode()).hexdigest()


def _token_id(key: str) -> str:
    if not re.fullmatch(r"0|[1-9][0-9]{0,8}", key):
        raise ValueError("not a token id (a non-negative integer without sign or leading zeros)")
    return key


_TokenId = Annotated[str, AfterValidator(_token_id)]
"""A token id as a JSON key: a canonical non-negative decimal (``-1`` or ``08`` are refused, not wrapped)."""
_Count = Annotated[int, Field(strict=True, ge=0, lt=1 << 62)]
_SeedRange = Annotated[list[Annotated[int, Field(ge=0, le=MAX_SEED)]], Field(min_length=2, max_length=2)]
"""An inclusive ``[first, last]`` range of shard seeds."""


class _Metadata(BaseModel):
    """The metadata fields lowprob reads back (others are kept as they are)."""

    model_config = ConfigDict(extra="allow", strict=True)

    reservoir_max_p: float | None = Field(default=None, ge=0, le=1)
    seconds: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    rechecked: int | None = Field(default=None, ge=0)
    precision: str | None = None


class _GroundTruthFile(BaseModel):
    """The schema of a ground-truth file; :meth:`ground_truth` checks what spans fields."""

    model_config = ConfigDict(extra="forbid", strict=True)

    format: Literal["lowprob-ground-truth/1"]
    model: str
    distribution: str
    distribution_hash: str
    d_vocab: int = Field(ge=1, le=1 << 24)
    samples: _Count
    shard_size: int = Field(ge=1, le=MAX_SHARD_SIZE)
    seeds: list[_SeedRange] = Field(max_length=MAX_SHARDS)
    metadata: _Metadata = Field(default_factory=_Metadata)
    counts: dict[_TokenId, _Count]
    reservoir_size: int = Field(ge=0, le=MAX_RESERVOIR)
    reservoir: dict[_TokenId, list[list[_Count]]]
    checksum: str | None = None
    """Absent in files written before checksums; such files are still read (and validated field by field)."""

    def ground_truth(self, source: str, data: Mapping[str, Any]) -> GroundTruth:
        def bad(field: str, problem: str) -> LowprobError:
            return LowprobError(f"{source}: damaged ground-truth file: {field}: {problem}")

        shards, previous = 0, -1
        for i, (first, last) in enumerate(self.seeds):
            if not previous < first <= last:
                raise bad(f"seeds.{i}", f"[{first}, {last}] is not an increasing range after seed {previous}")
            shards, previous = shards + last - first + 1, last
        if shards > MAX_SHARDS:
            raise bad("seeds", f"{shards} shards, more than the {MAX_SHARDS} a file may hold")
        if self.samples != shards * self.shard_size:
            raise LowprobError(f"{source}: says {self.samples} samples but its shards hold {shards * self.shard_size}")
        for name, keys in (("counts", self.counts), ("reservoir", self.reservoir)):
            for key in keys:
                if int(key) >= self.d_vocab:
                    raise bad(f"{name}.{key}", f"token id {key} is outside the vocabulary (d_vocab {self.d_vocab})")
        length = next((len(row) for rows in self.reservoir.values() for row in rows), 0)
        for key, rows in self.reservoir.items():
            if len(rows) > min(self.reservoir_size, self.counts.get(key, 0)):
                raise bad(f"reservoir.{key}", f"{len(rows)} hitting inputs, more than the reservoir size "
                                              f"{self.reservoir_size} or the token's count {self.counts.get(key, 0)}")
            for row in rows:
                if not row or max(row) >= self.d_vocab or len(row) != length:
                    raise bad(f"reservoir.{key}", f"input {row[:8]} is not a list of {length} token ids below "
                                                  f"{self.d_vocab}")
        if self.checksum is not None and self.checksum != checksum(data):
            raise bad("checksum", "does not match the file's contents: it was edited or damaged after it was "
                                  "written (recount it, or restore it)")
        if sum(self.counts.values()) != self.samples:
            raise bad("counts", f"sum to {sum(self.counts.values())}, not the file's {self.samples} samples")
        counts = np.zeros(self.d_vocab, dtype=np.int64)
        for key, count in self.counts.items():
            counts[int(key)] = count
        return GroundTruth(self.model, self.distribution, self.distribution_hash, self.d_vocab, self.shard_size,
                           expand_seeds(self.seeds), counts,
                           {int(t): tuple(tuple(x) for x in xs) for t, xs in self.reservoir.items()},
                           self.reservoir_size, dict(data.get("metadata", {})))


def _summed_metadata(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    """Metadata that adds up across merged shards; ``precision`` lists every precision they were counted in."""
    precisions = {p for m in (a, b) for p in str(m.get("precision", "fp32")).split("+")}
    return {"seconds": round(float(a.get("seconds", 0)) + float(b.get("seconds", 0)), 1),
            "rechecked": int(a.get("rechecked", 0)) + int(b.get("rechecked", 0)),
            "precision": "+".join(sorted(precisions))}


def compress_seeds(seeds: Iterable[int]) -> list[list[int]]:
    """Sorted seeds as inclusive ``[first, last]`` ranges: ``[0, 1, 2, 5] -> [[0, 2], [5, 5]]``."""
    ranges: list[list[int]] = []
    for s in sorted(seeds):
        if ranges and s == ranges[-1][1] + 1:
            ranges[-1][1] = s
        else:
            ranges.append([s, s])
    return ranges


def expand_seeds(ranges: Iterable[Iterable[int]]) -> tuple[int, ...]:
    """Inverse of :func:`compress_seeds`."""
    out: list[int] = []
    for first, last in ranges:
        out.extend(range(int(first), int(last) + 1))
    return tuple(out)


def shipped_root() -> Path:
    """The folder holding the shipped ground truths."""
    return Path(str(resources.files(SHIPPED_PACKAGE).joinpath(SHIPPED_DIR)))


def shipped_pairs(root: Path | None = None) -> list[tuple[str, str]]:
    """Every ``(model, distribution)`` with a shipped ground truth, sorted."""
    root = root or shipped_root()
    return sorted((p.parent.name, p.stem) for p in root.glob("*/*.json"))


def load_shipped(model: str, distribution: str, root: Path | None = None) -> GroundTruth:
    """The shipped ground truth of ``model`` on ``distribution``; an error lists the available pairs."""
    root = root or shipped_root()
    path = root / model / f"{distribution}.json"
    if not path.exists():
        known = ", ".join(f"{m}/{d}" for m, d in shipped_pairs(root)) or "none"
        raise LowprobError(f"no shipped ground truth for model {model!r} on distribution {distribution!r}; "
                           f"available: {known}")
    return GroundTruth.load(path)


def shard_generator(seed: int) -> torch.Generator:
    """The generator of shard ``seed``: seeded by a hash of it, so ground-truth inputs never coincide with
    the inputs an estimator run with a small integer seed draws."""
    digest = hashlib.sha256(f"lowprob-ground-truth/{seed}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


class ArgmaxPath:
    """Last-position argmaxes of token batches, how they are computed (``label``, ``precision``), and how many
    rows the certified low-precision unembedding has sent back to float32 so far."""

    def __init__(self, label: str, precision: str, argmax: Callable[[torch.Tensor], CertifiedArgmax]) -> None:
        self.label, self.precision, self._argmax, self.rechecked = label, precision, argmax, 0

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        result = self._argmax(tokens)
        self.rechecked += result.rechecked
        return result.argmax


def argmax_path(adapter: ModelAdapter, distribution: InputDistribution, precision: str = "fp32") -> ArgmaxPath:
    """Last-position argmaxes for this distribution's inputs: the fast path with first-layer tables when the
    model allows it and the tables fit in memory, else the adapter's own path; with ``precision`` other than
    ``fp32`` the unembedding runs in it, certified (:mod:`lowprob.core.certified_argmax`)."""
    fast = adapter.fast_path
    if fast is None:
        if precision != "fp32":
            raise LowprobError(f"precision {precision!r} needs lowprob's fast forward, which model {adapter.name!r} "
                               f"does not have (not a standard pre-LayerNorm transformer); use fp32")
        return ArgmaxPath("reference", precision,
                          lambda tokens: CertifiedArgmax(adapter.last_logits(tokens).argmax(dim=-1), 0))
    unembed = CertifiedUnembedding(fast.W_U, fast.b_U, precision)
    device = fast.W_E.device
    support = (distribution.dense_log_probs() > -math.inf).to(device)
    table: FirstLayerTable | None = None
    if int(support.sum()) * 3 * fast.n_heads * fast.d_head * fast.W_E.element_size() <= TABLE_BYTES_LIMIT:
        table = fast.first_layer_table(support)

    def argmax(tokens: torch.Tensor) -> CertifiedArgmax:
        with matmul_mode(device, tf32=False):
            normed = fast.last_normed(tokens.to(device), table)
        return unembed.argmax(normed)

    return ArgmaxPath("fast+tables" if table is not None else "fast", precision, argmax)


def _check_fits(adapter: ModelAdapter, distribution: InputDistribution, name: str) -> None:
    if distribution.length > adapter.n_ctx:
        raise LowprobError(f"distribution {name!r} has {distribution.length} positions; model {adapter.name!r} "
                           f"takes at most {adapter.n_ctx}")


def count_shard(adapter: ModelAdapter, distribution: InputDistribution, name: str, seed: int, shard_size: int, *,
                reservoir_size: int = 8, reservoir_max_p: float = 1e-3, batch_size: int = 4096,
                precision: str = "fp32", on_batch: Any = None) -> GroundTruth:
    """Shard ``seed`` of the ground truth of ``adapter`` on ``distribution`` (named ``name``)."""
    _check_fits(adapter, distribution, name)
    path = argmax_path(adapter, distribution, precision)
    started = time.perf_counter()
    tally = count_argmax(path, distribution, shard_size, shard_generator(seed), batch_size=batch_size,
                         reservoir_size=reservoir_size, on_batch=on_batch)
    counts = tally.counts.numpy()
    reservoir = {t: tuple(xs) for t, xs in sorted(tally.hits.items()) if counts[t] <= reservoir_max_p * shard_size}
    metadata = {"reservoir_max_p": reservoir_max_p, "forward": path.label, "precision": path.precision,
                "rechecked": path.rechecked, "seconds": round(time.perf_counter() - started, 1),
                "lowprob": __version__, "torch": torch.__version__,
                "device": str(adapter.fast_path.W_E.device if adapter.fast_path else adapter.device),
                "machine": platform.machine(), "seed_derivation": "sha256('lowprob-ground-truth/<seed>')[:8] >> 1"}
    return GroundTruth(adapter.name, name, distribution.content_hash, adapter.d_vocab, shard_size, (seed,),
                       counts.astype(np.int64), reservoir, reservoir_size, metadata)


def check_output(path: Path) -> None:
    """Refuse, before anything is counted, an output the atomic rewrite could not write or should not replace:
    a folder, a read-only file (the rename would silently swap it for a writable one), an unwritable folder."""
    if "\x00" in str(path):
        raise LowprobError(f"output {str(path)!r} is not a valid path (it contains a NUL character)")
    if path.is_dir():
        raise LowprobError(f"output {path} is a folder; name a ground-truth file (e.g. {path / 'counts.json'})")
    if path.exists():
        mode = path.stat().st_mode
        if not stat.S_ISREG(mode):
            raise LowprobError(f"output {path} is not a regular file")
        if not mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH) or not os.access(path, os.W_OK):
            raise LowprobError(f"output {path} is read-only; make it writable (chmod u+w) to extend it, or choose "
                               "another output")
    folder = next(p for p in (path.absolute().parent, *path.absolute().parents) if p.exists())
    if not folder.is_dir():
        raise LowprobError(f"cannot write {path}: {folder} is not a folder")
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".probe")
    except OSError as exc:
        raise LowprobError(f"cannot write {path}: {folder} is not writable ({exc.strerror or exc})") from None
    os.close(fd)
    os.unlink(probe)


def check_settings(*, samples: int, shard_size: int = 1 << 16, first_seed: int = 0, reservoir_size: int = 8,
                   reservoir_max_p: float = 1e-3, batch_size: int = 4096) -> None:
    """Refuse a counting run's settings out of range (of either kind of ground truth) before any model work."""
    if not 1 <= shard_size <= MAX_SHARD_SIZE:
        raise LowprobError(f"the shard size must be from 1 to 2^{MAX_SHARD_SIZE.bit_length() - 1}, got {shard_size}")
    if samples <= 0 or samples % shard_size:
        raise LowprobError(f"samples ({samples}) must be a positive multiple of the shard size ({shard_size})")
    if samples // shard_size > MAX_SHARDS:
        raise LowprobError(f"{samples} samples are {samples // shard_size} shards of {shard_size}; a file holds at "
                           f"most {MAX_SHARDS} shards (2^{MAX_SHARDS.bit_length() - 1}): use a larger shard size")
    if not 0 <= first_seed <= MAX_SEED - samples // shard_size + 1:
        raise LowprobError(f"the first seed must be from 0 to 2^63 - 1 minus the shard count, got {first_seed}")
    if not 0 <= reservoir_size <= MAX_RESERVOIR:
        raise LowprobError(f"the reservoir size must be from 0 to {MAX_RESERVOIR}, got {reservoir_size}")
    if not 0 <= reservoir_max_p <= 1:
        raise LowprobError(f"the reservoir's max probability must be in [0, 1], got {reservoir_max_p}")
    if batch_size < 1:
        raise LowprobError(f"the batch size must be at least 1, got {batch_size}")


def check_run(output: Path, *, samples: int, shard_size: int = 1 << 16, first_seed: int = 0,
              reservoir_size: int = 8, reservoir_max_p: float = 1e-3, batch_size: int = 4096) -> GroundTruth | None:
    """Validate a counting run before any model work: every setting in range, the output writable; returns the
    (validated) ground truth already in ``output``, which the run resumes, or ``None``."""
    check_settings(samples=samples, shard_size=shard_size, first_seed=first_seed, reservoir_size=reservoir_size,
                   reservoir_max_p=reservoir_max_p, batch_size=batch_size)
    check_output(output)
    return GroundTruth.load(output) if output.exists() else None


def pending_seeds(existing: GroundTruth | None, adapter: ModelAdapter, distribution: InputDistribution, name: str,
                  output: Path, *, samples: int, shard_size: int, first_seed: int = 0) -> list[int]:
    """The shard seeds a run still has to count; ``existing`` (the file at ``output``) must be the same ground
    truth (model, distribution and its hash, vocabulary, shard size)."""
    _check_fits(adapter, distribution, name)
    identity = dict(zip(IDENTITY, (adapter.name, name, distribution.content_hash, adapter.d_vocab, shard_size),
                        strict=True))
    return missing_seeds(existing, identity, output, "ground truth", shards=samples // shard_size,
                         first_seed=first_seed)


def run_ground_truth(adapter: ModelAdapter, distribution: InputDistribution, name: str, output: Path, *,
                     samples: int, shard_size: int = 1 << 16, first_seed: int = 0, reservoir_size: int = 8,
                     reservoir_max_p: float = 1e-3, batch_size: int = 4096, precision: str = "fp32",
                     progress: bool | None = None) -> GroundTruth:
    """Count shards ``first_seed ..`` until ``samples`` inputs are in ``output``, resuming what is there.

    After each shard the merged file is rewritten atomically, so a run killed at any point loses at most the
    shard in progress, and rerunning it gives bit-identical counts. ``precision`` (``fp32``, ``bf16``, ``fp16``,
    ``tf32``) only changes speed: the counts are the float32 ones (certified, see
    :mod:`lowprob.core.certified_argmax`), so shards counted in different precisions merge. Every setting and
    the output are checked (:func:`check_run`) before the first input is drawn.
    """
    total = check_run(output, samples=samples, shard_size=shard_size, first_seed=first_seed,
                      reservoir_size=reservoir_size, reservoir_max_p=reservoir_max_p, batch_size=batch_size)
    todo = pending_seeds(total, adapter, distribution, name, output, samples=samples, shard_size=shard_size,
                         first_seed=first_seed)
    with progress_bar(len(todo) * shard_size, f"{adapter.name}/{name}", progress, unit="seq") as bar:
        shards = ((seed, count_shard(adapter, distribution, name, seed, shard_size, reservoir_size=reservoir_size,
                                     reservoir_max_p=reservoir_max_p, batch_size=batch_size, precision=precision,
                                     on_batch=bar.update)) for seed in todo)
        return merge_arrivals(total, todo, shards, output)
