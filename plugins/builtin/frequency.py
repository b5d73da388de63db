"""The committed token-frequency tables of the built-in tokenizer (format: :mod:`lowprob.plugins.frequency_tables`)."""

from __future__ import annotations

import importlib.resources
from pathlib import Path

BUILTIN_TABLES = ("code", "english", "spanish")
"""Slices with a committed table for the built-in tokenizer (``data/freq-<name>.json``)."""


def builtin_table_path(name: str) -> Path:
    """The committed table ``name`` of the built-in tokenizer (via ``importlib.resources``)."""
    return Path(str(importlib.resources.files("lowprob.plugins.builtin") / "data" / f"freq-{name}.json"))
