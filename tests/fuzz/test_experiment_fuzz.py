"""Experiment files generated from examples/experiments/*.toml and mutated (hostile values in every field,
unknown and missing keys, duplicated tables, damaged bytes: truncation, junk, UTF-16, BOM, NUL): each must end
in a clean user error or a valid ``lowprob run --dry-run`` plan within seconds, refused where the oracle says
the file is invalid. Prints the tally (``make test-fuzz``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lowprob.plugins import Registry

from .hostile_inputs import EXAMPLES, Mutation, Tally, mutations, run_experiment_case, shared_cli_registry

CASES = 2000


@pytest.fixture(scope="module")
def registry() -> Iterator[Registry]:
    """One registry for every case, so each model loads once (the CLI builds a fresh one per call)."""
    with shared_cli_registry() as shared:
        yield shared


@pytest.mark.fuzz
def test_hostile_experiment_files(registry: Registry, tmp_path: Path) -> None:
    tally = Tally()

    @settings(max_examples=CASES, derandomize=True, deadline=None, database=None)
    @given(st.sampled_from(EXAMPLES), st.lists(mutations(), min_size=1, max_size=3))
    def case(source: Path, changes: list[Mutation]) -> None:
        run_experiment_case(tally, source, changes, tmp_path)

    case()
    print(f"\nlowprob run --dry-run on mutated experiment files: {tally.summary()}")
    assert sum(tally.outcomes.values()) >= CASES * 0.9, "hypothesis ran fewer cases than asked"
    assert not tally.failures, f"{tally.summary()}\n\n" + "\n\n".join(tally.failures[:20])
