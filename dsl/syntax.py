"""Syntax tree of a spec: frozen dataclasses that keep where each node starts in the source.

Positions (``line``, ``column``, 1-based) are keyword-only and excluded from equality, so two trees
compare equal when they say the same thing, wherever it was written.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from typing import Literal as TypingLiteral

KEYWORDS = frozenset(
    {
        "tokens",
        "dist",
        "target",
        "argmax",
        "in",
        "where",
        "and",
        "or",
        "not",
        "len",
        "startswith",
        "endswith",
        "matches",
        "BOS",
        "EOS",
        "special",
        "uniform",
        "weighted",
    }
)
"""Reserved words: they cannot name a definition."""

MAX_NESTING = 50
"""Deepest nesting of constructs (parentheses, brackets, operands) a spec may have.

Long chains (``a | b | c ...``, ``x * 2 * 3``, ``not not p``) do not nest: they are handled iteratively.
"""


@dataclass(frozen=True)
class Node:
    """Base of every syntax node: its 1-based source position (0 when built by hand)."""

    line: int = field(default=0, compare=False, kw_only=True)
    column: int = field(default=0, compare=False, kw_only=True)


# ---- token-set expressions


@dataclass(frozen=True)
class SetRef(Node):
    """A reference to an earlier ``tokens`` definition."""

    name: str


@dataclass(frozen=True)
class RegexSet(Node):
    """``/pattern/``: tokens whose string contains a match of ``pattern`` (the text in slashes)."""

    pattern: str


@dataclass(frozen=True)
class SetEntry(Node):
    """One entry of ``{...}``: a token string or a token id, with an optional weight."""

    token: str | int
    weight: int | float | None = None


@dataclass(frozen=True)
class ExplicitSet(Node):
    """``{"He", 17}`` or ``{"He": 0.5, "She": 0.5}``."""

    entries: tuple[SetEntry, ...]


@dataclass(frozen=True)
class NumberArg(Node):
    """A number passed to a function."""

    value: int | float


@dataclass(frozen=True)
class StringArg(Node):
    """A string passed to a function."""

    value: str


@dataclass(frozen=True)
class SetCall(Node):
    """``name(args)``: a built-in (``vocab``, ``top``) or an injected token-set resolver."""

    name: str
    args: tuple[CallArg, ...] = ()


SetOperator = TypingLiteral["|", "&", "-"]


@dataclass(frozen=True)
class SetOp(Node):
    """``left | right`` (union), ``left & right`` (intersection), ``left - right`` (difference)."""

    op: SetOperator
    left: SetExpr
    right: SetExpr


@dataclass(frozen=True)
class Where(Node):
    """``expr where filter``: the tokens of ``expr`` whose string passes ``filter``."""

    expr: SetExpr
    filter: Filter


SetExpr = SetRef | RegexSet | ExplicitSet | SetCall | SetOp | Where
CallArg = NumberArg | StringArg | SetExpr

# ---- filters


Comparison = TypingLiteral["==", "!=", "<=", ">=", "<", ">"]


@dataclass(frozen=True)
class LenFilter(Node):
    """``len OP N``: compares the token string's length in characters."""

    op: Comparison
    value: int | float


@dataclass(frozen=True)
class AffixFilter(Node):
    """``startswith "s"`` or ``endswith "s"``."""

    kind: TypingLiteral["startswith", "endswith"]
    text: str


@dataclass(frozen=True)
class MatchesFilter(Node):
    """``matches /pattern/``: the token string contains a match (positioned at the regex)."""

    pattern: str


@dataclass(frozen=True)
class NotFilter(Node):
    """``not filter``."""

    operand: Filter


@dataclass(frozen=True)
class BoolFilter(Node):
    """``left and right`` or ``left or right``."""

    op: TypingLiteral["and", "or"]
    left: Filter
    right: Filter


Filter = LenFilter | AffixFilter | MatchesFilter | NotFilter | BoolFilter

# ---- distribution items


@dataclass(frozen=True)
class TextItem(Node):
    """A literal string, tokenized by the vocabulary into constant positions."""

    text: str


@dataclass(frozen=True)
class SpecialItem(Node):
    """A special token by name: ``BOS``, ``EOS`` or ``special("NAME")``."""

    name: str


@dataclass(frozen=True)
class NameItem(Node):
    """A bare name in a dist: an earlier token set (one position) or dist (spliced in)."""

    name: str


@dataclass(frozen=True)
class SetItem(Node):
    """``[expr]``: one position drawn from a token set (by its weights when it has them)."""

    expr: SetExpr


