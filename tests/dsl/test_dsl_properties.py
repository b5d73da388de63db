"""Properties: formatting round-trips any syntax tree; parse and compile fail only with DslError."""

from __future__ import annotations

import contextlib

from dsl_vocab import RESOLVERS, make_vocab
from hypothesis import given, settings
from hypothesis import strategies as st

from lowprob.dsl import (
    AffixFilter,
    BoolFilter,
    Branch,
    DistDef,
    DslError,
    ExplicitSet,
    Group,
    LenFilter,
    MatchesFilter,
    NameItem,
    NotFilter,
    NumberArg,
    RegexSet,
    Repeat,
    SetCall,
    SetEntry,
    SetItem,
    SetOp,
    SetRef,
    Spec,
    SpecialItem,
    StringArg,
    TargetDef,
    TargetIn,
    TargetIs,
    TextItem,
    TokensDef,
    UniformItem,
    WeightedItem,
    Where,
    format_spec,
    load_spec,
    parse,
)
from lowprob.dsl.syntax import KEYWORDS

names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,5}", fullmatch=True).filter(lambda n: n not in KEYWORDS)
strings = st.text(max_size=6)
patterns = st.text(
    st.characters(blacklist_characters="/\\\n", blacklist_categories=("Cs",)),
    min_size=1,
    max_size=6,
)
numbers = st.one_of(st.integers(-(10**6), 10**6), st.floats(allow_nan=False, allow_infinity=False))
token_ids = st.integers(0, 10**6)

filters = st.recursive(
    st.one_of(
        st.builds(LenFilter, st.sampled_from(["==", "!=", "<=", ">=", "<", ">"]), numbers),
        st.builds(AffixFilter, st.sampled_from(["startswith", "endswith"]), strings),
        st.builds(MatchesFilter, patterns),
    ),
    lambda inner: st.one_of(
        st.builds(NotFilter, inner),
        st.builds(BoolFilter, st.sampled_from(["and", "or"]), inner, inner),
    ),
    max_leaves=4,
)
entries = st.one_of(st.text(max_size=4), token_ids)


@st.composite
def explicit_sets(draw: st.DrawFn) -> ExplicitSet:
    tokens = draw(st.lists(entries, max_size=3))
    weighted = draw(st.booleans())
    return ExplicitSet(tuple(SetEntry(t, draw(numbers) if weighted else None) for t in tokens))


set_exprs = st.recursive(
    st.one_of(
        st.builds(SetRef, names),
        st.builds(RegexSet, patterns),
        explicit_sets(),
        st.builds(SetCall, names, st.just(())),
    ),
    lambda inner: st.one_of(
        st.builds(SetOp, st.sampled_from(["|", "&", "-"]), inner, inner),
        st.builds(Where, inner, filters),
        st.builds(
            SetCall,
            names,
            st.lists(
                st.one_of(st.builds(NumberArg, numbers), st.builds(StringArg, strings), inner),
                max_size=3,
            ).map(tuple),
        ),
    ),
    max_leaves=5,
)


def branches(items: st.SearchStrategy) -> st.SearchStrategy:
    branch = st.builds(Branch, st.lists(items, min_size=1, max_size=3).map(tuple), st.none() | numbers)
    return st.lists(branch, min_size=1, max_size=3).map(tuple)


items = st.recursive(
    st.one_of(
        st.builds(TextItem, strings),
        st.builds(SpecialItem, st.sampled_from(["BOS", "EOS"]) | strings),
        st.builds(NameItem, names),
        st.builds(SetItem, set_exprs),
        st.builds(UniformItem, set_exprs),
        st.builds(WeightedItem, set_exprs, set_exprs),
    ),
    lambda inner: st.one_of(st.builds(Repeat, inner, st.integers(1, 1000)), st.builds(Group, branches(inner))),
    max_leaves=6,
)
statements = st.one_of(
    st.builds(TokensDef, names, set_exprs),
    st.builds(DistDef, names, branches(items)),
    st.builds(
        TargetDef,
        names,
        st.one_of(
            st.builds(TargetIs, st.text(max_size=4) | st.integers(0, 10**6)),
            st.builds(TargetIn, set_exprs),
        ),
    ),
)
specs = st.builds(Spec, st.lists(statements, max_size=4).map(tuple))


@settings(max_examples=300)
@given(specs)
def test_format_then_parse_gives_the_same_tree(spec: Spec) -> None:
    assert parse(format_spec(spec)) == spec


VALID = """# a spec touching every construct
tokens hex = /^[0-9a-f]+$/
tokens hw = {"He": 0.5, "She": 0.5}
tokens long = hex where len >= 2 and not startswith "0" or matches /f/
tokens mix = (hex | {"A"}) & vocab() - {17} | top(3, hex)
dist head = BOS ("He" @ 0.3 | "She" @ 0.7)
dist main = head " said:" hex * 3 [long] uniform(hw) weighted(hex, freq("stdlib")) EOS
target hit = argmax == "ff"
target id = argmax == #17
target any = argmax in hex
"""
ALPHABET = st.sampled_from(list('abcdefhxz019 \n\t"/\\#*@|&-()[]{}=:,.<>!^$+?') + list(KEYWORDS))


def check_only_dsl_errors(text: str) -> None:
    try:
        spec = parse(text)
    except DslError:
        return
    assert parse(format_spec(spec)) == spec
    with contextlib.suppress(DslError):
        load_spec(text, make_vocab(), RESOLVERS, max_length=64)


@settings(max_examples=300)
@given(st.one_of(st.text(max_size=60), st.lists(ALPHABET, max_size=30).map("".join)))
def test_random_text_raises_only_dsl_errors(text: str) -> None:
    check_only_dsl_errors(text)


@st.composite
def mutated(draw: st.DrawFn) -> str:
    text = VALID
    for _ in range(draw(st.integers(1, 4))):
        start = draw(st.integers(0, len(text)))
        end = draw(st.integers(start, min(len(text), start + 3)))
        text = text[:start] + draw(st.lists(ALPHABET, max_size=2).map("".join)) + text[end:]
    return text


@settings(max_examples=300)
@given(mutated())
def test_mutated_specs_raise_only_dsl_errors(text: str) -> None:
    check_only_dsl_errors(text)


def test_the_valid_spec_compiles() -> None:
    assert load_spec(VALID, make_vocab(), RESOLVERS).distribution().length == 11
