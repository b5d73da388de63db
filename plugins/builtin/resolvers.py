"""Built-in token-set resolvers: ``vocab()``, ``specials()`` and unigram frequency tables
``freq(name)``.

For any vocabulary, ``freq("stdlib")`` counts the tokens of a few CPython standard-library sources and
``freq("english")`` those of a short public-domain passage (Lincoln's Gettysburg Address, 1863), through the
model's own ``Vocabulary.encode``; characters it cannot encode are dropped. For the built-in BPE tokenizer (matched
by ``vocabulary_fingerprint``) the committed corpus tables ``code``, ``english`` and ``spanish`` take precedence
(see docs/models.md). Special tokens are never part of a table's set; tables are cached per vocabulary.
"""

from __future__ import annotations

import sysconfig
import weakref
from collections import Counter
from collections.abc import Callable
from functools import cache
from pathlib import Path

import torch

from lowprob.core.token_set import ResolverArg, TokenSet
from lowprob.core.vocabulary import Vocabulary
from lowprob.plugins.builtin.frequency import BUILTIN_TABLES, builtin_table_path
from lowprob.plugins.frequency_tables import FrequencyTable, load_table, vocabulary_fingerprint
from lowprob.plugins.hookspecs import hookimpl
from lowprob.plugins.registry import Registrar

STDLIB_FILES = ("textwrap.py", "string.py", "this.py", "colorsys.py", "fnmatch.py")
"""Standard-library modules whose source makes the ``stdlib`` table."""

ENGLISH = """\
Four score and seven years ago our fathers brought forth on this continent, a new nation, conceived
in Liberty, and dedicated to the proposition that all men are created equal.

Now we are engaged in a great civil war, testing whether that nation, or any nation so conceived and
so dedicated, can long endure. We are met on a great battle-field of that war. We have come to
dedicate a portion of that field, as a final resting place for those who here gave their lives that
that nation might live. It is altogether fitting and proper that we should do this.

But, in a larger sense, we can not dedicate -- we can not consecrate -- we can not hallow -- this
ground. The brave men, living and dead, who struggled here, have consecrated it, far above our poor
power to add or detract. The world will little note, nor long remember what we say here, but it can
never forget what they did here. It is for us the living, rather, to be dedicated here to the
unfinished work which they who fought here have thus far so nobly advanced. It is rather for us to
be here dedicated to the great task remaining before us -- that from these honored dead we take
increased devotion to that cause for which they gave the last full measure of devotion -- that we
here highly resolve that these dead shall not have died in vain -- that this nation, under God,
shall have a new birth of freedom -- and that government of the people, by the people, for the
people, shall not perish from the earth.
"""
"""The Gettysburg Address (public domain), the text of the ``english`` table."""


def _stdlib_text() -> str:
    root = Path(sysconfig.get_paths()["stdlib"])
    found = [root / name for name in STDLIB_FILES if (root / name).is_file()]
    if not found:
        raise ValueError(f'freq("stdlib"): none of {", ".join(STDLIB_FILES)} found under {root}')
    return "\n".join(path.read_text(encoding="utf-8") for path in found)


TEXTS: dict[str, Callable[[], str]] = {"stdlib": _stdlib_text, "english": lambda: ENGLISH}
"""Frequency tables by name: each gives the text whose token counts make the table."""

_cache: weakref.WeakKeyDictionary[Vocabulary, dict[str, TokenSet]] = weakref.WeakKeyDictionary()
_committed: weakref.WeakKeyDictionary[Vocabulary, dict[str, FrequencyTable]] = weakref.WeakKeyDictionary()


@cache
def _builtin_tables() -> dict[str, FrequencyTable]:
    return {name: load_table(builtin_table_path(name)) for name in BUILTIN_TABLES}


def committed_tables(vocab: Vocabulary) -> dict[str, FrequencyTable]:
    """The committed tables built for exactly this vocabulary (same size, same fingerprint); cached."""
    if vocab not in _committed:
        tables = _builtin_tables()
        same_size = {name: t for name, t in tables.items() if len(t.counts) == vocab.size}
        fingerprint = vocabulary_fingerprint(vocab) if same_size else ""
        _committed[vocab] = {name: t for name, t in same_size.items() if t.fingerprint == fingerprint}
    return _committed[vocab]


def known_tables(vocab: Vocabulary) -> list[str]:
    """Table names ``freq()`` accepts for ``vocab``."""
    return sorted(set(TEXTS) | set(committed_tables(vocab)))


def _encodable(vocab: Vocabulary, text: str) -> str:
    """``text`` without the characters ``vocab`` cannot encode on their own (so the rest always
    encodes)."""
    verdict: dict[str, bool] = {}
    for ch in set(text):
        try:
            verdict[ch] = bool(vocab.encode(ch))
        except ValueError:
            verdict[ch] = False
    return "".join(ch for ch in text if verdict[ch])


def frequency_table(vocab: Vocabulary, name: str) -> TokenSet:
    """The unigram counts of table ``name`` under ``vocab`` as a weighted token set (cached per
    vocabulary)."""
    committed = committed_tables(vocab)
    if name not in TEXTS and name not in committed:
        raise ValueError(f"unknown frequency table {name!r}; known tables: {', '.join(known_tables(vocab))}")
    tables = _cache.setdefault(vocab, {})
    if name not in tables:
        if name in committed:
            counts = committed[name].counts.double()
            counts[sorted(vocab.special_tokens.values())] = 0.0  # zero weights drop the specials
            tables[name] = TokenSet.of(torch.arange(vocab.size), counts, what=f"freq({name!r})")
        else:
            text_counts = Counter(vocab.encode(_encodable(vocab, TEXTS[name]())))
            tables[name] = TokenSet.of(
                list(text_counts), [float(c) for c in text_counts.values()], what=f"freq({name!r})"
            )
    return tables[name]


def _no_arguments(name: str, args: tuple[ResolverArg, ...]) -> None:
    if args:
        raise ValueError(f"{name}() takes no arguments, got {len(args)}")


def all_tokens(vocab: Vocabulary, *args: ResolverArg) -> TokenSet:
    """Every non-special token of the vocabulary."""
    _no_arguments("vocab", args)
    special = set(vocab.special_tokens.values())
    return TokenSet.of([i for i in range(vocab.size) if i not in special])


def special_tokens(vocab: Vocabulary, *args: ResolverArg) -> TokenSet:
    """The special tokens (BOS, EOS, ...)."""
    _no_arguments("specials", args)
    return TokenSet.of(sorted(vocab.special_tokens.values()))


def freq(vocab: Vocabulary, *args: ResolverArg) -> TokenSet:
    """``freq(name)``: a named unigram frequency table as a weighted set."""
    if len(args) != 1 or not isinstance(args[0], str):
        raise ValueError(f"freq() takes one table name (one of {', '.join(known_tables(vocab))}), got {args!r}")
    return frequency_table(vocab, args[0])


@hookimpl
def register_token_sets(registrar: Registrar) -> None:
    """Register ``vocab``, ``specials`` and ``freq`` (``special`` is a DSL reserved word)."""
    registrar.add_token_set("vocab", all_tokens, usage="vocab()",
                            description="all non-special tokens of the model's vocabulary")
    registrar.add_token_set("specials", special_tokens, usage="specials()",
                            description="the special tokens (BOS, EOS, ...)")
    registrar.add_token_set("freq", freq, usage='freq("stdlib")',
                            description="unigram frequencies (weighted): 'stdlib' (Python source) or 'english' "
                                        "(the Gettysburg Address); for the built-in BPE tokenizer 'code', "
                                        "'english' and 'spanish' from its training corpus")
