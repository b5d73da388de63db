"""Reading spec files: UTF-8 (a byte-order mark is dropped); anything else is a DslError naming the file."""

from __future__ import annotations

from pathlib import Path

from lowprob.dsl.errors import DslError, SourceText
from lowprob.dsl.parser import MAX_SPEC_CHARS

_UTF16_MARKS = (b"\xff\xfe", b"\xfe\xff")


def path_exists(path: Path) -> bool:
    """Whether ``path`` names something on disk; ``False`` (not an error) for names the OS cannot look up."""
    try:
        return path.exists()
    except (OSError, ValueError):  # a name too long, or with a NUL byte, is not a file
        return False


def read_spec_file(path: Path) -> str:
    """The text of the spec file at ``path``."""
    name = str(path)
    if path.is_dir():
        raise DslError("this is a directory, not a spec file", filename=name)
    try:
        size = path.stat().st_size
        if size > 4 * MAX_SPEC_CHARS:  # the most bytes MAX_SPEC_CHARS characters can take
            raise DslError(
                f"the file is {size} bytes, more than a spec of at most {MAX_SPEC_CHARS} characters can be",
                filename=name,
            )
        data = path.read_bytes()
    except OSError as exc:
        raise DslError(f"cannot read the file: {exc.strerror or exc}", filename=name) from None
    if data.startswith(_UTF16_MARKS):
        raise DslError("the file is UTF-16 text; a spec must be UTF-8", filename=name, hint="save it as UTF-8")
    nul = data.find(b"\0")
    if nul >= 0:  # UTF-16 without a byte-order mark, or a binary file
        raise DslError(
            f"the file has a NUL byte at byte offset {nul}: it is binary or UTF-16, not UTF-8 text",
            filename=name,
            hint="save it as UTF-8 (write a NUL inside a string as \\x00)",
        )
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        line_start = data.rfind(b"\n", 0, exc.start) + 1
        line = data.count(b"\n", 0, exc.start) + 1
        column = len(data[line_start : exc.start].decode("utf-8", "replace")) + 1
        shown = SourceText(data.decode("utf-8", "replace"), name)
        raise shown.error_at(
            line,
            column,
            f"the file is not UTF-8 text: byte 0x{data[exc.start]:02x} at byte offset {exc.start} cannot be decoded",
            "save it as UTF-8",
        ) from None
