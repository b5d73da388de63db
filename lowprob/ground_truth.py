"""Ground-truth files: how often each token is the argmax over many sampled inputs, with their provenance.

A ground truth is built from *shards*: shard ``s`` is ``shard_size`` inputs drawn with a generator seeded by
``s``, so any set of distinct shards can be counted on different machines, at different times, and merged by
adding counts. A file records which shard seeds it holds; merging refuses overlapping seeds or mismatched
model, distribution or shard size, so no input is ever counted twice.
"""

from __future__ import annotations

import hashlib
import json
import math
import platform
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lowprob import __version__
from lowprob.core.certified_argmax import CertifiedArgmax, CertifiedUnembedding, matmul_mode
from lowprob.core.counting import count_argmax
from lowprob.core.distribution import InputDistribution
from lowprob.core.errors import LowprobError
from lowprob.core.fast_forward import FirstLayerTable
from lowprob.core.model import ModelAdapter
from lowprob.core.progress import progress_bar
from lowprob.results import write_atomic

FORMAT = "lowprob-ground-truth/1"
SHIPPED_PACKAGE = "lowprob"
SHIPPED_DIR = "data/ground_truth"
"""Package-data folder (under ``lowprob``) of the shipped ground truths, one ``<model>/<distribution>.json``."""
TABLE_BYTES_LIMIT = 1 << 30
"""First-layer tables larger than this are not built (the fast path then computes the first layer)."""


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

    def hits(self, token: int) -> tuple[tuple[int, ...], ...]:
        """Stored hitting inputs of ``token`` (possibly fewer than its count, possibly none)."""
        return tuple(self.reservoir.get(token, ()))

    def merge(self, other: GroundTruth) -> GroundTruth:
        """The ground truth over both files' shards; they must describe the same model, distribution and shards."""
        for name in ("model", "distribution", "distribution_hash", "d_vocab", "shard_size"):
            if getattr(self, name) != getattr(other, name):
                raise LowprobError(f"cannot merge ground truths with different {name}: "
                                   f"{getattr(self, name)!r} vs {getattr(other, name)!r}")
        overlap = sorted(set(self.seeds) & set(other.seeds))
        if overlap:
            raise LowprobError(f"cannot merge ground truths that share shard seeds {overlap[:5]}"
                               f"{' ...' if len(overlap) > 5 else ''}: those inputs would be counted twice")
        first, second = (self, other) if min(self.seeds, default=0) <= min(other.seeds, default=0) else (other, self)
        size = max(self.reservoir_size, other.reservoir_size)
        counts = self.counts + other.counts
        samples = self.samples + other.samples
        max_p = float(self.metadata.get("reservoir_max_p", 1.0))
        reservoir = {t: tuple([*first.hits(t), *second.hits(t)][:size])
                     for t in sorted(set(self.reservoir) | set(other.reservoir)) if counts[t] <= max_p * samples}
        return GroundTruth(self.model, self.distribution, self.distribution_hash, self.d_vocab, self.shard_size,
                           tuple(sorted(self.seeds + other.seeds)), counts, reservoir, size,
                           {**second.metadata, **first.metadata, **_summed_metadata(self.metadata, other.metadata)})

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict; counts are stored sparsely as ``{token id: count}``."""
        nonzero = np.flatnonzero(self.counts)
        return {"format": FORMAT, "model": self.model, "distribution": self.distribution,
                "distribution_hash": self.distribution_hash, "d_vocab": self.d_vocab, "samples": self.samples,
                "shard_size": self.shard_size, "seeds": compress_seeds(self.seeds),
                "metadata": dict(self.metadata),
                "counts": {str(int(t)): int(self.counts[t]) for t in nonzero},
                "reservoir_size": self.reservoir_size,
                "reservoir": {str(t): [list(x) for x in xs] for t, xs in sorted(self.reservoir.items())}}

    @classmethod
    def from_json(cls, data: Mapping[str, Any], source: str = "<data>") -> GroundTruth:
        """Inverse of :meth:`to_json`; ``source`` names the file in errors."""
        if data.get("format") != FORMAT:
            raise LowprobError(f"{source}: not a lowprob ground-truth file (format {data.get('format')!r}, "
                               f"expected {FORMAT!r})")
        try:
            counts = np.zeros(int(data["d_vocab"]), dtype=np.int64)
            for token, count in data["counts"].items():
                counts[int(token)] = int(count)
            gt = cls(data["model"], data["distribution"], data["distribution_hash"], int(data["d_vocab"]),
                     int(data["shard_size"]), expand_seeds(data["seeds"]), counts,
                     {int(t): tuple(tuple(int(i) for i in x) for x in xs) for t, xs in data["reservoir"].items()},
                     int(data["reservoir_size"]), dict(data.get("metadata", {})))
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise LowprobError(f"{source}: damaged ground-truth file ({type(exc).__name__}: {exc})") from exc
        if gt.samples != int(data["samples"]):
            raise LowprobError(f"{source}: says {data['samples']} samples but its shards hold {gt.samples}")
        return gt

    def save(self, path: Path | str) -> None:
        """Write atomically (a killed write never leaves a half-written file)."""
        write_atomic(Path(path), json.dumps(self.to_json(), separators=(",", ":")) + "\n")

    @classmethod
    def load(cls, path: Path | str) -> GroundTruth:
        """Read a ground-truth file."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise LowprobError(f"no ground-truth file at {path}") from None
        except json.JSONDecodeError as exc:
            raise LowprobError(f"{path}: not JSON ({exc})") from exc
        return cls.from_json(data, str(path))


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


