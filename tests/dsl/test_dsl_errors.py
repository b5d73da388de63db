"""Every error kind, with its exact message: position, offending line, caret and hint."""

# ruff: noqa: E501  (the expected messages are kept verbatim, one source line per message line)

from __future__ import annotations

import pytest
from dsl_vocab import RESOLVERS, make_vocab

from lowprob.core.errors import LowprobError
from lowprob.dsl import DslError, load_spec

# (case id, spec text, max_length, the full message)
CASES = [
    pytest.param(
        "tokens hex /^[0-9a-f]+$/",
        None,
        "<spec>:1:12: error: unexpected regular expression /^[0-9a-f]+$/; expected '='\n"
        "    tokens hex /^[0-9a-f]+$/\n"
        "               ^\n"
        "  hint: write '=' between the name and its definition, as in: tokens hex = /^[0-9a-f]+$/",
        id="missing_equals",
    ),
    pytest.param(
        'dist main = BOS "He said',
        None,
        "<spec>:1:17: error: unterminated string\n"
        '    dist main = BOS "He said\n'
        "                    ^\n"
        '  hint: close the string with " on the same line (write a newline inside it as \\n)',
        id="unterminated_string",
    ),
    pytest.param(
        "tokens hex = /^[0-9a-f]+$",
        None,
        "<spec>:1:14: error: unterminated regular expression\n"
        "    tokens hex = /^[0-9a-f]+$\n"
        "                 ^\n"
        "  hint: close the regular expression with / on the same line (write / inside it as \\/)",
        id="unterminated_regex",
    ),
    pytest.param(
        "tokens all = //",
        None,
        "<spec>:1:14: error: empty regular expression\n"
        "    tokens all = //\n"
        "                 ^\n"
        "  hint: a regular expression needs at least one character; for every token use vocab()",
        id="empty_regex",
    ),
    pytest.param(
        "dist main = BOS [hex",
        None,
        "<spec>:1:21: error: unexpected end of input; expected one of ']', 'where'\n"
        "    dist main = BOS [hex\n"
        "                        ^\n"
        "  hint: a bracket is not closed: add ']'",
        id="unclosed_bracket",
    ),
    pytest.param(
        'dist main = BOS ("He" | "She"\ntarget t = argmax == "ff"',
        None,
        "<spec>:2:1: error: unexpected 'target'; expected ')'\n"
        '    target t = argmax == "ff"\n'
        "    ^\n"
        "  hint: a bracket is not closed: add ')'",
        id="unclosed_paren",
    ),
    pytest.param(
        "tokens hex = /^[0-9a-f]+$/\ndist main = BOS hex *",
        None,
        "<spec>:2:22: error: unexpected end of input; expected a number\n"
        "    dist main = BOS hex *\n"
        "                         ^\n"
        "  hint: '*' repeats the item before it; give the number of copies, as in: hex * 8",
        id="star_without_count",
    ),
    pytest.param(
        "tokens hex = /^[0-9a-f]+$/\ntarget t = argmax == hex",
        None,
        "<spec>:2:22: error: unexpected name hex; expected one of a string, a token id (#N)\n"
        "    target t = argmax == hex\n"
        "                         ^\n"
        "  hint: '==' takes one token (\"ff\" or #123); to test membership in a set write: argmax in SET",
        id="equals_with_set",
    ),
    pytest.param(
        "target t = argmax == 17",
        None,
        "<spec>:1:22: error: unexpected number 17; expected one of a string, a token id (#N)\n"
        "    target t = argmax == 17\n"
        "                         ^\n"
        "  hint: write a token id with '#', as in: argmax == #123",
        id="bare_token_id",
    ),
    pytest.param(
        'target t = argmax = "ff"',
        None,
        "<spec>:1:19: error: unexpected '='; expected one of '==', 'in'\n"
        '    target t = argmax = "ff"\n'
        "                      ^\n"
        "  hint: compare the argmax with '==' (one token) or 'in' (a token set)",
        id="single_equals",
    ),
    pytest.param(
        'tokens t = /a/ where len > 1 | {"b"}',
        None,
        "<spec>:1:30: error: unexpected '|'; expected one of ')', ',', ']', 'and', 'dist', 'or', 'target', 'tokens', 'where'\n"
        '    tokens t = /a/ where len > 1 | {"b"}\n'
        "                                 ^\n"
        "  hint: 'where' filters everything to its left and ends the set expression; put the filtered set in parentheses, as in: (hex where len > 1) | caps",
        id="where_then_union",
    ),
    pytest.param(
        "tokens t = vocab() where short",
        None,
        "<spec>:1:26: error: unexpected name short; expected one of '(', 'endswith', 'len', 'matches', 'not', 'startswith'\n"
        "    tokens t = vocab() where short\n"
        "                             ^\n"
        '  hint: a filter is len OP N, startswith "s", endswith "s" or matches /re/, combined with and, or, not and parentheses',
        id="bad_filter",
    ),
    pytest.param(
        'tokens t = "He"',
        None,
        "<spec>:1:12: error: unexpected string \"He\"; expected one of '(', '{', a name, a regular expression\n"
        '    tokens t = "He"\n'
        "               ^\n"
        '  hint: write explicit tokens in braces, as in: {"He", 17}',
        id="bare_string_in_set",
    ),
    pytest.param(
        "tokens t = {1} ; {2}",
        None,
        "<spec>:1:16: error: unexpected character ';'\n    tokens t = {1} ; {2}\n                   ^",
        id="unexpected_character",
    ),
    pytest.param(
        'dist main = "\\q"',
        None,
        "<spec>:1:14: error: unknown escape '\\q' in a string\n"
        '    dist main = "\\q"\n'
        "                 ^\n"
        '  hint: the escapes are \\" \\\\ \\n \\t and \\xNN (two hex digits)',
        id="bad_escape",
    ),
    pytest.param(
        "tokens len = /a/",
        None,
        "<spec>:1:8: error: 'len' is a reserved word and cannot be used as a name\n"
        "    tokens len = /a/\n"
        "           ^\n"
        "  hint: reserved words: BOS, EOS, and, argmax, dist, endswith, in, len, matches, not, or, special, startswith, target, tokens, uniform, weighted, where",
        id="reserved_word",
    ),
    pytest.param(
        "dist main = BOS * 0",
        None,
        "<spec>:1:19: error: a repetition count must be a positive integer, got 0\n"
        "    dist main = BOS * 0\n"
        "                      ^",
        id="zero_repeat",
    ),
    pytest.param(
        "tokens t = {1.5}",
        None,
        "<spec>:1:13: error: a token id must be a non-negative integer, got 1.5\n"
        "    tokens t = {1.5}\n"
        "                ^",
        id="fractional_id",
    ),
    pytest.param(
        "tokens t = /a/\ntokens t = /b/",
        None,
        "<spec>:2:8: error: 't' is already defined on line 1\n"
        "    tokens t = /b/\n"
        "           ^\n"
        "  hint: every definition needs its own name",
        id="duplicate",
    ),
    pytest.param(
        "tokens t = hex\ntokens hex = /^[0-9a-f]+$/",
        None,
        "<spec>:1:12: error: unknown token set 'hex'; token sets defined so far: (none)\n"
        "    tokens t = hex\n"
        "               ^\n"
        "  hint: 'hex' is defined later, on line 2; a definition can only use the ones above it",
        id="forward_reference",
    ),
    pytest.param(
        "tokens hex = /^[0-9a-f]+$/\ntokens t = hexx",
        None,
        "<spec>:2:12: error: unknown token set 'hexx'; token sets defined so far: hex\n"
        "    tokens t = hexx\n"
        "               ^",
        id="unknown_set",
    ),
    pytest.param(
        "dist main = BOS He",
        None,
        "<spec>:1:17: error: unknown token set or dist 'He'; token sets and dists defined so far: (none)\n"
        "    dist main = BOS He\n"
        "                    ^\n"
        "  hint: to use the text 'He', put it in quotes: \"He\"",
        id="unknown_dist_item",
    ),
    pytest.param(
        "dist main = BOS\ntokens t = main & vocab()",
        None,
        "<spec>:2:12: error: 'main' is a dist, but a token set is needed here\n"
        "    tokens t = main & vocab()\n"
        "               ^\n"
        "  hint: a dist is a whole sequence; define the tokens with `tokens NAME = ...` and use that name",
        id="dist_as_set",
    ),
    pytest.param(
        'target hit = argmax == "ff"\ndist main = BOS hit',
        None,
        "<spec>:2:17: error: 'hit' is a target, but a token set or dist is needed here\n"
        "    dist main = BOS hit\n"
        "                    ^\n"
        "  hint: targets cannot be used inside other definitions",
        id="target_in_dist",
    ),
    pytest.param(
        'tokens t = frequency("stdlib")',
        None,
        "<spec>:1:12: error: unknown function 'frequency'; known functions: freq, nothing, top, vocab\n"
        '    tokens t = frequency("stdlib")\n'
        "               ^\n"
        "  hint: token-set functions come from plugins",
        id="unknown_function",
    ),
    pytest.param(
        'tokens t = freq("web")',
        None,
        "<spec>:1:12: error: freq() failed: no frequency table 'web'; try 'stdlib'\n"
        '    tokens t = freq("web")\n'
        "               ^",
        id="resolver_error",
    ),
    pytest.param(
        "tokens t = /xyz/",
        None,
        "<spec>:1:12: error: empty token set: /xyz/ matches no token\n"
        "    tokens t = /xyz/\n"
        "               ^\n"
        "  hint: a token set must contain at least one token",
        id="empty_regex_match",
    ),
    pytest.param(
        "tokens t = /^[a-f]$/ & /^[0-9]$/",
        None,
        "<spec>:1:22: error: empty token set: the intersection is empty\n"
        "    tokens t = /^[a-f]$/ & /^[0-9]$/\n"
        "                         ^\n"
        "  hint: a token set must contain at least one token",
        id="empty_intersection",
    ),
    pytest.param(
        "tokens t = {}",
        None,
        "<spec>:1:12: error: empty token set: {} has no entries\n"
        "    tokens t = {}\n"
        "               ^\n"
        "  hint: a token set must contain at least one token",
        id="empty_explicit",
    ),
    pytest.param(
        "tokens t = /^[a-f]$/ where len > 1",
        None,
        "<spec>:1:22: error: empty token set: no token passes the filter\n"
        "    tokens t = /^[a-f]$/ where len > 1\n"
        "                         ^\n"
        "  hint: a token set must contain at least one token",
        id="empty_where",
    ),
    pytest.param(
        "tokens t = nothing()",
        None,
        "<spec>:1:12: error: empty token set: nothing() returned no tokens\n"
        "    tokens t = nothing()\n"
        "               ^\n"
        "  hint: a token set must contain at least one token",
        id="empty_resolver",
    ),
    pytest.param(
        'tokens t = {"Hi"}',
        None,
        '<spec>:1:13: error: "Hi" is not a token\n'
        '    tokens t = {"Hi"}\n'
        "                ^\n"
        "  hint: the vocabulary cannot encode it: character 'H' at offset 0 has no token in this vocabulary",
        id="not_a_token",
    ),
    pytest.param(
        'tokens t = {"He said"}',
        None,
        '<spec>:1:13: error: "He said" is not a single token\n'
        '    tokens t = {"He said"}\n'
        "                ^\n"
        '  hint: it tokenizes as "He" " said" (2 tokens)',
        id="not_single_token",
    ),
    pytest.param(
        'target t = argmax == "He said"',
        None,
        '<spec>:1:22: error: "He said" is not a single token\n'
        '    target t = argmax == "He said"\n'
        "                         ^\n"
        '  hint: it tokenizes as "He" " said" (2 tokens)',
        id="target_not_single",
    ),
    pytest.param(
        "target t = argmax == #999",
        None,
        "<spec>:1:22: error: token id 999 is outside the vocabulary (ids 0..24)\n"
        "    target t = argmax == #999\n"
        "                         ^",
        id="id_out_of_range",
    ),
    pytest.param(
        'dist main = BOS "Hi"',
        None,
        "<spec>:1:17: error: cannot encode \"Hi\": character 'H' at offset 0 has no token in this vocabulary\n"
        '    dist main = BOS "Hi"\n'
        "                    ^",
        id="cannot_encode",
    ),
    pytest.param(
        'dist main = BOS ""',
        None,
        "<spec>:1:17: error: the empty string has no tokens\n"
        '    dist main = BOS ""\n'
        "                    ^\n"
        "  hint: remove it, or write the text the position should hold",
        id="empty_literal",
    ),
    pytest.param(
        'tokens t = {"He": 1, "She": 0}',
        None,
        "<spec>:1:22: error: a weight must be positive and finite, got 0\n"
        '    tokens t = {"He": 1, "She": 0}\n'
        "                         ^\n"
        "  hint: to leave it out, delete it instead of giving it weight 0",
        id="zero_weight",
    ),
    pytest.param(
        'dist main = ("He" @ -0.5 | "She" @ 1.5)',
        None,
        "<spec>:1:14: error: a weight must be positive and finite, got -0.5\n"
        '    dist main = ("He" @ -0.5 | "She" @ 1.5)\n'
        "                 ^",
        id="negative_alt_weight",
    ),
    pytest.param(
        'tokens t = {"He": 1, "She"}',
        None,
        "<spec>:1:22: error: either every entry of {...} has a weight or none does\n"
        '    tokens t = {"He": 1, "She"}\n'
        "                         ^\n"
        '  hint: write {"He": 0.5, "She": 0.5} or {"He", "She"}',
        id="mixed_weights",
    ),
    pytest.param(
        'dist main = ("He" @ 2 | "She")',
        None,
        "<spec>:1:25: error: either every alternative has a weight ('@ w') or none does\n"
        '    dist main = ("He" @ 2 | "She")\n'
        "                            ^\n"
        '  hint: write ("He" @ 0.3 | "She" @ 0.7) or ("He" | "She") for equal weights',
        id="mixed_alt_weights",
    ),
    pytest.param(
        'dist main = BOS ("He" | "She" " said")',
        None,
        "<spec>:1:17: error: alternatives must all have the same number of tokens, got 1, 2\n"
        '    dist main = BOS ("He" | "She" " said")\n'
        "                    ^\n"
        '  hint: "He" is 1 token; "She" " said" is 2 tokens',
        id="unequal_alternatives",
    ),
    pytest.param(
        "dist main = BOS uniform(vocab()) * 100 EOS",
        64,
        "<spec>:1:34: error: this repetition is 100 tokens long, more than the maximum length 64\n"
        "    dist main = BOS uniform(vocab()) * 100 EOS\n"
        "                                     ^\n"
        "  hint: max_length is the model's context size",
        id="too_long",
    ),
    pytest.param(
        'dist main = BOS "He said:" * 20 uniform(vocab()) * 20 EOS',
        64,
        "<spec>:1:50: error: the sequence up to here is 81 tokens long, more than the maximum length 64\n"
        '    dist main = BOS "He said:" * 20 uniform(vocab()) * 20 EOS\n'
        "                                                     ^\n"
        "  hint: max_length is the model's context size",
        id="too_long_total",
    ),
    pytest.param(
        "tokens t = /^[a-f+$/",
        None,
        "<spec>:1:14: error: invalid regular expression: unterminated character set\n"
        "    tokens t = /^[a-f+$/\n"
        "                 ^",
        id="invalid_regex",
    ),
    pytest.param(
        "tokens t = vocab() where matches /a(b/",
        None,
        "<spec>:1:36: error: invalid regular expression: missing ), unterminated subpattern\n"
        "    tokens t = vocab() where matches /a(b/\n"
        "                                       ^",
        id="invalid_matches",
    ),
    pytest.param(
        'tokens t = top(0, freq("stdlib"))',
        None,
        "<spec>:1:16: error: top() needs a count of at least 1, got 0\n"
        '    tokens t = top(0, freq("stdlib"))\n'
        "                   ^\n"
        '  hint: top takes a count and a token set, as in top(64, freq("stdlib"))',
        id="top_zero",
    ),
    pytest.param(
        "tokens t = top(5)",
        None,
        "<spec>:1:12: error: top() needs 2 arguments, a count and a token set; got 1\n"
        "    tokens t = top(5)\n"
        "               ^\n"
        '  hint: top takes a count and a token set, as in top(64, freq("stdlib"))',
        id="top_arity",
    ),
    pytest.param(
        "tokens hex = /^[0-9a-f]+$/\ndist main = weighted(hex, hex)",
        None,
        "<spec>:2:27: error: weighted(S, T) needs T to be a weighted set\n"
        "    dist main = weighted(hex, hex)\n"
        "                              ^\n"
        "  hint: T's weights become the probabilities; for equal ones use uniform(S)",
        id="weighted_needs_weights",
    ),
    pytest.param(
        'tokens t = freq("stdlib") | {"He"}',
        None,
        "<spec>:1:27: error: cannot take the union of a weighted and an unweighted set\n"
        '    tokens t = freq("stdlib") | {"He"}\n'
        "                              ^\n"
        "  hint: give both sides weights (they add up) or neither",
        id="union_weighted_unweighted",
    ),
    pytest.param(
        'dist main = special("SEP") "a"',
        None,
        "<spec>:1:13: error: unknown special token 'SEP'; this vocabulary's special tokens: BOS, EOS, PAD\n"
        '    dist main = special("SEP") "a"\n'
        "                ^",
        id="unknown_special",
    ),
    pytest.param(
        'dist main = BOS {"He", "She"}',
        None,
        "<spec>:1:17: error: unexpected '{'; expected one of '(', ')', '*', '@', '[', '|', a name, a string\n"
        '    dist main = BOS {"He", "She"}\n'
        "                    ^\n"
        '  hint: a token set as one position of a dist goes in brackets, as in: [{"He", "She"}]',
        id="set_in_dist",
    ),
]


