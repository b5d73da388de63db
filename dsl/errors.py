"""The one error type the DSL raises, printed compiler-style with the offending line and a caret."""

from __future__ import annotations

from lowprob.core.errors import LowprobError
from lowprob.dsl.syntax import Node

QUOTE_WIDTH = 80
"""Most characters of the offending line an error quotes: a window around the caret."""
MESSAGE_LIMIT = 600
"""Most characters of a message or hint an error prints (longer ones are cut in the middle)."""


class DslError(LowprobError):
    """A spec that cannot be parsed or compiled, located at ``filename:line:column`` (1-based).

    ``line``/``column`` are ``None`` for errors about the spec as a whole (a missing dist).
    """

    def __init__(
        self,
        message: str,
        *,
        filename: str = "<spec>",
        line: int | None = None,
        column: int | None = None,
        source_line: str = "",
        hint: str | None = None,
    ) -> None:
        self.message, self.filename, self.line, self.column = message, filename, line, column
        self.source_line, self.hint = source_line, hint
        super().__init__(self._render())

    def _render(self) -> str:
        where = _printable(self.filename)
        if self.line is None or self.column is None:
            out = f"{where}: error: {_limited(self.message)}"
        else:
            quoted, caret = _window(self.source_line, self.column)
            # keep tabs in the caret's indent so it lines up under the offending character
            indent = "".join(c if c == "\t" else " " for c in quoted[:caret])
            out = f"{where}:{self.line}:{self.column}: error: {_limited(self.message)}\n    {quoted}\n    {indent}^"
        return out + (f"\n  hint: {_limited(self.hint)}" if self.hint else "")

    def __str__(self) -> str:
        return self._render()


def shorten(text: str, width: int = 40) -> str:
    """``text``, cut to ``width`` characters with ``...`` when longer (for echoing user text in messages)."""
    return text if len(text) <= width else text[: width - 3] + "..."


def _printable(text: str) -> str:
    """``text`` with lone surrogates (undecodable bytes) escaped, so that it can always be printed."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _limited(text: str) -> str:
    text = _printable(text)
    if len(text) <= MESSAGE_LIMIT:
        return text
    half = MESSAGE_LIMIT // 2
    return f"{text[:half]} ... {text[-half:]}"


def _window(line: str, column: int) -> tuple[str, int]:
    """At most :data:`QUOTE_WIDTH` characters of ``line`` around ``column``, and the caret's index in them.

    Characters that cannot be shown in one cell (controls, undecodable bytes) are shown as ``?``.
    """
    at = max(column - 1, 0)
    start = 0 if len(line) <= QUOTE_WIDTH else min(max(at - QUOTE_WIDTH // 2, 0), len(line) - QUOTE_WIDTH)
    piece = "".join(c if c == "\t" or (c.isprintable() and not 0xD800 <= ord(c) <= 0xDFFF) else "?"
                    for c in line[start : start + QUOTE_WIDTH])
    prefix = "..." if start > 0 else ""
    suffix = "..." if start + QUOTE_WIDTH < len(line) else ""
    return prefix + piece + suffix, len(prefix) + at - start


class SourceText:
    """A spec's text and file name; makes :class:`DslError` s that point into it."""

    def __init__(self, text: str, filename: str) -> None:
        self.text, self.filename = text, filename
        self._lines = text.split("\n")

    def error_at(self, line: int | None, column: int | None, message: str, hint: str | None = None) -> DslError:
        """An error at a 1-based position (``None``: the spec as a whole)."""
        source_line = ""
        if line is not None and 1 <= line <= len(self._lines):
            source_line = self._lines[line - 1].rstrip("\r")
        return DslError(
            message,
            filename=self.filename,
            line=line,
            column=column,
            source_line=source_line,
            hint=hint,
        )

    def error_at_offset(self, offset: int, message: str, hint: str | None = None) -> DslError:
        """An error at a 0-based character offset into the text."""
        line = self.text.count("\n", 0, offset) + 1
        column = offset - (self.text.rfind("\n", 0, offset) + 1) + 1
        return self.error_at(line, column, message, hint)

    def error(self, node: Node, message: str, hint: str | None = None, offset: int = 0) -> DslError:
        """An error at ``node``, or ``offset`` characters to its right (inside a literal)."""
        return self.error_at(node.line, node.column + offset, message, hint)
