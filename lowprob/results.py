"""Results files: JSON lines, one row per estimate, appended atomically so a killed run loses nothing.

Each row is written with a single ``write`` of a complete line followed by ``fsync``. A run killed in the
middle of a write can leave at most one partial trailing line; opening the file for appending trims it, so
rows already written are never lost or duplicated. Whole-file outputs go through :func:`write_atomic`.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lowprob.core.errors import LowprobError

log = logging.getLogger(__name__)


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` in one step (temporary file in the same folder, then ``os.replace``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes the file private; give it the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class ResultsFile:
    """An append-only JSON-lines file of result rows keyed by ``row["key"]``."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    def rows(self) -> Iterator[dict[str, Any]]:
        """Every complete row; a partial trailing line (from a killed write) is skipped with a warning."""
        if not self.path.exists():
            return
        with self.path.open("rb") as fh:
            data = fh.read()
        lines = data.split(b"\n")
        for number, raw in enumerate(lines, start=1):
            if not raw.strip():
                continue
            try:
                yield json.loads(raw)
            except json.JSONDecodeError:
                if number == len(lines):  # the unterminated last line of an interrupted write
                    log.warning("%s: ignoring an incomplete last line (interrupted write)", self.path)
                    continue
                raise LowprobError(f"{self.path}:{number}: not a JSON line; the results file is damaged "
                                   "(move it aside to start afresh)") from None

    def keys(self) -> set[str]:
        return {row["key"] for row in self.rows() if "key" in row}

    def _trim_partial_tail(self) -> None:
        if not self.path.exists() or self.path.stat().st_size == 0:
            return
        with self.path.open("rb+") as fh:
            fh.seek(-1, os.SEEK_END)
            if fh.read(1) == b"\n":
                return
            fh.seek(0)
            data = fh.read()
            cut = data.rfind(b"\n") + 1
            fh.truncate(cut)
            log.warning("%s: removed an incomplete last line left by an interrupted run", self.path)

    def append(self, row: dict[str, Any]) -> None:
        """Append one row as a complete line and make it durable before returning."""
        line = json.dumps(row, sort_keys=True, allow_nan=False) + "\n"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._trim_partial_tail()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)
