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
    if isinstance(test, s.OutputTest):
        return f"target {statement.name} = {format_output_test(test)}"
    if isinstance(test, s.TargetIn):
        return f"target {statement.name} = argmax in {format_set(test.expr)}"
    token = format_string(test.token) if isinstance(test.token, str) else f"#{test.token}"
    return f"target {statement.name} = argmax == {token}"


def format_output_test(test: s.OutputTest) -> str:
    """An output event: ``greedy(4) startswith " the"``, ``sample(8, temperature=0.7) contains {...}``."""
    run = test.continuation
    options = "".join(f", {o.name}={format_number(o.value)}" for o in run.options)
    if test.op == "matches":
        operand = f"/{test.operand}/"
    elif isinstance(test.operand, str):
        operand = format_string(test.operand)
    else:
        operand = format_set(test.operand)
    return f"{run.mode}({run.length}{options}) {test.op} {operand}"


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
    """``expr``, parenthesised when it binds looser than ``minimum``; its left spine is walked, not recursed."""
    spine: list[s.SetOp | s.Where] = []
    node = expr
    while isinstance(node, s.SetOp | s.Where):
        spine.append(node)
        node = node.left if isinstance(node, s.SetOp) else node.expr
    text, below = _set_atom(node), node
    for link in reversed(spine):
        if isinstance(link, s.Where):
            text = f"{_wrap(text, below, 0)} where {_filter(link.filter, 0)}"
        else:  # left-associative: the right operand binds one level tighter
            level = _SET_PRECEDENCE[link.op]
            text = f"{_wrap(text, below, level)} {link.op} {_set(link.right, level + 1)}"
        below = link
    return _wrap(text, expr, minimum)


def _wrap(text: str, expr: s.SetExpr, minimum: int) -> str:
    return f"({text})" if _precedence(expr) < minimum else text


def _set_atom(expr: s.SetRef | s.RegexSet | s.ExplicitSet | s.SetCall) -> str:
    if isinstance(expr, s.SetRef):
        return expr.name
    if isinstance(expr, s.RegexSet):
        return f"/{expr.pattern}/"
    if isinstance(expr, s.ExplicitSet):
        return "{" + ", ".join(_entry(e) for e in expr.entries) + "}"
    return f"{expr.name}({', '.join(_argument(a) for a in expr.args)})"


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
    """``condition``, parenthesised below ``minimum``; chains of ``and``/``or`` and of ``not`` are walked."""
    spine: list[s.BoolFilter] = []
    node = condition
    while isinstance(node, s.BoolFilter):
        spine.append(node)
        node = node.left
    text, level = _negations(node)
    for link in reversed(spine):
        op_level = _FILTER_PRECEDENCE[link.op]
        left = f"({text})" if level < op_level else text
        text, level = f"{left} {link.op} {_filter(link.right, op_level + 1)}", op_level
    return f"({text})" if level < minimum else text


def _negations(condition: s.Filter) -> tuple[str, int]:
    """A filter that is not an ``and``/``or`` (an atom, or ``not`` applied to one or more times) and its level."""
    count = 0
    while isinstance(condition, s.NotFilter):
        count += 1
        condition = condition.operand
    if count:
        return "not " * count + _filter(condition, _FILTER_PRECEDENCE["not"]), _FILTER_PRECEDENCE["not"]
    assert isinstance(condition, s.LenFilter | s.AffixFilter | s.MatchesFilter)
    return _filter_atom(condition), _ATOM


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
        counts = []
        while isinstance(item, s.Repeat):
            counts.append(item.count)
            item = item.item
        return _item(item) + "".join(f" * {n}" for n in reversed(counts))
    return f"({_branches(item.branches)})"
