"""Helpers for plugin tests: throw-away plugin modules and the example plugin on ``sys.path``."""

from __future__ import annotations

import importlib
import sys
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from lowprob.plugins import hookimpl

REPO = Path(__file__).resolve().parents[2]
EXAMPLE_DIR = REPO / "examples" / "lowprob-example-plugin"

PluginFactory = Callable[..., types.ModuleType]


def make_plugin(name: str, version: str = "", **hooks: Callable[..., Any]) -> types.ModuleType:
    """A plugin module called ``name`` whose hooks are the given functions, marked ``@hookimpl``."""
    module = types.ModuleType(name)
    module.__version__ = version  # type: ignore[attr-defined]
    for hook_name, fn in hooks.items():
        setattr(module, hook_name, hookimpl(fn))
    return module


@pytest.fixture
def plugin() -> PluginFactory:
    """``plugin(name, version, register_x=fn, ...)`` builds a plugin module for ``extra_plugins``."""
    return make_plugin


@pytest.fixture(autouse=True)
def _clean_plugin_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test sees the developer's plugin switches."""
    for var in ("LOWPROB_BLOCK_PLUGINS", "LOWPROB_DISABLE_ENTRYPOINTS", "LOWPROB_TRACE_PLUGINS"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(scope="session")
def example_dir() -> Path:
    """The example plugin's source tree."""
    return EXAMPLE_DIR


@pytest.fixture(scope="session")
def example_plugin() -> Iterator[types.ModuleType]:
    """The example plugin package imported from its source tree (no install needed)."""
    src = str(EXAMPLE_DIR / "src")
    sys.path.insert(0, src)
    try:
        yield importlib.import_module("lowprob_example_plugin")
    finally:
        sys.path.remove(src)
