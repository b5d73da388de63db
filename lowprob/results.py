"""Result rows and results files: one typed, versioned row per estimate, appended to JSON lines so a killed run
loses nothing.

Every writer (``lowprob estimate --output``, ``lowprob run``, ``lowprob reproduce``) writes a
:class:`ResultRow`: the :class:`RowSpec` that determines the estimate plus the full :class:`Estimate` (or the
error it ended in); :func:`read_results` gives them back typed. Each row is written with a single ``write`` of
a complete line followed by ``fsync``. A run killed in the middle of a write can leave at most one partial
trailing line; the next append trims it — and only it: a last line that parses is a complete row and is kept.
Whole-file outputs go through :func:`write_atomic`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, Field, ValidationError, model_validator

from lowprob.config_files import StrictModel
from lowprob.core.budget import Budget
from lowprob.core.errors import LowprobError
from lowprob.core.estimate import Estimate

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
"""The version of :class:`ResultRow` this lowprob writes and reads (``ResultRow.format_version``)."""


class ProtocolTags(StrictModel):
    """What `lowprob reproduce` adds to a row: the phase, the target token and its ground truth, the temperature.

    ``phase`` is ``tune`` (a run at one grid temperature on a tuning token), ``test`` (a run on a test token at
    the temperature tuning chose) or ``unsupported`` (a marker standing for every row of a method the estimator
    cannot run on the pair's distribution; no token, no estimate).
    """

    model_config = ConfigDict(frozen=True)

    phase: Literal["tune", "test", "unsupported"]
    token: int | None = None
    token_text: str | None = None
    p_true: float | None = Field(default=None, description="the token's ground-truth probability")
    gt_count: int | None = Field(default=None, description="its ground-truth hits")
    gt_samples: int | None = Field(default=None, description="samples of the ground truth")
    temperature: float | None = Field(default=None, description="the temperature as run")
    tuning_grid: tuple[float, ...] | None = Field(default=None, description="the grid a test row's temperature "
                                                  "was chosen from (tuned methods only)")


class RowSpec(StrictModel):
    """What determines one estimate; its :meth:`digest` is the row's key, so a rerun finds what is done.

    ``estimator`` is the registered name and ``label`` what tables show (they differ when one estimator runs
    with two option sets). ``target`` and ``seed`` are ``None`` only on an ``unsupported`` marker.
    """

    model_config = ConfigDict(frozen=True)

    experiment: str | None = None
    model: str
    distribution: str
    distribution_hash: str
    target: str | None
    estimator: str
    label: str
    options: dict[str, Any] = Field(default_factory=dict)
    budget: Budget
    seed: int | None
    protocol: ProtocolTags | None = None

    @property
    def phase(self) -> str | None:
        """The reproduce phase (``tune``, ``test``, ``unsupported``), ``None`` for other rows."""
        return self.protocol.phase if self.protocol is not None else None

    @property
    def token(self) -> int | None:
        """The reproduce target token, ``None`` for other rows."""
        return self.protocol.token if self.protocol is not None else None

    @property
    def temperature(self) -> float | None:
        """The temperature a reproduce row ran at, ``None`` for other rows."""
        return self.protocol.temperature if self.protocol is not None else None

    def digest(self) -> str:
        """A stable 24-hex-digit hash of the spec's fields (a row's own key and outcome are not part of it)."""
        ident = json.dumps(self.model_dump(mode="json", include=set(RowSpec.model_fields)), sort_keys=True)
        return hashlib.sha256(ident.encode()).hexdigest()[:24]


class ResultRow(RowSpec):
    """One line of a results file: the spec, its ``key``, and the :class:`Estimate` or the error it ended in."""

    format_version: Literal[1] = 1
    key: str
    estimate: Estimate | None = None
    error: str | None = None

    @model_validator(mode="after")
    def _outcome(self) -> ResultRow:
        if self.estimate is not None and self.error is not None:
            raise ValueError("a row holds an estimate or an error, not both")
        if self.estimate is None and self.error is None:
            raise ValueError("a row needs an estimate or an error")
        return self

    @classmethod
    def of(cls, spec: RowSpec, *, key: str | None = None, estimate: Estimate | None = None,
           error: str | None = None) -> ResultRow:
        """The row of ``spec`` (keyed by its digest unless ``key`` gives the planned one) with its outcome."""
        fields = {name: getattr(spec, name) for name in RowSpec.model_fields}
        return cls(**fields, key=key or spec.digest(), estimate=estimate, error=error)


def read_results(path: Path | str) -> list[ResultRow]:
    """The rows of a results file, typed; see :meth:`ResultsFile.rows` for what is refused."""
    return ResultsFile(path).rows()


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def write_atomic(path: Path, data: str | bytes) -> None:
    """Replace ``path`` with ``data`` in one step (temporary file in the same folder, then ``os.replace``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data.encode("utf-8") if isinstance(data, str) else data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes the file private; give it the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_writable(path: Path | str) -> None:
    """Fail now, before any compute, if rows could not be appended to ``path``; changes nothing on disk.

    Refuses an empty path, a folder, something that is not a regular file, a file that cannot be opened for
    writing, and a new file whose nearest existing parent folder does not let a file be created in it.
    """
    path, probe = Path(path), Path(path)
    try:
        if path.is_dir():
            raise LowprobError(f"results file {str(path) or '.'!r} is a folder; name a file such as results.jsonl")
        if path.exists():
            if not path.is_file():
                raise LowprobError(f"results file {path} is not a regular file")
            os.close(os.open(path, os.O_WRONLY | os.O_APPEND))
            return
        probe = path.parent
        while not probe.exists():
            probe = probe.parent
        if not probe.is_dir():
            raise LowprobError(f"cannot write results file {path}: {probe} is not a folder")
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as exc:
        where = "" if probe == path else f" (no file can be created in {probe})"
        raise LowprobError(f"cannot write results file {path}{where}: {exc.strerror or exc}") from None


def _parses(raw: bytes) -> bool:
    try:
        json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False
    return True


class ResultsFile:
    """An append-only JSON-lines file of :class:`ResultRow`, one per key."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    def rows(self) -> list[ResultRow]:
        """Every complete row, in file order.

        A partial last line (the unterminated tail of a killed write that does not parse) is skipped with a
        warning. Any other line that is not a valid row is refused with ``file:line``, as are rows of an
        earlier format. A key that occurs twice is counted once: the first row is kept and the repeat ignored
        with a warning (e.g. after concatenating overlapping files).
        """
        if not self.path.exists():
            return []
        if self.path.is_dir():
            raise LowprobError(f"results file {self.path} is a folder")
        data = self.path.read_bytes()
        lines = data.split(b"\n")
        rows: dict[str, ResultRow] = {}
        for number, raw in enumerate(lines, start=1):
            if not raw.strip():
                continue
            if number == len(lines) and not _parses(raw):  # the unterminated tail of an interrupted write
                log.warning("%s: ignoring an incomplete last line (interrupted write)", self.path)
                continue
            row = self._parse(raw, number)
            if row.key in rows:
                log.warning("%s:%d: key %s repeats an earlier row; counted once", self.path, number, row.key)
                continue
            rows[row.key] = row
        return list(rows.values())

    def keys(self) -> set[str]:
        return {row.key for row in self.rows()}

    def _parse(self, raw: bytes, number: int) -> ResultRow:
        where = f"{self.path}:{number}"
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise LowprobError(f"{where}: not a JSON line; the results file is damaged "
                               "(move it aside to start afresh)") from None
        if not isinstance(data, dict) or not data:
            raise LowprobError(f"{where}: not a results row (a JSON object with format_version, key and "
                               f"estimate), got {raw[:60].decode('utf-8', 'replace')!r}")
        version = data.get("format_version")
        if version is None and "key" in data:
            raise LowprobError(f"{where}: a row written by an earlier lowprob (no format_version); this version "
                               f"reads format {FORMAT_VERSION}. Move the file aside (or name a new output) and "
                               "rerun to recompute its rows")
        if isinstance(version, int) and version > FORMAT_VERSION:
            raise LowprobError(f"{where}: a row of format {version}, written by a newer lowprob; this version "
                               f"reads format {FORMAT_VERSION}")
        try:
            return ResultRow.model_validate(data)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'row'}: {e['msg']}" for e in exc.errors()[:3])
            raise LowprobError(f"{where}: not a valid results row: {problems}") from None

    def _tail(self) -> bytes:
        """Whatever follows the last newline (empty for a file that ends with one, or none)."""
        if not self.path.exists() or self.path.stat().st_size == 0:
            return b""
        with self.path.open("rb") as fh:
            fh.seek(-1, os.SEEK_END)
            if fh.read(1) == b"\n":
                return b""
            fh.seek(0)
            data = fh.read()
        return data[data.rfind(b"\n") + 1:]

    def append(self, row: ResultRow) -> None:
        """Append one row as a complete line and make it durable before returning.

        A last line without its newline is kept (and terminated) when it parses, and trimmed only when it is
        the partial tail of an interrupted write — the file is opened for rewriting only then.
        """
        line = json.dumps(row.model_dump(mode="json"), sort_keys=True, allow_nan=False) + "\n"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tail = self._tail()
        if tail and _parses(tail):
            line = "\n" + line
        elif tail:
            with self.path.open("rb+") as fh:
                fh.truncate(self.path.stat().st_size - len(tail))
            log.warning("%s: removed an incomplete last line left by an interrupted run", self.path)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)
