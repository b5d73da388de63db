"""mkdocs hook: lay out the ``lowprob`` import package for griffe, which reads sources without importing them.

``lowprob.core``, ``lowprob.dsl`` and ``lowprob.plugins`` live in top-level folders (``package-dir`` in
pyproject.toml), a mapping griffe cannot follow; this hook builds ``build/griffe/lowprob`` from symlinks before
every build, so a new module appears in the API reference without touching this file.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
LAYOUT = ROOT / "build" / "griffe" / "lowprob"
SUBPACKAGES = ("core", "dsl", "plugins")


def on_startup(**kwargs: Any) -> None:
    """Rebuild the symlinked package: every entry of ``lowprob/`` plus the three subpackage folders."""
    shutil.rmtree(LAYOUT, ignore_errors=True)
    LAYOUT.mkdir(parents=True)
    for entry in (ROOT / "lowprob").iterdir():
        if entry.name != "__pycache__":
            (LAYOUT / entry.name).symlink_to(entry)
    for name in SUBPACKAGES:
        (LAYOUT / name).symlink_to(ROOT / name)
