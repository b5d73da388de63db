"""Assemble lowprob's training corpus: three named slices (``code``, ``english``, ``spanish``) from local sources.

Every source ships with the Python interpreter or with a Debian package, so the corpus can be rebuilt offline and
nothing is downloaded at run time. The recipe is deterministic: sources are read in sorted order, each slice stops
at a byte cap, and the script prints each slice's size and sha256 so a rerun can be checked against docs/models.md.

Layout: ``OUT/<slice>/NNNNN.txt`` (one document per file, numbered in reading order) and ``OUT/<slice>/manifest.tsv``
(number, bytes, source path). Run ``make corpus`` (installs the Debian packages; needs root and apt) or, with the
packages present, ``python scripts/build_corpus.py [OUT]`` (default ``data/corpus``).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import html.parser
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

PACKAGES = ("debian-handbook", "python3.11-doc", "manpages-es")
"""Debian packages the ``english`` and ``spanish`` slices come from (Debian 12 "bookworm")."""

HANDBOOK = Path("/usr/share/doc/debian-handbook/html")
PYDOCS = Path("/usr/share/doc/python3.11/html/_sources")
MAN_ES = Path("/usr/share/man/es")

MB = 1_000_000
SKIPPED_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}
MAX_SOURCE_BYTES = 200_000
"""Python files above this size are generated tables (e.g. ``pydoc_data/topics.py``), not hand-written code."""


@dataclass(frozen=True)
class Document:
    """One training document: where it came from and its text."""

    source: str
    text: str


@dataclass(frozen=True)
class Slice:
    """A named corpus slice: a byte cap and the document stream it is cut from."""

    name: str
    cap_bytes: int
    documents: Callable[[], Iterator[Document]]


def stdlib_documents() -> Iterator[Document]:
    """Hand-written Python modules of the running interpreter's standard library, tests excluded."""
    root = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if SKIPPED_DIRS & set(rel.parts[:-1]) or path.stat().st_size > MAX_SOURCE_BYTES:
            continue
        try:
            yield Document(f"stdlib/{rel}", path.read_text(encoding="utf-8"))
        except UnicodeDecodeError:
            continue


