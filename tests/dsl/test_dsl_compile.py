"""Every construct compiles to the expected token sets, distributions and targets."""

from __future__ import annotations

import pytest
import torch
from dsl_vocab import ID, RESOLVERS, make_vocab

from lowprob.core.distribution import InputDistribution
from lowprob.core.target import ArgmaxIn, ArgmaxIs
from lowprob.dsl import CompiledSpec, compile_spec, load_spec, parse

HEX = [ID[t] for t in "abcdef0123"] + [ID["ff"], ID["00"], ID["ab"]]


def compiled(text: str, max_length: int | None = None) -> CompiledSpec:
    return load_spec(text, make_vocab(), RESOLVERS, max_length=max_length)


def token_set(expr: str, *, prelude: str = "") -> tuple[list[int], list[float] | None]:
    tokens = compiled(f"{prelude}\ntokens t = {expr}").token_sets["t"]
    weights = None if tokens.weights is None else [round(w, 9) for w in tokens.weights.tolist()]
    return tokens.ids.tolist(), weights


def positions(dist: InputDistribution) -> list[dict[int, float]]:
    return [{i: round(p, 9) for i, p in zip(c.ids.tolist(), c.probs.tolist(), strict=True)} for c in dist.positions]


@pytest.mark.parametrize(
    ("expr", "ids", "weights"),
    [
        ("/^[0-9a-f]+$/", sorted(HEX), None),
        (
            "/^[A-Z]/",
            [ID[t] for t in ("He", "She", "HELLO", "A", "B")],
            None,
        ),  # search: anchors are explicit
        ("/e/", [ID["e"], ID["He"], ID["She"], ID[" screamed"]], None),
        ('{"He", "She", 17}', [ID["He"], ID["She"], 17], None),
        ('{"He": 1, "She": 3}', [ID["He"], ID["She"]], [1.0, 3.0]),
        ('{"a": 1, "a": 2}', [ID["a"]], [3.0]),  # duplicates add
        ("{0}", [0], None),  # ids may name special tokens
        ("vocab()", [i for i in range(24) if i > 1], None),  # specials excluded
        ('/^[A-Z]+$/ & vocab() - {"A"}', [ID["HELLO"], ID["B"]], None),
        ("{2, 3} | {3, 4} & {4}", [2, 3, 4], None),  # & binds tighter than |
        ("({2, 3} | {3, 4}) & {4}", [4], None),
        ("{2, 3, 4} - {3} - {4}", [2], None),  # left-associative
        ("{2, 3, 4} - ({3} - {4})", [2, 4], None),
        ('/^[0-9a-f]+$/ where len >= 2 and not startswith "0"', [ID["ff"], ID["ab"]], None),
        (
            'vocab() where endswith "e" or matches /^:$/',
            [ID["e"], ID["He"], ID["She"], ID[":"]],
            None,
        ),
        ("vocab() where not (len < 5 or len > 5)", [ID[" said"], ID["HELLO"]], None),
        ("vocab() where len == 2 where matches /f/", [ID["ff"]], None),
        (
            'freq("stdlib")',
            sorted(ID[t] for t in "abcdef0123"),
            [1.0 + i for i in sorted(ID[t] for t in "abcdef0123")],
        ),
        ('top(2, freq("stdlib"))', [ID["2"], ID["3"]], [11.0, 12.0]),  # heaviest
        ("top(2, {5, 3, 9})", [3, 5], None),  # lowest ids of an unweighted set
        ('top(99, {"a": 1})', [ID["a"]], [1.0]),
        ('{"a": 1, "b": 2} | {"b": 1, "c": 1}', [2, 3, 4], [1.0, 3.0, 1.0]),  # union adds weights
        ('freq("stdlib") & {"a", "HELLO"}', [ID["a"]], [3.0]),  # left operand's weights
        ('{"a", "b", "HELLO"} & freq("stdlib")', [ID["a"], ID["b"]], [3.0, 4.0]),  # else right's
        (
            'freq("stdlib") - {"a"}',
            [ID[t] for t in "bcdef0123"],
            [1.0 + ID[t] for t in "bcdef0123"],
        ),
        ('freq("stdlib") where matches /[a-b]/', [ID["a"], ID["b"]], [3.0, 4.0]),
    ],
)
def test_token_sets(expr: str, ids: list[int], weights: list[float] | None) -> None:
    assert token_set(expr) == (ids, weights)


def test_references_to_earlier_sets() -> None:
    assert token_set("hex & {17, 20}", prelude="tokens hex = /^[0-9a-f]+$/") == ([17], None)


