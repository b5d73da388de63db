"""Hints for common syntax mistakes, found by replaying labelled bad examples (``match_examples``).

Each hint maps to small malformed specs that fail in the same parser state (and, where it matters,
on the same kind of token) as the mistake it describes; bracket, quote and count mistakes are
recognised from what the parser expected and the text before the error, as they happen anywhere.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lark import Tree
from lark.exceptions import UnexpectedInput, UnexpectedToken

MISSING_EQUALS = "write '=' between the name and its definition, as in: tokens hex = /^[0-9a-f]+$/"
STAR_WITHOUT_COUNT = "'*' repeats the item before it; give the number of copies, as in: hex * 8"
EQUALS_WITH_SET = "'==' takes one token (\"ff\" or #123); to test membership in a set write: argmax in SET"
BARE_TOKEN_ID = "write a token id with '#', as in: argmax == #123"
ARGMAX_COMPARISON = "compare the argmax with '==' (one token) or 'in' (a token set)"
WHERE_THEN_SET_OP = (
    "'where' filters everything to its left and ends the set expression; "
    "put the filtered set in parentheses, as in: (hex where len > 1) | caps"
)
FILTER_SYNTAX = (
    'a filter is len OP N, startswith "s", endswith "s" or matches /re/, combined with and, or, not and parentheses'
)
OUTPUT_TEST = ('an output event tests the continuation with == "text", startswith "text", contains "text", '
               'contains SET or matches /re/')
GREEDY_OPTIONS = "greedy(L) takes only the length; sampling options go in sample(L, temperature=T, top_k=K)"
OUTPUT_EQUALS_SET = "'==' compares the whole continuation with a text; to test for tokens of a set write: contains SET"
BARE_TOKEN_IN_SET = 'write explicit tokens in braces, as in: {"He", 17}'
SET_IN_DIST = 'a token set as one position of a dist goes in brackets, as in: [{"He", "She"}]'

COMMON_MISTAKES: dict[str, list[str]] = {
    MISSING_EQUALS: ["tokens hex /a/", "dist main BOS", 'target t argmax == "a"'],
    BARE_TOKEN_ID: ["target t = argmax == 17"],
    EQUALS_WITH_SET: [
        "target t = argmax == a",
        'target t = argmax == {"a"}',
        "target t = argmax == /a/",
    ],
    ARGMAX_COMPARISON: ['target t = argmax = "a"', 'target t = argmax "a"'],
    WHERE_THEN_SET_OP: [
        "tokens t = a where len > 1 | b",
        "tokens t = a where len > 1 & b",
        "tokens t = a where len > 1 - b",
    ],
    OUTPUT_TEST: ['target t = sample(8) in {"a"}', 'target t = sample(8) contain "a"',
                  'target t = greedy(2) endswith "a"'],
    GREEDY_OPTIONS: ["target t = greedy(4, temperature=0.5)"],
    OUTPUT_EQUALS_SET: ["target t = greedy(4) == a", 'target t = sample(4) == {"a"}', "target t = greedy(4) == /a/"],
    FILTER_SYNTAX: [
        "tokens t = a where b",
        "tokens t = a where len 2",
        "tokens t = a where len > b",
        "tokens t = a where not b",
        "tokens t = a where len > 1 and b",
    ],
}
"""Hint → malformed examples that trigger it."""

# lark compares parser states including stack depth, and the first statement sits one level
# shallower than the rest: replay every example both alone and after another statement.
_EXAMPLES = {hint: [*bad, *(f"tokens x = vocab()\n{b}" for b in bad)] for hint, bad in COMMON_MISTAKES.items()}

_CLOSERS = {"RSQB": "]", "RBRACE": "}", "RPAR": ")"}


def hint_for(error: UnexpectedInput, parse: Callable[[str], Tree[Any]], text: str) -> str | None:
    """The hint for a syntax error, or ``None`` when no known mistake matches."""
    if isinstance(error, UnexpectedToken):
        expected = set(error.expected)
        if error.token.type in {"STRING", "NUMBER"} and "LBRACE" in expected:
            return BARE_TOKEN_IN_SET
        if error.token.type in {"LBRACE", "REGEX"} and "LSQB" in expected:
            return SET_IN_DIST
        before = error.token.end_pos if error.token.type == "$END" else error.token.start_pos
        if expected == {"NUMBER"} and text[:before].rstrip().endswith("*"):
            return STAR_WITHOUT_COUNT
        label = error.match_examples(parse, _EXAMPLES, token_type_match_fallback=True)
        if label is not None:
            return label
        closers = [c for name, c in _CLOSERS.items() if name in expected]
        if closers and error.token.type in {"$END", "TOKENS", "DIST", "TARGET"}:
            return f"a bracket is not closed: add {closers[0]!r}"
        return None
    pos = error.pos_in_stream or 0
    char, following = text[pos], text[pos + 1 : pos + 2]
    if char == "/" and following == "/":
        return "a regular expression needs at least one character; for every token use vocab()"
    if char == '"':
        return 'close the string with " on the same line (write a newline inside it as \\n)'
    if char == "/":
        return "close the regular expression with / on the same line (write / inside it as \\/)"
    return None
