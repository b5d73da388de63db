"""Dependencies point one way: lowprob (app) → plugins, dsl → core. core imports neither dsl nor plugins."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
APP = ("lowprob.api", "lowprob.cli", "lowprob.experiments", "lowprob.report", "lowprob.results",
       "lowprob.ground_truth", "lowprob.protocol", "lowprob.reproduce", "lowprob.figures", "lowprob.brackets",
       "lowprob.config_files")
FORBIDDEN = {
    "core": ("lowprob.dsl", "lowprob.plugins", *APP),
    "dsl": ("lowprob.plugins", *APP),
    "plugins": APP,
}


def _imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            if node.module == "lowprob":  # `from lowprob import api` reaches the app layer too
                found += [(node.lineno, f"lowprob.{alias.name}") for alias in node.names]
    return found


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layer_imports_point_one_way(layer: str) -> None:
    bad = [f"{path.relative_to(ROOT)}:{line}: imports {name}"
           for path in sorted((ROOT / layer).rglob("*.py"))
           for line, name in _imports(path)
           if name.startswith(FORBIDDEN[layer]) or name == "lowprob"]
    assert not bad, "\n".join(bad)


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
