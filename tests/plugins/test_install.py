"""Entry-point discovery from a REALLY installed package: the example plugin, pip-installed offline.

The package is installed with ``pip install --no-deps --no-build-isolation --no-index --target DIR``
from a copy of its source (so the repository stays clean); subprocesses then see it via ``PYTHONPATH``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory, example_dir: Path) -> dict[str, str]:
    """Environment variables under which ``lowprob_example_plugin`` is installed."""
    root = tmp_path_factory.mktemp("example-install")
    source = root / "source"
    shutil.copytree(example_dir, source, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    target = root / "site"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
         "--disable-pip-version-check", "--quiet", "--target", str(target), str(source)],
        capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert any(Path(target).glob("lowprob_example_plugin-0.1.0.dist-info/entry_points.txt"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOWPROB_")}
    env.update(PYTHONPATH=str(target), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               LOWPROB_NO_PROGRESS="1")
    return env


def _python(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env,
                          timeout=300)


def test_entry_point_is_discovered_with_distribution_name_and_version(installed) -> None:  # type: ignore[no-untyped-def]
    script = textwrap.dedent("""
        import json
        from lowprob.plugins import load_registry, plugin_infos
        registry = load_registry()
        entry = registry.entry("estimators", "uniform-is")
        infos = [i.model_dump() for i in plugin_infos(registry)]
        blocked = load_registry(block=["lowprob-example-plugin"])
        print(json.dumps({"plugin": entry.plugin, "version": entry.version, "infos": infos,
                          "blocked": [e.name for e in blocked.entries("estimators")]}))
    """)
    done = _python(installed, "-c", script)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert (found["plugin"], found["version"]) == ("lowprob-example-plugin", "0.1.0")
    info = next(i for i in found["infos"] if i["name"] == "lowprob-example-plugin")
    assert info["source"] == "entry point" and info["provides"] == {"estimators": ["uniform-is"]}
    assert "uniform-is" not in found["blocked"]


def test_cli_lists_and_runs_the_installed_estimator(installed) -> None:  # type: ignore[no-untyped-def]
    listing = _python(installed, "-m", "lowprob", "plugins", "--json")
    assert listing.returncode == 0, listing.stderr
    assert "lowprob-example-plugin" in [p["name"] for p in json.loads(listing.stdout)]
    run = _python(installed, "-m", "lowprob", "estimate", "hex-demo", "--estimator", "uniform-is",
                  "--budget-calls", "512", "--seed", "1", "--json")
    assert run.returncode == 0, run.stderr
    estimate = json.loads(run.stdout)
    assert estimate["forward_passes"] == 512
    assert estimate["provenance"]["estimator"] == "uniform-is"
    assert estimate["provenance"]["plugin"] == "lowprob-example-plugin"
    env = dict(installed, LOWPROB_DISABLE_ENTRYPOINTS="1")
    missing = _python(env, "-m", "lowprob", "estimate", "hex-demo", "--estimator", "uniform-is",
                      "--budget-calls", "16")
    assert missing.returncode != 0
    assert "unknown estimator 'uniform-is'" in missing.stdout + missing.stderr