def test_literals_become_constant_positions() -> None:
    dist = compiled('dist main = BOS "He said:" EOS').distribution()
    assert isinstance(dist, InputDistribution)
    assert dist.name == "main" and dist.is_factorized and dist.length == 5
    assert positions(dist) == [
        {0: 1.0},
        {ID["He"]: 1.0},
        {ID[" said"]: 1.0},
        {ID[":"]: 1.0},
        {1: 1.0},
    ]


def test_escapes_and_special_tokens() -> None:
    dist = compiled('dist main = special("PAD") "\\x48e" " "').distribution()
    assert positions(dist) == [{24: 1.0}, {ID["He"]: 1.0}, {ID[" "]: 1.0}]


def test_set_positions_and_repetition() -> None:
    text = 'tokens hex = /^[0-9a-f]+$/\ndist main = BOS "He said:" hex * 8 EOS'
    dist = compiled(text).distribution()
    assert dist.length == 13 and dist.is_factorized
    uniform = {i: round(1 / len(HEX), 9) for i in sorted(HEX)}
    assert positions(dist)[4:12] == [uniform] * 8


def test_weighted_uniform_and_bracketed_positions() -> None:
    text = """
        tokens hw = {"He": 1, "She": 3}
        dist main = hw uniform(hw) [{"a", "b"} | {"c"}]
                    weighted({"a", "b", "HELLO"}, freq("stdlib"))
    """
    assert positions(compiled(text).distribution()) == [
        {ID["He"]: 0.25, ID["She"]: 0.75},
        {ID["He"]: 0.5, ID["She"]: 0.5},
        {2: round(1 / 3, 9), 3: round(1 / 3, 9), 4: round(1 / 3, 9)},
        {ID["a"]: round(3 / 7, 9), ID["b"]: round(4 / 7, 9)},
    ]


def test_single_token_alternatives_stay_factorized() -> None:
    dist = compiled('dist main = BOS ("He" @ 0.3 | "She" @ 0.7) " said"').distribution()
    assert dist.is_factorized and dist.length == 3
    assert positions(dist)[1] == {ID["He"]: 0.3, ID["She"]: 0.7}


def test_equal_weights_by_default() -> None:
    dist = compiled('dist main = "a" | "b" | "c" | "c"').distribution()
    assert positions(dist) == [{2: 0.25, 3: 0.25, 4: 0.5}]


def test_multi_token_alternatives_are_a_mixture_block() -> None:
    dist = compiled('dist main = BOS ("He" " said" @ 1 | "She" ":" @ 3) EOS').distribution()
    assert not dist.is_factorized and dist.length == 4 and len(dist.blocks) == 3
    block = dist.blocks[1]
    assert block.weights.tolist() == [0.25, 0.75]
    assert block.outcomes() == {(ID["He"], ID[" said"]): 0.25, (ID["She"], ID[":"]): 0.75}


def test_dists_are_spliced_by_name() -> None:
    spec = compiled('dist head = BOS "He"\ndist main = head " said" head')
    assert spec.distribution("main").length == 5
    assert positions(spec.distribution())[3:] == [{0: 1.0}, {ID["He"]: 1.0}]
    assert spec.distribution("main").source.startswith("dist head")


def test_repeated_groups() -> None:
    dist = compiled('dist main = ("a" "b" | "c" "d") * 2').distribution()
    assert dist.length == 4 and len(dist.blocks) == 2
    rows, probs = dist.enumerate()
    assert len(rows) == 4 and torch.allclose(probs, torch.full((4,), 0.25, dtype=torch.float64))


def test_targets() -> None:
    spec = compiled(
        'target hit = argmax == "ff"\ntarget two = argmax == #12\ntarget main = argmax in /^[0-9a-f]+$/ - {17}'
    )
    assert spec.targets["hit"] == ArgmaxIs(17, label="ff")
    assert spec.targets["two"] == ArgmaxIs(12, label="He")
    assert spec.target() == ArgmaxIn(frozenset(HEX) - {17}, label="/^[0-9a-f]+$/ - {17}")


def test_choosing_distributions() -> None:
    spec = compiled('dist a = "a"\ndist main = "b"\ndist c = "c"')
    assert spec.distribution().name == "main"
    assert spec.distribution("c").name == "c"
    assert list(spec.distributions) == ["a", "main", "c"]


def test_max_length_allows_exact_fit() -> None:
    assert compiled("dist main = BOS * 64", max_length=64).distribution().length == 64


def test_compiling_a_hand_built_tree() -> None:
    spec = parse('tokens t = {"a"}\ndist main = t * 2')
    rebuilt = type(spec)(spec.statements)  # no source text, no positions
    result = compile_spec(rebuilt, make_vocab())
    assert result.distribution().length == 2