def count_shard(adapter: ModelAdapter, distribution: InputDistribution, name: str, seed: int, shard_size: int, *,
                reservoir_size: int = 8, reservoir_max_p: float = 1e-3, batch_size: int = 4096,
                precision: str = "fp32", on_batch: Any = None) -> GroundTruth:
    """Shard ``seed`` of the ground truth of ``adapter`` on ``distribution`` (named ``name``)."""
    if distribution.length > adapter.n_ctx:
        raise LowprobError(f"distribution {name!r} has {distribution.length} positions; model {adapter.name!r} "
                           f"takes at most {adapter.n_ctx}")
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


def run_ground_truth(adapter: ModelAdapter, distribution: InputDistribution, name: str, output: Path, *,
                     samples: int, shard_size: int = 1 << 16, first_seed: int = 0, reservoir_size: int = 8,
                     reservoir_max_p: float = 1e-3, batch_size: int = 4096, precision: str = "fp32",
                     progress: bool | None = None) -> GroundTruth:
    """Count shards ``first_seed ..`` until ``samples`` inputs are in ``output``, resuming what is there.

    After each shard the merged file is rewritten atomically, so a run killed at any point loses at most the
    shard in progress, and rerunning it gives bit-identical counts. ``precision`` (``fp32``, ``bf16``, ``fp16``,
    ``tf32``) only changes speed: the counts are the float32 ones (certified, see
    :mod:`lowprob.core.certified_argmax`), so shards counted in different precisions merge.
    """
    if samples <= 0 or samples % shard_size:
        raise LowprobError(f"samples ({samples}) must be a positive multiple of the shard size ({shard_size})")
    wanted = range(first_seed, first_seed + samples // shard_size)
    total = GroundTruth.load(output) if output.exists() else None
    if total is not None:
        expected = (adapter.name, name, distribution.content_hash, shard_size)
        found = (total.model, total.distribution, total.distribution_hash, total.shard_size)
        if found != expected:
            raise LowprobError(f"{output} holds a different ground truth (model, distribution, hash, shard size "
                               f"{found}, expected {expected}); choose another output file")
    done = set(total.seeds) if total is not None else set()
    todo = [s for s in wanted if s not in done]
    with progress_bar(len(todo) * shard_size, f"{adapter.name}/{name}", progress, unit="seq") as bar:
        for seed in todo:
            shard = count_shard(adapter, distribution, name, seed, shard_size, reservoir_size=reservoir_size,
                                reservoir_max_p=reservoir_max_p, batch_size=batch_size, precision=precision,
                                on_batch=bar.update)
            total = shard if total is None else total.merge(shard)
            total.save(output)
    if total is None:
        raise LowprobError("no shard was counted")  # unreachable: samples > 0
    return total
