"""Text → syntax tree: an LALR parser built lazily from the packaged grammar; errors: DslError."""

from __future__ import annotations

import math
import re
from functools import cache
from importlib.resources import files
from typing import Any

from lark import Lark, Token, Tree
from lark.exceptions import UnexpectedCharacters, UnexpectedInput, UnexpectedToken
from lark.lexer import PatternStr

from lowprob.dsl import syntax as s
from lowprob.dsl.errors import DslError, SourceText, shorten
from lowprob.dsl.hints import hint_for

MAX_SPEC_CHARS = 100_000
"""Longest spec text parsed (parsing costs about 10 µs per token; this keeps any spec under a second or two)."""
MAX_NUMBER_CHARS = 100
"""Longest number literal."""

SAMPLE_OPTIONS = {"temperature": "T (a positive number)", "top_k": "K (a positive integer)"}
"""The options ``sample(L, ...)`` takes, with what each value must be."""
_Test = tuple[s.OutputOperator, str | s.SetExpr, dict[str, int]]
"""An output test before its continuation is attached: operator, operand and where it is written."""
_ESCAPES = {'"': '"', "\\": "\\", "n": "\n", "t": "\t"}
_INTEGER = re.compile(r"[+-]?\d+")
_SURROGATE = re.compile("[\ud800-\udfff]")
_NONZERO_MANTISSA = re.compile(r"[+-]?0*\.?0*[1-9]")
_TERMINAL_NAMES = {
    "NAME": "a name",
    "STRING": "a string",
    "REGEX": "a regular expression",
    "NUMBER": "a number",
    "TOKEN_ID": "a token id (#N)",
    "COMPARE": "a comparison (==, !=, <, <=, >, >=)",
    "$END": "end of input",
}
_TOKEN_KINDS = {
    "NAME": "name",
    "STRING": "string",
    "REGEX": "regular expression",
    "NUMBER": "number",
    "TOKEN_ID": "token id",
    "COMPARE": "comparison",
}


def grammar_text() -> str:
    """The grammar, read from package data (``lowprob/dsl/grammar.lark``)."""
    return files("lowprob.dsl").joinpath("grammar.lark").read_text(encoding="utf-8")


@cache
def _lark() -> Lark:
    return Lark(grammar_text(), parser="lalr", propagate_positions=True, maybe_placeholders=True)


def parse(text: str, filename: str = "<spec>") -> s.Spec:
    """Parse spec text into a :class:`Spec`; every problem is a DslError with its position.

    A leading byte-order mark is ignored. Too long a text, characters that are not text (lone surrogates,
    which is how undecodable bytes reach Python) and nesting deeper than :data:`syntax.MAX_NESTING`
    are errors, checked before anything that could take long or recurse.
    """
    text = text.removeprefix("\ufeff")
    source = SourceText(text, filename)
    if len(text) > MAX_SPEC_CHARS:
        raise DslError(
            f"the spec is {len(text)} characters long, more than the limit of {MAX_SPEC_CHARS}",
            filename=filename,
            hint="move large token lists into a token-set plugin (a resolver) and call it by name",
        )
    bad = _SURROGATE.search(text)
    if bad is not None:
        code = ord(bad.group())
        what = f"byte 0x{code - 0xDC00:02x}" if code >= 0xDC80 else f"lone surrogate U+{code:04X}"
        raise source.error_at_offset(bad.start(), f"{what} is not valid UTF-8 text", "write the spec as UTF-8")
    try:
        tree = _lark().parse(text)
    except UnexpectedInput as exc:
        raise _syntax_error(exc, source) from None
    spec = s.Spec(tuple(_ToSyntax(source).transform(tree)), source=text, filename=filename, line=1, column=1)
    deep = s.too_deep(spec)
    if deep is not None:
        raise source.error(
            deep,
            f"nested too deeply: more than {s.MAX_NESTING} levels of parentheses, brackets and operands",
            "give the inner parts names (tokens NAME = ... or dist NAME = ...) and use the names",
        )
    return spec


