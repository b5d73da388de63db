"""The built-in named distributions and resolvers work through the DSL against the default vocabulary."""

from __future__ import annotations

import pytest

from lowprob.core.errors import LowprobError
from lowprob.dsl import load_spec
from lowprob.plugins import load_registry
from lowprob.plugins.builtin.distributions import SPECS
from lowprob.plugins.builtin.tokenizers import default_vocabulary

REGISTRY = load_registry(entry_points=False)


def _compile(text: str, name: str = "inline"):  # type: ignore[no-untyped-def]
    return load_spec(text, default_vocabulary(), REGISTRY.token_set_resolvers(), max_length=64,
                     filename=f"<{name}>")


@pytest.mark.parametrize("name", list(SPECS))
def test_demo_spec_compiles(name: str) -> None:
    """The demo specs target the default vocabulary (the paper's are in tests/distributions)."""
    compiled = _compile(REGISTRY.distribution_spec(name), name)
    assert 2 <= compiled.distribution().length <= 64
    assert compiled.target().token_ids
    assert REGISTRY.entry("distribution", name).description


def test_resolvers_are_callable_from_the_dsl() -> None:
    compiled = _compile('tokens plain = vocab() - specials()\n'
                        'tokens common = freq("english") & /^ /\n'
                        'dist main = BOS plain common\n'
                        'target rare = argmax in specials()')
    assert compiled.distribution().length == 3
    assert set(compiled.target().token_ids) == {0, 1}


def test_resolver_errors_surface_readably() -> None:
    with pytest.raises(LowprobError, match="unknown frequency table 'latin'"):
        _compile('tokens latin = freq("latin")\ndist main = BOS latin\ntarget t = argmax == "ff"')