class _HandbookText(html.parser.HTMLParser):
    """The prose of one Debian Handbook HTML page, without banner, navigation and table of contents."""

    BLOCKS = {"p", "div", "h1", "h2", "h3", "h4", "h5", "li", "dt", "dd", "pre", "tr", "br", "table", "blockquote"}
    SKIPPED_IDS = {"banner", "title"}
    SKIPPED_CLASSES = {"docnav", "toc"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._stack: list[bool] = []  # per open element: is it (inside) a skipped subtree

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        ids = {value for key, value in attrs if key == "id"}
        classes = {name for key, value in attrs if key == "class" and value for name in value.split()}
        skipped = (bool(self._stack and self._stack[-1]) or bool(ids & self.SKIPPED_IDS)
                   or bool(classes & self.SKIPPED_CLASSES) or tag in ("head", "script", "style"))
        if tag not in ("br", "img", "meta", "link", "hr", "col"):
            self._stack.append(skipped)
        if tag in self.BLOCKS and not skipped:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag not in ("br", "img", "meta", "link", "hr", "col") and self._stack:
            self._stack.pop()
        if tag in self.BLOCKS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if self._stack and not self._stack[-1]:
            self.parts.append(data)

    def text(self) -> str:
        lines = (" ".join(line.split()) for line in "".join(self.parts).splitlines())
        return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip() + "\n"


def handbook_documents(language: str) -> Iterator[Document]:
    """The Debian Administrator's Handbook in one language, one document per HTML page."""
    for path in sorted((HANDBOOK / language).glob("*.html")):
        parser = _HandbookText()
        parser.feed(path.read_text(encoding="utf-8"))
        yield Document(f"debian-handbook/{language}/{path.name}", parser.text())


ROLE = re.compile(r":[\w:.-]+:`(?:[^`<]*<)?[~!]?([^`>]*)>?`")


PYDOC_ORDER = ("tutorial", "howto", "faq", "reference", "using", "glossary.rst.txt", "library")
"""Python documentation sections read first (the most prose-like); the rest follow in path order."""


def _pydoc_rank(path: Path) -> tuple[int, Path]:
    top = path.relative_to(PYDOCS).parts[0]
    return (PYDOC_ORDER.index(top) if top in PYDOC_ORDER else len(PYDOC_ORDER), path)


def pydoc_documents() -> Iterator[Document]:
    """The Python 3.11 documentation sources (reStructuredText), C API reference excluded; roles become plain text."""
    for path in sorted(PYDOCS.rglob("*.rst.txt"), key=_pydoc_rank):
        rel = path.relative_to(PYDOCS)
        if rel.parts[0] in ("c-api", "includes"):
            continue
        yield Document(f"python3.11-doc/{rel}", ROLE.sub(r"\1", path.read_text(encoding="utf-8")))


def man_es_documents() -> Iterator[Document]:
    """Spanish manual pages rendered to plain text by ``man`` (no hyphenation or justification)."""
    env = {**os.environ, "MANWIDTH": "200", "LC_ALL": "C.UTF-8", "MAN_KEEP_FORMATTING": ""}
    for path in sorted(MAN_ES.rglob("*.gz")):
        with gzip.open(path, "rt", encoding="utf-8", errors="replace") as fh:
            if fh.read(4).startswith(".so"):
                continue  # an alias of another page
        rendered = subprocess.run(["man", "--nh", "--nj", "-E", "UTF-8", "-l", str(path)], env=env,
                                  capture_output=True, text=True, check=False).stdout
        lines = [" ".join(line.split()) for line in rendered.splitlines()]
        body = "\n".join(lines[1:-1]).strip()  # drop the page header and footer lines
        if body:
            yield Document(f"manpages-es/{path.relative_to(MAN_ES)}", re.sub(r"\n{3,}", "\n\n", body) + "\n")


def _chain(*streams: Callable[[], Iterator[Document]]) -> Callable[[], Iterator[Document]]:
    return lambda: (doc for stream in streams for doc in stream())


SLICES = (
    Slice("code", 8 * MB, stdlib_documents),
    Slice("english", 8 * MB, _chain(lambda: handbook_documents("en-US"), pydoc_documents)),
    Slice("spanish", 4 * MB, _chain(lambda: handbook_documents("es-ES"), man_es_documents)),
)


def slice_digest(directory: Path) -> str:
    """sha256 over the slice's documents in order: each file name, NUL, its bytes, NUL."""
    digest = hashlib.sha256()
    for path in sorted(directory.glob("*.txt")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def write_slice(spec: Slice, out: Path) -> tuple[int, int]:
    """Write the slice's documents, in order, while they fit under its cap; return (documents, bytes)."""
    directory = out / spec.name
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    total, manifest = 0, list[str]()
    for doc in spec.documents():
        data = doc.text.encode("utf-8")
        if not doc.text.strip() or total + len(data) > spec.cap_bytes:
            continue
        name = f"{len(manifest):05d}.txt"
        (directory / name).write_bytes(data)
        manifest.append(f"{name}\t{len(data)}\t{doc.source}\n")
        total += len(data)
    (directory / "manifest.tsv").write_text("".join(manifest), encoding="utf-8")
    return len(manifest), total


def missing_packages() -> list[str]:
    """The Debian packages in ``PACKAGES`` that ``dpkg-query`` does not report as installed."""
    missing = []
    for package in PACKAGES:
        result = subprocess.run(["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True,
                                check=False)
        if "install ok installed" not in result.stdout:
            missing.append(package)
    return missing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", nargs="?", type=Path, default=Path("data/corpus"), help="output directory")
    args = parser.parse_args()
    missing = missing_packages()
    if missing:
        sys.exit(f"missing Debian packages: {' '.join(missing)}\n"
                 f"install them with: apt-get install -y {' '.join(PACKAGES)}   (or run `make corpus` as root)")
    for spec in SLICES:
        documents, size = write_slice(spec, args.out)
        digest = slice_digest(args.out / spec.name)
        print(f"{spec.name:8s} {documents:5d} documents {size:>10,d} bytes  sha256 {digest}")


if __name__ == "__main__":
    main()
