"""Generated values for every numeric option of ``estimate``, ``check``, ``sample``, ``ground-truth run`` and
``ground-truth show`` (0, negatives, NaN, inf, 2^70, fractions, strings): each case ends in a clean user error
or a valid dry-run plan within seconds, and the oracle of :mod:`fuzz.hostile_inputs` says which. Prints the
tally (``make test-fuzz``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings

import lowprob.cli as cli
from lowprob.ground_truth import run_ground_truth
from lowprob.plugins import Registry

from .hostile_inputs import COMMANDS, DEMO, GT_FILE, Tally, flag_sets, run_flag_case, shared_cli_registry

CASES = {"estimate": 1000, "sample": 300, "check": 300, "ground-truth run": 1000, "ground-truth show": 200}
"""Cases per command: 2800 flag sets in all, most where the options are most numerous."""


@pytest.fixture(scope="module")
def registry() -> Iterator[Registry]:
    """One registry for every case, so each model loads once (the CLI builds a fresh one per call)."""
    with shared_cli_registry() as shared:
        yield shared


@pytest.fixture(scope="module")
def folder(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with a small ground truth of the random model, for ``ground-truth show``."""
    path = tmp_path_factory.mktemp("cli-fuzz")
    compiled = cli.compile_source(registry, cli.resolve_spec(DEMO, registry), model="random-1l")
    run_ground_truth(compiled.model, compiled.spec.distribution(None), "demo", path / GT_FILE, samples=512,
                     shard_size=512)
    return path


@pytest.mark.fuzz
@pytest.mark.parametrize("name", sorted(CASES))
def test_hostile_flags(name: str, folder: Path) -> None:
    tally = Tally()

    @settings(max_examples=CASES[name], derandomize=True, deadline=None, database=None)
    @given(flag_sets(COMMANDS[name]))
    def case(flags: dict[str, str]) -> None:
        run_flag_case(tally, name, flags, folder)

    case()
    print(f"\nlowprob {name} flags: {tally.summary()}")
    assert sum(tally.outcomes.values()) >= CASES[name] * 0.9, "hypothesis ran fewer cases than asked"
    assert not tally.failures, f"{tally.summary()}\n\n" + "\n\n".join(tally.failures[:20])
