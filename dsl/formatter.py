"""Syntax tree → canonical spec text, such that ``parse(format_spec(spec)) == spec``.

Canonical form: one statement per line, single spaces around operators, parentheses only where
precedence needs them, strings with the minimal escapes, numbers as Python's ``repr``.
"""

from __future__ import annotations

import math

from lowprob.dsl import syntax as s

_SET_PRECEDENCE = {"where": 0, "|": 1, "-": 1, "&": 2}
_FILTER_PRECEDENCE = {"or": 0, "and": 1, "not": 2}
_ATOM = 3
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\t": "\\t"}


def format_spec(spec: s.Spec) -> str:
    """The canonical text of ``spec`` (one statement per line, ending in a newline)."""
    return "".join(format_statement(st) + "\n" for st in spec.statements)


def format_statement(statement: s.Statement) -> str:
    """One statement as a line of spec text."""
    if isinstance(statement, s.TokensDef):
        return f"tokens {statement.name} = {format_set(statement.expr)}"
    if isinstance(statement, s.DistDef):
        return f"dist {statement.name} = {_branches(statement.branches)}"
    test = statement.test
    if isinstance(test, s.TargetIn):
        return f"target {statement.name} = argmax in {format_set(test.expr)}"
    token = format_string(test.token) if isinstance(test.token, str) else f"#{test.token}"
    return f"target {statement.name} = argmax == {token}"


def format_string(value: str) -> str:
    """A string literal; escapes quote, backslash, newline, tab, and other controls as ``\\xNN``."""
    body = "".join(_ESCAPES.get(c, f"\\x{ord(c):02x}" if ord(c) < 0x20 or ord(c) == 0x7F else c) for c in value)
    return f'"{body}"'


def format_number(value: int | float) -> str:
    """A number literal (``1e999`` for infinity, which is what that literal parses to)."""
    if isinstance(value, float) and math.isinf(value):
        return "1e999" if value > 0 else "-1e999"
    return repr(value)


def format_set(expr: s.SetExpr) -> str:
    """A token-set expression, parenthesised where precedence requires."""
    return _set(expr, 0)


def _precedence(expr: s.SetExpr) -> int:
    if isinstance(expr, s.Where):
        return _SET_PRECEDENCE["where"]
    if isinstance(expr, s.SetOp):
        return _SET_PRECEDENCE[expr.op]
    return _ATOM


def _set(expr: s.SetExpr, minimum: int) -> str:
    text = _set_unparenthesised(expr)
    return f"({text})" if _precedence(expr) < minimum else text


def _set_unparenthesised(expr: s.SetExpr) -> str:
    if isinstance(expr, s.SetRef):
        return expr.name
    if isinstance(expr, s.RegexSet):
        return f"/{expr.pattern}/"
    if isinstance(expr, s.ExplicitSet):
        return "{" + ", ".join(_entry(e) for e in expr.entries) + "}"
    if isinstance(expr, s.SetCall):
        return f"{expr.name}({', '.join(_argument(a) for a in expr.args)})"
    if isinstance(expr, s.Where):
        return f"{_set(expr.expr, 0)} where {_filter(expr.filter, 0)}"
    level = _SET_PRECEDENCE[expr.op]  # left-associative: the right operand binds one level tighter
    return f"{_set(expr.left, level)} {expr.op} {_set(expr.right, level + 1)}"


def _entry(entry: s.SetEntry) -> str:
    token = format_string(entry.token) if isinstance(entry.token, str) else str(entry.token)
    return token if entry.weight is None else f"{token}: {format_number(entry.weight)}"


def _argument(arg: s.CallArg) -> str:
    if isinstance(arg, s.NumberArg):
        return format_number(arg.value)
    if isinstance(arg, s.StringArg):
        return format_string(arg.value)
    return format_set(arg)


def _filter(condition: s.Filter, minimum: int) -> str:
    if isinstance(condition, s.BoolFilter):
        level = _FILTER_PRECEDENCE[condition.op]
        text = f"{_filter(condition.left, level)} {condition.op} {_filter(condition.right, level + 1)}"
    elif isinstance(condition, s.NotFilter):
        level = _FILTER_PRECEDENCE["not"]
        text = f"not {_filter(condition.operand, level)}"
    else:
        level = _ATOM
        text = _filter_atom(condition)
    return f"({text})" if level < minimum else text


def _filter_atom(condition: s.LenFilter | s.AffixFilter | s.MatchesFilter) -> str:
    if isinstance(condition, s.LenFilter):
        return f"len {condition.op} {format_number(condition.value)}"
    if isinstance(condition, s.AffixFilter):
        return f"{condition.kind} {format_string(condition.text)}"
    return f"matches /{condition.pattern}/"


def _branches(branches: tuple[s.Branch, ...]) -> str:
    return " | ".join(format_branch(b) for b in branches)


def format_branch(branch: s.Branch) -> str:
    """One alternative of a dist: its items and, when given, its ``@ weight``."""
    items = " ".join(_item(i) for i in branch.items)
    return items if branch.weight is None else f"{items} @ {format_number(branch.weight)}"


def _item(item: s.Item) -> str:
    if isinstance(item, s.TextItem):
        return format_string(item.text)
    if isinstance(item, s.SpecialItem):
        return item.name if item.name in ("BOS", "EOS") else f"special({format_string(item.name)})"
    if isinstance(item, s.NameItem):
        return item.name
    if isinstance(item, s.SetItem):
        return f"[{format_set(item.expr)}]"
    if isinstance(item, s.UniformItem):
        return f"uniform({format_set(item.expr)})"
    if isinstance(item, s.WeightedItem):
        return f"weighted({format_set(item.expr)}, {format_set(item.weights)})"
    if isinstance(item, s.Repeat):
        return f"{_item(item.item)} * {item.count}"
    return f"({_branches(item.branches)})"
