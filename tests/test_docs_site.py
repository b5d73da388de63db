"""The documentation site builds in strict mode, and what the pages state matches the code.

The site (mkdocs.yml) fails its strict build on a broken link or anchor, a page missing from the navigation or an
API entry that cannot be collected. The other tests check statements a reader acts on: every ``pycon`` example
runs and prints what the page shows, the architecture picture calls ``run_estimator`` in its real argument
order, and docs/plugins.md names the registry's real default model and everything each built-in plugin provides.
"""

from __future__ import annotations

import doctest
import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from lowprob.core import run_estimator
from lowprob.plugins import load_registry, plugin_infos

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(p for p in DOCS.rglob("*.md") if "_tools" not in p.parts)
PYCON = re.compile(r"^```pycon\n(.*?)^```", re.MULTILINE | re.DOTALL)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site built once, in strict mode, into a temporary folder."""
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    # no --quiet: it hides warnings from the strict count too (a page missing from the nav then passed)
    run = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(out)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, f"mkdocs build --strict failed:\n{run.stdout}{run.stderr}"
    return out


def built(site: Path, page: Path) -> str:
    """The HTML mkdocs made from ``page`` (directory URLs: ``a/b.md`` -> ``a/b/index.html``)."""
    relative = page.relative_to(DOCS).with_suffix("")
    target = site / ("index.html" if relative.name == "index" else relative / "index.html")
    assert target.is_file(), f"{page.relative_to(ROOT)} has no page in the site"
    return target.read_text(encoding="utf-8")


def test_every_page_is_in_the_site(site: Path) -> None:
    for page in PAGES:
        built(site, page)


@pytest.mark.parametrize(("page", "anchors"), [
    ("reference/core.md", ["lowprob.core.estimate.Estimate", "lowprob.core.estimate.ConfidenceInterval",
                           "lowprob.core.budget.Budget", "lowprob.core.estimator.Estimator",
                           "lowprob.core.random.categorical", "lowprob.core.target.ArgmaxIs",
                           "lowprob.core.distribution.InputDistribution", "lowprob.core.model.ModelAdapter"]),
    ("reference/lowprob.md", ["lowprob.estimate", "lowprob.load_model", "lowprob.read_results", "lowprob.Estimate",
                              "lowprob.run_estimator"]),
    ("reference/dsl.md", ["lowprob.dsl.load_spec", "lowprob.dsl.CompiledSpec"]),
    ("reference/plugins.md", ["lowprob.plugins.registry.Registry", "lowprob.plugins.hookspecs.register_estimators",
                              "lowprob.plugins.testing.check_unbiased", "lowprob.plugins.fits.FitResult"]),
    ("plugins.md", [f"lowprob.core.EstimatorOutput.{f}" for f in ("value", "std_error", "ci", "hits", "samples")]
     + ["lowprob.core.ConfidenceInterval.level", "lowprob.core.random.categorical",
        "lowprob.plugins.testing.toy_problem"]),
])
def test_api_entries_are_generated_from_the_code(site: Path, page: str, anchors: list[str]) -> None:
    html = built(site, DOCS / page)
    missing = [a for a in anchors if f'id="{a}"' not in html]
    assert not missing, f"docs/{page} has no generated entry for {missing}"


def test_the_reference_documents_every_public_module() -> None:
    """Each module of ``lowprob.core`` and ``lowprob.plugins`` (not the built-in plugins) has its section."""
    directives = {line.removeprefix(":::").strip() for page in (DOCS / "reference").glob("*.md")
                  for line in page.read_text(encoding="utf-8").splitlines() if line.startswith(":::")}
    modules = [f"lowprob.{package}.{path.stem}" for package in ("core", "plugins")
               for path in sorted((ROOT / package).glob("*.py")) if not path.stem.startswith("_")]
    missing = [m for m in modules if m not in directives]
    assert not missing, f"docs/reference/ has no '::: <module>' section for {missing}"


def test_sphinx_roles_in_docstrings_become_links(site: Path) -> None:
    html = built(site, DOCS / "reference" / "core.md")
    assert ":class:`" not in html and ":func:`" not in html
    assert 'href="#lowprob.core.estimate.Estimate"' in html


@pytest.mark.parametrize("page", [p for p in PAGES if PYCON.search(p.read_text(encoding="utf-8"))],
                         ids=lambda p: str(p.relative_to(DOCS)))
def test_examples_print_what_the_page_shows(page: Path) -> None:
    """Every ``pycon`` block of a page runs, in order and in one namespace, and prints exactly what it shows."""
    text = page.read_text(encoding="utf-8")
    parser, runner = doctest.DocTestParser(), doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    namespace: dict[str, object] = {}
    for block in PYCON.finditer(text):
        line = text.count("\n", 0, block.start(1))
        test = parser.get_doctest(block.group(1), namespace, page.name, str(page), line)
        runner.run(test, clear_globs=False)
    assert runner.failures == 0, f"{runner.failures} example(s) in {page.relative_to(ROOT)} failed (output above)"


def test_the_architecture_picture_calls_run_estimator_in_its_argument_order() -> None:
    shown = re.search(r"run_estimator\(([^)]*)\)", (DOCS / "index.md").read_text(encoding="utf-8"))
    assert shown, "docs/index.md no longer shows run_estimator's arguments"
    arguments = [a.strip() for a in shown.group(1).split(",")]
    assert arguments == list(inspect.signature(run_estimator).parameters)[:len(arguments)]


def test_plugins_page_names_the_registry_default_model() -> None:
    text = (DOCS / "plugins.md").read_text(encoding="utf-8")
    default = load_registry(entry_points=False).default_model_name
    documented = re.search(r'registry\.default_model_name\s+# -> "([^"]+)"', text)
    assert documented and documented.group(1) == default
    marked = re.findall(r"`([\w.-]+)` \(default\)", text)
    assert marked == [default], f"docs/plugins.md marks {marked} as the default model; the registry's is {default!r}"


def test_plugins_page_lists_what_every_builtin_plugin_provides() -> None:
    """Each built-in plugin has a row naming everything it provides (distributions, which come in families, are
    listed by ``lowprob distributions``)."""
    rows = dict(re.findall(r"^\| `(lowprob\.[\w.]+)` \| (.*) \|$", (DOCS / "plugins.md").read_text(encoding="utf-8"),
                           re.MULTILINE))
    for info in plugin_infos(load_registry(entry_points=False)):
        if info.source != "builtin":
            continue
        assert info.name in rows, f"docs/plugins.md's built-in plugins table has no row for {info.name}"
        names = [name for kind, provided in info.provides.items() if kind != "distributions" for name in provided]
        missing = [name for name in names if not re.search(rf"`{re.escape(name)}[`(:]", rows[info.name])]
        assert not missing, f"docs/plugins.md's row for {info.name} does not mention {missing}"