@dataclass(frozen=True)
class UniformItem(Node):
    """``uniform(expr)``: one position drawn uniformly from a token set, ignoring its weights."""

    expr: SetExpr


@dataclass(frozen=True)
class WeightedItem(Node):
    """``weighted(expr, weights)``: one position from ``expr``, weighted by the set ``weights``."""

    expr: SetExpr
    weights: SetExpr


@dataclass(frozen=True)
class Repeat(Node):
    """``item * count``: ``count`` independent copies of ``item``."""

    item: Item
    count: int | float


@dataclass(frozen=True)
class Branch(Node):
    """One alternative: a sequence of items with an optional ``@ weight``."""

    items: tuple[Item, ...]
    weight: int | float | None = None


@dataclass(frozen=True)
class Group(Node):
    """``( branch | branch ... )``: weighted alternatives between equally long sub-sequences."""

    branches: tuple[Branch, ...]


Item = TextItem | SpecialItem | NameItem | SetItem | UniformItem | WeightedItem | Repeat | Group

# ---- statements


@dataclass(frozen=True)
class TokensDef(Node):
    """``tokens NAME = expr``."""

    name: str
    expr: SetExpr


@dataclass(frozen=True)
class DistDef(Node):
    """``dist NAME = branch | branch ...``."""

    name: str
    branches: tuple[Branch, ...]


@dataclass(frozen=True)
class TargetIs(Node):
    """``argmax == "ff"`` (a token string) or ``argmax == #123`` (a token id)."""

    token: str | int


@dataclass(frozen=True)
class TargetIn(Node):
    """``argmax in expr``."""

    expr: SetExpr


@dataclass(frozen=True)
class SampleOption(Node):
    """``temperature=0.7`` or ``top_k=50`` inside ``sample(...)``."""

    name: str
    value: int | float


@dataclass(frozen=True)
class Continuation(Node):
    """``greedy(L)`` or ``sample(L, option=value, ...)``: the ``L`` tokens the model generates after the input."""

    mode: TypingLiteral["greedy", "sample"]
    length: int
    options: tuple[SampleOption, ...] = ()


OutputOperator = TypingLiteral["==", "startswith", "contains", "matches"]


@dataclass(frozen=True)
class OutputTest(Node):
    """``CONTINUATION OP OPERAND``: a test on the generated continuation (positioned at the operator).

    ``operand`` is the text for ``==``, ``startswith`` and ``contains "text"``, the pattern for ``matches``
    and a set expression for ``contains SET``.
    """

    continuation: Continuation
    op: OutputOperator
    operand: str | SetExpr


@dataclass(frozen=True)
class TargetDef(Node):
    """``target NAME = argmax == ...``, ``target NAME = argmax in ...`` or ``target NAME = greedy(L) ...``."""

    name: str
    test: TargetIs | TargetIn | OutputTest


Statement = TokensDef | DistDef | TargetDef


@dataclass(frozen=True)
class Spec(Node):
    """A whole spec: its statements in order, plus the text and file name it was parsed from."""

    statements: tuple[Statement, ...]
    source: str = field(default="", compare=False, kw_only=True)
    filename: str = field(default="<spec>", compare=False, kw_only=True)


def children(node: Node) -> Iterator[Node]:
    """The nodes directly below ``node``, in source order."""
    for f in fields(node):
        value = getattr(node, f.name)
        if isinstance(value, Node):
            yield value
        elif isinstance(value, tuple):
            yield from (v for v in value if isinstance(v, Node))


def too_deep(root: Node, limit: int = MAX_NESTING) -> Node | None:
    """The first node (outermost, leftmost) nested more than ``limit`` levels deep, or ``None``.

    Iterative, so it is safe on any tree. A branch is part of its group and a chain's next link
    (the left operand of an operator of the same family, a ``not`` under ``not``, a repetition of a
    repetition) is on the level of the chain.
    """
    stack: list[tuple[Node, int]] = [(root, 0)]
    while stack:
        node, level = stack.pop()
        if level > limit:
            return node
        below = list(children(node))
        for index in range(len(below) - 1, -1, -1):
            child = below[index]
            flat = isinstance(child, Branch) or (index == 0 and _same_chain(node, child))
            stack.append((child, level if flat else level + 1))
    return None


_CHAINS: tuple[tuple[type, ...], ...] = ((SetOp, Where), (BoolFilter,), (NotFilter,), (Repeat,))


def _same_chain(parent: Node, child: Node) -> bool:
    """Whether ``child``, the first operand of ``parent``, is the next link of the same chain."""
    return any(isinstance(parent, family) and isinstance(child, family) for family in _CHAINS)