@pytest.mark.parametrize(("text", "max_length", "message"), CASES)
def test_error_message(text: str, max_length: int | None, message: str) -> None:
    with pytest.raises(DslError) as caught:
        load_spec(text, make_vocab(), RESOLVERS, max_length=max_length)
    assert str(caught.value) == message


def test_error_attributes() -> None:
    with pytest.raises(DslError) as caught:
        load_spec('tokens a = /a/\ntokens b = {"Hi"}', make_vocab(), filename="demo.lp")
    error = caught.value
    assert isinstance(error, LowprobError)
    assert (error.filename, error.line, error.column) == ("demo.lp", 2, 13)
    assert error.message == '"Hi" is not a token'
    assert error.hint is not None and error.hint.startswith("the vocabulary cannot encode it")
    assert str(error).startswith("demo.lp:2:13: error: ")


def test_caret_keeps_tabs() -> None:
    with pytest.raises(DslError) as caught:
        load_spec("\ttokens t =\t/xyz/", make_vocab())
    assert str(caught.value).split("\n")[1:3] == ["    \ttokens t =\t/xyz/", "    \t          \t^"]


@pytest.mark.parametrize(
    ("text", "name", "message"),
    [
        (
            'dist a = "a"\ndist b = "b"',
            None,
            "<spec>: error: the spec defines 2 dists and none is named 'main'; dists: a, b",
        ),
        ('dist a = "a"', "b", "<spec>: error: no dist named 'b'; dists: a"),
        ("tokens t = /a/", None, "<spec>: error: the spec defines no dist; dists: (none)"),
    ],
)
def test_choosing_a_missing_distribution(text: str, name: str | None, message: str) -> None:
    compiled = load_spec(text, make_vocab())
    with pytest.raises(DslError) as caught:
        compiled.distribution(name)
    assert str(caught.value) == message


def test_choosing_a_missing_target() -> None:
    compiled = load_spec('target a = argmax == "a"\ntarget b = argmax == "b"', make_vocab())
    with pytest.raises(DslError, match="defines 2 targets and none is named 'main'; targets: a, b"):
        compiled.target()


def test_resolver_returning_bad_weights_is_located() -> None:
    import torch

    from lowprob.core.token_set import TokenSet

    def nan_weights(vocab, *args):
        return TokenSet(torch.tensor([2, 3]), torch.tensor([1.0, float("nan")], dtype=torch.float64))

    def not_a_set(vocab, *args):
        return [2, 3]

    resolvers = {"nan_weights": nan_weights, "not_a_set": not_a_set}
    with pytest.raises(DslError) as caught:
        load_spec("tokens t = nan_weights()", make_vocab(), resolvers)
    assert caught.value.message == "nan_weights() failed: token set: weights must be finite and positive"
    with pytest.raises(DslError) as caught:
        load_spec('tokens t = {2} | not_a_set(1, 2.5, "x", vocab())', make_vocab(), resolvers)
    assert caught.value.message == "not_a_set() returned list, not a TokenSet"
    assert caught.value.column == 18
