"""What every sharded count shares (argmax and output-event ground truths): refusing merges that would mix
different counts or count an input twice, finding the shards a file still lacks, merging shards into the file as
they arrive, with the caller as its only writer, and reading, validating and atomically writing the files.

A count is made of shards: shard ``s`` is counted with generators seeded by ``s``, so a file is fully described by
its identity (model, distribution, what is counted, shard size) and its set of shard seeds.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, Self, TypeVar

from pydantic import BaseModel, ValidationError

from lowprob.core.errors import LowprobError
from lowprob.core.validation_messages import format_validation_error
from lowprob.results import write_atomic


class ShardedCount(Protocol):
    """A count over shard seeds that merges with another over disjoint seeds and saves itself atomically."""

    @property
    def seeds(self) -> tuple[int, ...]: ...

    def merge(self, other: Self) -> Self: ...

    def save(self, path: Path | str) -> None: ...


C = TypeVar("C", bound=ShardedCount)
M = TypeVar("M", bound=BaseModel)


def compare_counts(a: ShardedCount, b: ShardedCount, identity: Sequence[str]) -> tuple[str | None, list[int]]:
    """The first ``identity`` field on which two counts differ (``None``: they count the same thing) and the shard
    seeds they share, sorted (inputs both have counted)."""
    differs = next((name for name in identity if getattr(a, name) != getattr(b, name)), None)
    return differs, sorted(set(a.seeds) & set(b.seeds))


def merge_order(a: C, b: C, identity: Sequence[str], kind: str) -> tuple[C, C]:
    """``a`` and ``b`` ordered by first shard seed, after refusing a merge of different counts (an ``identity``
    field differs) or one that would count inputs twice (a shared seed); ``kind`` names them in errors."""
    name, overlap = compare_counts(a, b, identity)
    if name is not None:
        raise LowprobError(f"cannot merge {kind} with different {name}: "
                           f"{getattr(a, name)!r} vs {getattr(b, name)!r}")
    if overlap:
        raise LowprobError(f"cannot merge {kind} that share shard seeds {overlap[:5]}"
                           f"{' ...' if len(overlap) > 5 else ''}: those inputs would be counted twice")
    return (a, b) if min(a.seeds, default=0) <= min(b.seeds, default=0) else (b, a)


def missing_seeds(existing: ShardedCount | None, identity: Mapping[str, Any], output: Path, kind: str, *,
                  shards: int, first_seed: int = 0) -> list[int]:
    """Seeds ``first_seed .. first_seed + shards - 1`` not yet in ``existing`` (the file at ``output``), which
    must have the run's ``identity`` (field name to value)."""
    if existing is not None:
        found = tuple(getattr(existing, k) for k in identity)
        if found != tuple(identity.values()):
            raise LowprobError(f"{output} holds a different {kind} ({', '.join(identity)}: {found}, expected "
                               f"{tuple(identity.values())}); choose another output file")
    done = set(existing.seeds) if existing is not None else set()
    return [s for s in range(first_seed, first_seed + shards) if s not in done]


def merge_arrivals(total: C | None, todo: Sequence[int], arrivals: Iterable[tuple[int, C]], output: Path) -> C:
    """Merge the shards of ``todo`` into ``total`` as ``(seed, shard)`` arrives, rewriting ``output`` atomically
    after each merge.

    Shards are merged in ``todo``'s order, each seed once: one that arrives early waits in memory for those before
    it (so the file equals a serial run's whatever the completion order), and a seed delivered again (a task rerun
    after its worker died) is never counted twice. A run stopped at any point loses only unmerged shards.
    """
    arrived: dict[int, C] = {}
    merged: set[int] = set()
    position = 0
    for seed, shard in arrivals:
        if seed in merged or seed in arrived:
            continue
        arrived[seed] = shard
        changed = False
        while position < len(todo) and todo[position] in arrived:
            shard = arrived.pop(todo[position])
            merged.add(todo[position])
            position += 1
            total = shard if total is None else total.merge(shard)
            changed = True
        if changed:
            assert total is not None
            total.save(output)
    if total is None:
        raise LowprobError(f"no shard was counted for {output}")  # callers refuse samples <= 0 beforehand
    return total


def read_json(path: Path, kind: str) -> Any:
    """The JSON value in the ``kind`` file (e.g. ``ground-truth``) at ``path``; a missing, unreadable or non-JSON
    file is a :class:`LowprobError` that names it and says what is wrong."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise LowprobError(f"no {kind} file at {path}") from None
    except OSError as exc:
        raise LowprobError(f"{path}: cannot read the {kind} file ({exc.strerror or exc})") from None
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise LowprobError(f"{path}: not a {kind} file (not UTF-8 text: byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise LowprobError(f"{path}: not JSON ({exc})") from None
    except RecursionError:
        raise LowprobError(f"{path}: not a {kind} file (JSON nested too deeply)") from None


def write_json(path: Path | str, data: Mapping[str, Any]) -> None:
    """Write ``data`` as one line of compact JSON, atomically (a killed write never leaves a half-written file)."""
    write_atomic(Path(path), json.dumps(data, separators=(",", ":")) + "\n")


def parse_file(data: Any, schema: type[M], file_format: str, kind: str, source: str) -> M:
    """``data`` (the JSON of ``source``) validated against ``schema`` as a ``kind`` file of ``file_format``;
    anything else is a :class:`LowprobError` naming the file and, for a damaged one, the fields."""
    if not isinstance(data, dict):
        what = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(type(data), "a number")
        raise LowprobError(f"{source}: not a lowprob {kind} file (its JSON is {what}, not an object)")
    if data.get("format") != file_format:
        raise LowprobError(f"{source}: not a lowprob {kind} file (format {data.get('format')!r}, "
                           f"expected {file_format!r})")
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        lines = format_validation_error(exc, schema)
        more = f"\n  ... and {len(lines) - 8} more" if len(lines) > 8 else ""
        raise LowprobError(f"{source}: damaged {kind} file:\n  " + "\n  ".join(lines[:8]) + more) from None
