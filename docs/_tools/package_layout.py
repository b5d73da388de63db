"""mkdocs hook: lay out the ``lowprob`` import package for griffe, which reads sources without importing them.

``lowprob.core``, ``lowprob.dsl`` and ``lowprob.plugins`` live in top-level folders (``package-dir`` in
pyproject.toml), a mapping griffe cannot follow; before every build this hook assembles ``lowprob/`` from
symlinks in a fresh temporary folder and points mkdocstrings there, so a new module appears in the API reference
without touching this file and builds running side by side do not share the folder.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.plugins import event_priority

ROOT = Path(__file__).resolve().parents[2]
SUBPACKAGES = ("core", "dsl", "plugins")
_layouts: list[Path] = []


@event_priority(50)  # before mkdocstrings' own on_config, which creates the Python handler with its paths
def on_config(config: MkDocsConfig, **kwargs: Any) -> MkDocsConfig:
    """Assemble the symlinked package (every entry of ``lowprob/`` plus the subpackage folders) and search it."""
    search = Path(tempfile.mkdtemp(prefix="lowprob-griffe-"))
    _layouts.append(search)
    package = search / "lowprob"
    package.mkdir()
    for entry in (ROOT / "lowprob").iterdir():
        if entry.name != "__pycache__":
            (package / entry.name).symlink_to(entry)
    for name in SUBPACKAGES:
        (package / name).symlink_to(ROOT / name)
    config.plugins["mkdocstrings"].config.handlers["python"]["paths"] = [str(search)]
    return config


def on_shutdown(**kwargs: Any) -> None:
    """Remove the temporary layouts."""
    while _layouts:
        shutil.rmtree(_layouts.pop(), ignore_errors=True)
