"""The error catalogue in docs/dsl.md: every example prints exactly the message shown."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from dsl_vocab import RESOLVERS, make_vocab

from lowprob.dsl import DslError, load_spec

DOC = Path(__file__).parents[2] / "docs" / "dsl.md"
EXAMPLE = re.compile(r"```spec\n(.*?)\n```\n\n```text\n(.*?)\n```", re.DOTALL)


def catalogue() -> list[tuple[str, str]]:
    text = DOC.read_text(encoding="utf-8")
    return EXAMPLE.findall(text[text.index("## Error catalogue") :])


def test_catalogue_is_not_empty() -> None:
    assert len(catalogue()) >= 50


@pytest.mark.parametrize(("spec", "message"), catalogue())
def test_catalogue_example(spec: str, message: str) -> None:
    with pytest.raises(DslError) as caught:
        load_spec(spec, make_vocab(), RESOLVERS, max_length=64)
    assert str(caught.value) == message


def test_reference_example_compiles() -> None:
    text = DOC.read_text(encoding="utf-8")
    first = re.search(r"```spec\n(.*?)\n```", text, re.DOTALL)
    assert first is not None
    spec = first.group(1).replace("#123", "#12")
    assert load_spec(spec, make_vocab(), RESOLVERS).distribution().name == "main"