def _syntax_error(exc: UnexpectedInput, source: SourceText) -> DslError:
    hint = hint_for(exc, _lark().parse, source.text)
    if isinstance(exc, UnexpectedCharacters):
        pos = exc.pos_in_stream or 0
        char = source.text[pos]
        if char == "/" and source.text[pos + 1 : pos + 2] == "/":
            message = "empty regular expression"
        else:
            message = {'"': "unterminated string", "/": "unterminated regular expression"}.get(
                char, f"unexpected character {char!r}"
            )
        return source.error_at(exc.line, exc.column, message, hint)
    assert isinstance(exc, UnexpectedToken)
    token = exc.token
    line, column = token.line, token.column
    if token.type == "$END":
        line, column = token.end_line, token.end_column
    if line is None or line < 1:  # nothing before the error: report at the start
        line, column = 1, 1
    expected = sorted({_describe_terminal(name) for name in exc.expected})
    listing = expected[0] if len(expected) == 1 else "one of " + ", ".join(expected)
    return source.error_at(line, column, f"unexpected {_describe_token(token)}; expected {listing}", hint)


def _describe_terminal(name: str) -> str:
    if name in _TERMINAL_NAMES:
        return _TERMINAL_NAMES[name]
    pattern = _lark().get_terminal(name).pattern
    return f"'{pattern.value}'" if isinstance(pattern, PatternStr) else name


def _describe_token(token: Token) -> str:
    if token.type == "$END":
        return "end of input"
    if token.type in _TOKEN_KINDS:
        return f"{_TOKEN_KINDS[token.type]} {shorten(token.value)}"
    return f"'{shorten(token.value)}'"


def decode_string(token: Token, source: SourceText) -> str:
    """The value of a STRING token: quotes removed, escapes \\" \\\\ \\n \\t \\xNN resolved."""
    body, out, i = token.value[1:-1], [], 0
    while i < len(body):
        c = body[i]
        if c != "\\":
            out.append(c)
            i += 1
            continue
        nxt = body[i + 1]
        if nxt in _ESCAPES:
            out.append(_ESCAPES[nxt])
            i += 2
        elif nxt == "x" and re.fullmatch(r"[0-9a-fA-F]{2}", body[i + 2 : i + 4]):
            out.append(chr(int(body[i + 2 : i + 4], 16)))
            i += 4
        else:
            raise source.error_at(
                token.line,
                (token.column or 1) + 1 + i,
                f"unknown escape '\\{nxt}' in a string",
                'the escapes are \\" \\\\ \\n \\t and \\xNN (two hex digits)',
            )
    return "".join(out)


