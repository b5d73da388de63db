"""The one error type the DSL raises, printed compiler-style with the offending line and a caret."""

from __future__ import annotations

from lowprob.core.errors import LowprobError
from lowprob.dsl.syntax import Node


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
        if self.line is None or self.column is None:
            out = f"{self.filename}: error: {self.message}"
        else:
            # keep tabs in the caret's indent so it lines up under the offending character
            indent = "".join(c if c == "\t" else " " for c in self.source_line[: self.column - 1])
            out = (
                f"{self.filename}:{self.line}:{self.column}: error: {self.message}\n"
                f"    {self.source_line}\n    {indent}^"
            )
        return out + (f"\n  hint: {self.hint}" if self.hint else "")

    def __str__(self) -> str:
        return self._render()


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

    def error(self, node: Node, message: str, hint: str | None = None, offset: int = 0) -> DslError:
        """An error at ``node``, or ``offset`` characters to its right (inside a literal)."""
        return self.error_at(node.line, node.column + offset, message, hint)
