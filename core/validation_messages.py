"""Pydantic validation errors as messages for people: dotted key paths, no union-member tags, plain words.

Pydantic reports a value that fits no member of a union once per member, with the member's internal tag in
the path (``budgets.0.function-after[_validate(), Budget].model_call``). Here such errors become one entry per
value that lists, per accepted form, what did not fit.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

_WRAPPER_TAG = re.compile(r"^[a-z]+(-[a-z]+)*\[.*\]$")
"""A validator wrapper's tag, e.g. ``function-after[_validate(), Budget]``; the form is its last name."""
_PLAIN = {"extra_forbidden": "unknown key", "missing": "required"}


def _model_classes(model: type[BaseModel]) -> dict[str, type[BaseModel]]:
    """Every pydantic model reachable from ``model``'s fields, by class name (the tags unions use)."""
    found: dict[str, type[BaseModel]] = {}
    stack: list[Any] = [model]
    while stack:
        tp = stack.pop()
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            if tp.__name__ in found:
                continue
            found[tp.__name__] = tp
            stack.extend(f.annotation for f in tp.model_fields.values())
        else:
            stack.extend(getattr(tp, "__args__", ()))
    return found


def _form(part: str | int, classes: dict[str, type[BaseModel]]) -> str | None:
    """The accepted form a path element names when it is a union-member tag, else ``None``."""
    if not isinstance(part, str):
        return None
    if _WRAPPER_TAG.match(part):
        return part[part.index("[") + 1:-1].split(",")[-1].strip()
    return part if part in classes else None


def _path(parts: Iterable[str | int]) -> str:
    return ".".join(str(p) for p in parts) or "(top level)"


def _problem(error: ErrorDetails, key: str | int | None) -> str:
    """What is wrong, in plain words; an unknown key is named."""
    msg = _PLAIN.get(error["type"], error["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, "))
    if error["type"] == "extra_forbidden" and key is not None:
        return f"unknown key {str(key)!r}"
    return msg


def format_validation_error(exc: ValidationError, model: type[BaseModel]) -> list[str]:
    """One line per bad value of ``model``: ``path: problem``; a value that fits no member of a union gets
    ``path: fits none of its forms: Form (key: problem; ...) or Form (...)``."""
    classes = _model_classes(model)
    lines: dict[str, list[str]] = {}
    forms: dict[str, dict[str, list[str]]] = {}
    for error in exc.errors():
        loc = list(error["loc"])
        tag = next((i for i, part in enumerate(loc) if _form(part, classes) is not None), None)
        if tag is None and loc[-1:] == ["[key]"]:  # a bad key of a mapping
            lines.setdefault(_path(loc[:-2]), []).append(f"key {str(loc[-2])!r}: {_problem(error, None)}")
            continue
        if tag is None:
            lines.setdefault(_path(loc), []).append(_problem(error, loc[-1] if loc else None))
            continue
        form = _form(loc[tag], classes)
        assert form is not None
        inner = loc[tag + 1:]
        problem = _problem(error, inner[-1] if inner else None)
        if inner and error["type"] != "extra_forbidden":
            problem = f"{_path(inner)}: {problem}"
        forms.setdefault(_path(loc[:tag]), {}).setdefault(form, []).append(problem)
        lines.setdefault(_path(loc[:tag]), [])
    out: list[str] = []
    for path, problems in lines.items():
        if path in forms:
            alternatives = " or ".join(f"{form} ({'; '.join(p)})" for form, p in forms[path].items())
            problems = [*problems, f"fits none of its forms: {alternatives}"]
        out.extend(f"{path}: {problem}" for problem in problems)
    return out