class _ToSyntax:
    """Builds syntax nodes from lark's tree; each node is positioned at a token of its construct."""

    def __init__(self, source: SourceText) -> None:
        self.source = source

    def transform(self, tree: Tree[Token]) -> Any:
        """The syntax of ``tree``, built bottom-up without recursion (so any depth is safe)."""
        order, stack = [], [tree]
        while stack:  # pre-order; reversed, every node comes after all of its children
            node = stack.pop()
            order.append(node)
            stack.extend(c for c in node.children if isinstance(c, Tree))
        built: dict[int, Any] = {}
        for node in reversed(order):
            args = [built.pop(id(c)) if isinstance(c, Tree) else c for c in node.children]
            built[id(node)] = getattr(self, node.data)(*args)
        return built[id(tree)]

    def _number(self, token: Token) -> int | float:
        """A NUMBER literal's value; one too long, too large for a float or rounding to 0 is an error."""
        text = token.value
        problem = None
        if len(text) > MAX_NUMBER_CHARS:
            problem = f"a number literal of {len(text)} characters is too long"
        elif math.isinf(float(text)):
            problem = f"the number {shorten(text)} is too large (the largest is about 1.8e308)"
        elif float(text) == 0 and _NONZERO_MANTISSA.match(text):
            problem = f"the number {shorten(text)} is too small: it rounds to 0"
        if problem is not None:
            raise self.source.error_at(token.line, token.column, problem)
        return int(text) if _INTEGER.fullmatch(text) else float(text)

    @staticmethod
    def _at(token: Token | s.Node) -> dict[str, int]:
        return {"line": token.line or 0, "column": token.column or 0}

    def _name(self, token: Token) -> str:
        if token.value in s.KEYWORDS:
            raise self.source.error_at(
                token.line,
                token.column,
                f"'{token.value}' is a reserved word and cannot be used as a name",
                "reserved words: " + ", ".join(sorted(s.KEYWORDS)),
            )
        return token.value

    def _string(self, token: Token) -> str:
        return decode_string(token, self.source)

    def _integer(self, token: Token, what: str, minimum: int) -> int:
        value = self._number(token)
        if not isinstance(value, int) or value < minimum:
            bound = "a positive" if minimum > 0 else "a non-negative"
            raise self.source.error_at(token.line, token.column, f"{what} must be {bound} integer, got {token.value}")
        return value

    # ---- statements
    def start(self, *statements: s.Statement) -> list[s.Statement]:
        return list(statements)

    def tokens_def(self, name: Token, expr: s.SetExpr) -> s.TokensDef:
        return s.TokensDef(self._name(name), expr, **self._at(name))

    def dist_def(self, name: Token, branches: tuple[s.Branch, ...]) -> s.DistDef:
        return s.DistDef(self._name(name), branches, **self._at(name))

    def target_string(self, name: Token, token: Token) -> s.TargetDef:
        return s.TargetDef(self._name(name), s.TargetIs(self._string(token), **self._at(token)), **self._at(name))

    def target_id(self, name: Token, token: Token) -> s.TargetDef:
        if len(token.value) > MAX_NUMBER_CHARS:
            problem = f"a token id of {len(token.value)} characters is too long"
            raise self.source.error_at(token.line, token.column, problem)
        return s.TargetDef(self._name(name), s.TargetIs(int(token.value[1:]), **self._at(token)), **self._at(name))

    def target_in(self, name: Token, expr: s.SetExpr) -> s.TargetDef:
        return s.TargetDef(self._name(name), s.TargetIn(expr, **self._at(expr)), **self._at(name))

    def target_output(self, name: Token, continuation: s.Continuation, test: _Test) -> s.TargetDef:
        op, operand, at = test
        return s.TargetDef(self._name(name), s.OutputTest(continuation, op, operand, **at), **self._at(name))

    # ---- output events
    def greedy(self, keyword: Token, length: Token) -> s.Continuation:
        return s.Continuation("greedy", self._length(length), **self._at(keyword))

    def sample(self, keyword: Token, length: Token, *options: s.SampleOption) -> s.Continuation:
        seen: set[str] = set()
        for option in options:
            if option.name in seen:
                raise self.source.error(option, f"sample() option {option.name!r} is given twice")
            seen.add(option.name)
        return s.Continuation("sample", self._length(length), options, **self._at(keyword))

    def _length(self, token: Token) -> int:
        return self._integer(token, "a continuation length", minimum=1)

    def sample_option(self, name: Token, value: Token) -> s.SampleOption:
        if name.value not in SAMPLE_OPTIONS:
            raise self.source.error_at(
                name.line, name.column, f"unknown sample() option {name.value!r}",
                "the options are " + " and ".join(f"{k}={v}" for k, v in SAMPLE_OPTIONS.items()))
        number = self._number(value)
        if name.value == "top_k":
            number = self._integer(value, "top_k", minimum=1)
        elif not number > 0:
            raise self.source.error_at(value.line, value.column, f"the temperature must be positive, got {value.value}",
                                       "temperature=1 samples from the model as it is; use greedy(L) for the argmax")
        return s.SampleOption(name.value, number, **self._at(name))

    def output_text(self, op: Token, text: Token) -> _Test:
        return op.value, self._string(text), self._at(op)

    def output_set(self, op: Token, expr: s.SetExpr) -> _Test:
        return "contains", expr, self._at(op)

    def output_regex(self, op: Token, regex: Token) -> _Test:
        return "matches", regex.value[1:-1], self._at(regex)

    # ---- token sets
    def where(self, expr: s.SetExpr, keyword: Token, condition: s.Filter) -> s.Where:
        return s.Where(expr, condition, **self._at(keyword))

    def set_op(self, left: s.SetExpr, op: Token, right: s.SetExpr) -> s.SetOp:
        return s.SetOp(op.value, left, right, **self._at(op))

    def set_ref(self, name: Token) -> s.SetRef:
        return s.SetRef(self._name(name), **self._at(name))

    def regex_set(self, token: Token) -> s.RegexSet:
        return s.RegexSet(token.value[1:-1], **self._at(token))

    def explicit_set(self, brace: Token, *entries: s.SetEntry | None) -> s.ExplicitSet:
        return s.ExplicitSet(tuple(e for e in entries if e is not None), **self._at(brace))

    def set_entry(self, token: Token, weight: Token | None) -> s.SetEntry:
        value = self._string(token) if token.type == "STRING" else self._integer(token, "a token id", minimum=0)
        return s.SetEntry(value, None if weight is None else self._number(weight), **self._at(token))

    def call(self, name: Token, *args: s.CallArg | None) -> s.SetCall:
        return s.SetCall(self._name(name), tuple(a for a in args if a is not None), **self._at(name))

    def number_arg(self, token: Token) -> s.NumberArg:
        return s.NumberArg(self._number(token), **self._at(token))

    def string_arg(self, token: Token) -> s.StringArg:
        return s.StringArg(self._string(token), **self._at(token))

    # ---- filters
    def bool_filter(self, left: s.Filter, op: Token, right: s.Filter) -> s.BoolFilter:
        return s.BoolFilter(op.value, left, right, **self._at(op))

    def not_filter(self, keyword: Token, operand: s.Filter) -> s.NotFilter:
        return s.NotFilter(operand, **self._at(keyword))

    def len_filter(self, keyword: Token, op: Token, value: Token) -> s.LenFilter:
        return s.LenFilter(op.value, self._number(value), **self._at(keyword))

    def affix_filter(self, keyword: Token, text: Token) -> s.AffixFilter:
        return s.AffixFilter(keyword.value, self._string(text), **self._at(keyword))

    def matches_filter(self, _keyword: Token, regex: Token) -> s.MatchesFilter:
        return s.MatchesFilter(regex.value[1:-1], **self._at(regex))

    # ---- distributions
    def alternatives(self, *parts: s.Branch | Token) -> tuple[s.Branch, ...]:
        return tuple(p for p in parts if isinstance(p, s.Branch))

    def branch(self, *parts: s.Item | Token | None) -> s.Branch:
        *items, weight = parts
        return s.Branch(
            tuple(items),
            None if weight is None else self._number(weight),
            **self._at(items[0]),
        )

    def repeat(self, item: s.Item, star: Token, count: Token) -> s.Repeat:
        return s.Repeat(item, self._integer(count, "a repetition count", minimum=1), **self._at(star))

    def literal(self, token: Token) -> s.TextItem:
        return s.TextItem(self._string(token), **self._at(token))

    def named_special(self, token: Token) -> s.SpecialItem:
        return s.SpecialItem(token.value, **self._at(token))

    def special(self, keyword: Token, name: Token) -> s.SpecialItem:
        return s.SpecialItem(self._string(name), **self._at(keyword))

    def name_item(self, name: Token) -> s.NameItem:
        return s.NameItem(self._name(name), **self._at(name))

    def set_item(self, bracket: Token, expr: s.SetExpr) -> s.SetItem:
        return s.SetItem(expr, **self._at(bracket))

    def uniform_item(self, keyword: Token, expr: s.SetExpr) -> s.UniformItem:
        return s.UniformItem(expr, **self._at(keyword))

    def weighted_item(self, keyword: Token, expr: s.SetExpr, weights: s.SetExpr) -> s.WeightedItem:
        return s.WeightedItem(expr, weights, **self._at(keyword))

    def group(self, paren: Token, branches: tuple[s.Branch, ...]) -> s.Group:
        return s.Group(branches, **self._at(paren))
