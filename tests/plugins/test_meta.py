"""Meta-tests (as in datasette): every hook is documented, and implemented by a built-in or test plugin."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from lowprob.plugins import hookspecs, load_registry
from lowprob.plugins.hookspecs import HOOK_NAMES

DOCS = (Path(__file__).resolve().parents[2] / "docs" / "plugins.md").read_text(encoding="utf-8")


def test_the_hooks_are_the_documented_six() -> None:
    assert HOOK_NAMES == ("register_distributions", "register_estimators", "register_extrapolations",
                          "register_models", "register_scores", "register_token_sets")


@pytest.mark.parametrize("hook", HOOK_NAMES)
def test_hookspec_has_a_docstring_and_a_typed_registrar(hook: str) -> None:
    spec = getattr(hookspecs, hook)
    assert inspect.getdoc(spec)
    assert list(inspect.signature(spec).parameters) == ["registrar"]
    assert spec.__annotations__["registrar"] == "Registrar"


@pytest.mark.parametrize("hook", HOOK_NAMES)
def test_hook_is_documented(hook: str) -> None:
    assert f"### {hook}(registrar)" in DOCS
    first_line = inspect.getdoc(getattr(hookspecs, hook)).partition("\n")[0]  # type: ignore[union-attr]
    assert first_line in DOCS, f"docs/plugins.md does not quote the docstring of {hook}"


@pytest.mark.parametrize("switch", ["LOWPROB_BLOCK_PLUGINS", "LOWPROB_DISABLE_ENTRYPOINTS",
                                    "LOWPROB_TRACE_PLUGINS"])
def test_environment_switches_are_documented(switch: str) -> None:
    assert switch in DOCS


def test_every_hook_is_implemented_by_a_builtin_or_the_example_plugin(example_plugin):  # type: ignore[no-untyped-def]
    registry = load_registry(entry_points=False, extra_plugins=[example_plugin])
    implemented = {hook for plugin in registry.plugins for hook in plugin.hooks}
    assert implemented == set(HOOK_NAMES)
