"""griffe extension: turn the docstrings' Sphinx roles (``:class:`Estimate```) into mkdocs cross-references.

The docstrings are written for ``help()`` and Sphinx-style readers; in the site each role becomes a link to the
object's API entry when the reference documents it, and plain code otherwise (an optional cross-reference, so a
role naming an undocumented object never breaks the strict build).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from typing import Any

import griffe

ROLE = re.compile(r":(?:class|func|meth|mod|attr|exc|data|obj):`(~?)([\w.]+)`")


def _resolve(obj: griffe.Object, name: str) -> str:
    """``name``'s full path seen from ``obj``'s scope (its first component resolved), or ``name`` itself."""
    head, _, rest = name.partition(".")
    try:
        path = obj.resolve(head)
    except (griffe.NameResolutionError, griffe.AliasResolutionError, KeyError):
        return name
    return f"{path}.{rest}" if rest else path


def _link(obj: griffe.Object, match: re.Match[str]) -> str:
    """One role as an optional autorefs cross-reference; ``~`` shows only the last component, as in Sphinx."""
    short, name = match.groups()
    title = name.rpartition(".")[2] if short else name
    return f'<autoref identifier="{_resolve(obj, name)}" optional><code>{title}</code></autoref>'


def _objects(obj: griffe.Object) -> Iterator[griffe.Object]:
    """``obj`` and every object defined under it (aliases, i.e. imports, skipped)."""
    yield obj
    for member in obj.members.values():
        if isinstance(member, griffe.Object):
            yield from _objects(member)


class SphinxRoles(griffe.Extension):
    """Rewrites roles once the whole package is loaded, so names defined later in a module resolve too."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        """Rewrite every docstring of ``pkg``."""
        for obj in _objects(pkg):
            if obj.docstring is not None:
                obj.docstring.value = ROLE.sub(functools.partial(_link, obj), obj.docstring.value)
