"""The DSL's output events: the issue's five spellings parse, format back and compile to the right targets."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from lowprob.core.errors import LowprobError
from lowprob.core.generation import Sampling
from lowprob.core.output_target import ContainsToken, Equals, OutputTarget, TextTest
from lowprob.core.target import ArgmaxIn, ArgmaxIs
from lowprob.dsl import DslError, compile_spec, format_spec, load_spec, parse
from lowprob.dsl import syntax as s

sys.path.insert(0, str(Path(__file__).parents[1] / "dsl"))
from dsl_vocab import ID, RESOLVERS, make_vocab  # noqa: E402

ISSUE_SPELLINGS = """
target a = greedy(4) startswith " the end"
target b = sample(8) contains " Berlin"
target c = sample(16, temperature=0.7, top_k=50) contains {" kill", " die"}
target d = sample(12) matches / (?i)password /
target e = sample(2) == " New York"
"""


def test_the_issue_spellings_parse_to_output_tests() -> None:
    spec = parse(ISSUE_SPELLINGS)
    tests = [st.test for st in spec.statements if isinstance(st, s.TargetDef)]
    assert all(isinstance(t, s.OutputTest) for t in tests)
    assert [(t.continuation.mode, t.continuation.length, t.op) for t in tests] == [
        ("greedy", 4, "startswith"), ("sample", 8, "contains"), ("sample", 16, "contains"),
        ("sample", 12, "matches"), ("sample", 2, "=="),
    ]
    options = tests[2].continuation.options
    assert [(o.name, o.value) for o in options] == [("temperature", 0.7), ("top_k", 50)]
    assert isinstance(tests[2].operand, s.ExplicitSet)
    assert tests[3].operand == " (?i)password "
    assert parse(format_spec(spec)) == spec


VOCAB_SPEC = """
tokens hex = /^[0-9a-f]+$/
dist main = BOS "He said:" hex * 4
target a = greedy(4) startswith " said"
target b = sample(8) contains "ff"
target c = sample(16, temperature=0.7, top_k=5) contains {"a", "b"}
target d = sample(12) matches / (?i)hello /
target e = sample(2) == "He said"
target f = sample(3, top_k=2) contains hex
"""


def test_output_targets_compile() -> None:
    targets = load_spec(VOCAB_SPEC, make_vocab(), RESOLVERS, max_length=64).targets
    assert targets["a"] == OutputTarget(4, Sampling.argmax(), TextTest("startswith", " said"))
    assert targets["b"] == OutputTarget(8, Sampling.sample(), TextTest("contains", "ff"))
    assert targets["c"] == OutputTarget(16, Sampling.sample(0.7, 5), ContainsToken(frozenset({ID["a"], ID["b"]}),
                                                                                     '{"a", "b"}'))
    assert targets["d"] == OutputTarget(12, Sampling.sample(), TextTest("matches", "(?i)hello"))
    assert targets["e"] == OutputTarget(2, Sampling.sample(), Equals((ID["He"], ID[" said"]), "He said"))
    hex_ids = {ID[t] for t in ("a", "b", "c", "d", "e", "f", "0", "1", "2", "3", "ff", "00", "ab")}
    assert targets["f"] == OutputTarget(3, Sampling.sample(top_k=2), ContainsToken(frozenset(hex_ids), "hex"))
    assert targets["c"].describe() == 'sample(16, temperature=0.7, top_k=5) contains {"a", "b"} (2 tokens)'


def test_a_hand_built_output_target_compiles() -> None:
    tree = s.Spec((s.DistDef("main", (s.Branch((s.TextItem("ab"),)),)),
                   s.TargetDef("t", s.OutputTest(s.Continuation("sample", 2, (s.SampleOption("top_k", 3),)), "==",
                                                 "He said"))))
    target = compile_spec(tree, make_vocab(), max_length=8).target("t")
    assert target == OutputTarget(2, Sampling.sample(top_k=3), Equals((ID["He"], ID[" said"]), "He said"))


@pytest.mark.parametrize(("output", "argmax"), [('greedy(1) == "ff"', 'argmax == "ff"'),
                                                ("greedy(1) contains hex", "argmax in hex")])
def test_greedy_one_is_the_argmax_target(output: str, argmax: str) -> None:
    spec = f"tokens hex = /^[0-9a-f]+$/\ndist main = BOS\ntarget o = {output}\ntarget x = {argmax}\n"
    targets = load_spec(spec, make_vocab(), max_length=64).targets
    assert isinstance(targets["o"], ArgmaxIs | ArgmaxIn)
    assert targets["o"] == targets["x"]


def test_tests_judge_tokens_and_decoded_text() -> None:
    vocab = make_vocab()
    rows = torch.tensor([[ID["He"], ID[" said"], ID["a"]], [ID["a"], ID["HELLO"], ID["ff"]]])
    assert TextTest("startswith", "He s").passes(rows, vocab).tolist() == [True, False]
    assert TextTest("contains", "Oj").passes(rows, vocab).tolist() == [False, False]
    assert TextTest("contains", "LOf").passes(rows, vocab).tolist() == [False, True]  # across two tokens
    assert TextTest("matches", "(?i)hello").passes(rows, vocab).tolist() == [False, True]
    assert ContainsToken(frozenset({ID["ff"]})).passes(rows, vocab).tolist() == [False, True]
    assert Equals((ID["He"], ID[" said"], ID["a"]), "He saida").passes(rows, vocab).tolist() == [True, False]


def test_a_catastrophic_pattern_on_generated_text_is_a_clear_error() -> None:
    slow = TextTest("matches", "(a|aa)+c")
    rows = torch.tensor([[ID["a"]] * 40])
    with pytest.raises(LowprobError, match="backtracks catastrophically"):
        slow.passes(rows, make_vocab())


def test_output_target_checks_its_own_fields() -> None:
    with pytest.raises(LowprobError, match="at least 1 token"):
        OutputTarget(0, Sampling.sample(), TextTest("contains", "a"))
    with pytest.raises(LowprobError, match="is 2 tokens, but the continuation has 3"):
        OutputTarget(3, Sampling.sample(), Equals((2, 3), "ab"))


def test_every_dist_must_fit_with_the_continuation() -> None:
    spec = 'dist short = BOS\ndist long = BOS "a" * 40\ntarget t = greedy(30) contains "a"\n'
    with pytest.raises(DslError, match="dist 'long' \\(41 tokens\\) followed by the 30 tokens greedy\\(30\\)"):
        load_spec(spec, make_vocab(), max_length=64)
    assert load_spec(spec, make_vocab(), max_length=71).target("t").describe() == "greedy(30) contains 'a'"
