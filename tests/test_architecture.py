"""Dependencies point one way: lowprob (app) → plugins, dsl → core. core imports neither dsl nor plugins.

The application layer reaches plugins through the registry and the public plugin modules, never
``lowprob.plugins.builtin.*``; built-in plugins are given what they need instead of loading a registry.
The app modules are found on disk, so a new one is covered without editing this file.
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


APP_FILES = sorted((ROOT / "lowprob").rglob("*.py"))
APP = tuple(sorted(_module(p) for p in APP_FILES if p.name != "__init__.py"))
FORBIDDEN = {
    "core": ("lowprob.dsl", "lowprob.plugins", *APP),
    "dsl": ("lowprob.plugins", *APP),
    "plugins": APP,
}
BUILTIN = "lowprob.plugins.builtin"
LOADERS = ("lowprob.plugins.manager", "lowprob.plugins.load_registry")
"""How a plugin would load a registry itself."""


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every ``(line, module)`` imported, with ``module.name`` for each name a ``from module import`` takes
    (``from lowprob import api`` reaches the app layer, ``from lowprob.plugins import load_registry`` the manager)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return found


def _violations(paths: list[Path], forbidden: tuple[str, ...]) -> list[str]:
    """``path:line: imports name`` for each import of a module in (or under) ``forbidden``."""
    return [f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}:{line}: imports {name}"
            for path in paths for line, name in _imports(path)
            if any(name == f or name.startswith(f"{f}.") for f in forbidden)]


def test_app_modules_are_found_on_disk() -> None:
    assert {"lowprob.api", "lowprob.cli", "lowprob.brackets", "lowprob.reproduce"} <= set(APP)
    assert "lowprob" not in APP and all(name.startswith("lowprob.") for name in APP)


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layer_imports_point_one_way(layer: str) -> None:
    paths = sorted((ROOT / layer).rglob("*.py"))
    bad = _violations(paths, FORBIDDEN[layer]) + [
        f"{path.relative_to(ROOT)}:{line}: imports lowprob" for path in paths for line, name in _imports(path)
        if name == "lowprob"]
    assert not bad, "\n".join(bad)


def test_the_app_layer_does_not_import_builtin_plugins() -> None:
    bad = _violations(APP_FILES, (BUILTIN,))
    assert not bad, "reach built-in plugins through the registry or a public module:\n" + "\n".join(bad)


def test_builtin_plugins_do_not_load_a_registry() -> None:
    bad = _violations(sorted((ROOT / "plugins" / "builtin").rglob("*.py")), LOADERS)
    assert not bad, "a plugin is given the registry it needs (Registry.create_estimator):\n" + "\n".join(bad)


def test_the_scan_sees_every_form_of_a_forbidden_import(tmp_path: Path) -> None:
    source = tmp_path / "mod.py"
    source.write_text("import lowprob.plugins.builtin.naive\n"
                      "from lowprob.plugins import load_registry\n"
                      "from lowprob.plugins.builtin import tsmc_estimators\n"
                      "from lowprob.plugins.builtins_elsewhere import fine\n")
    bad = _violations([source], (BUILTIN, *LOADERS))
    assert [entry.partition(": imports ")[2] for entry in bad] == [
        "lowprob.plugins.builtin.naive", "lowprob.plugins.load_registry", "lowprob.plugins.builtin",
        "lowprob.plugins.builtin.tsmc_estimators"]


def test_importing_core_loads_neither_dsl_nor_plugins() -> None:
    code = ("import sys, lowprob.core; "
            "print(sorted(m for m in sys.modules if m.startswith(('lowprob.dsl', 'lowprob.plugins'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_no_top_level_package_named_core_dsl_or_plugins() -> None:
    code = "import importlib.util as u; print([n for n in ('core', 'dsl', 'plugins') if u.find_spec(n)])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd="/")
    assert out.stdout.strip() == "[]"
