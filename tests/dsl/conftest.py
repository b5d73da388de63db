"""Shared fixtures for the DSL tests: a small vocabulary and plain-function resolvers."""

from __future__ import annotations

import pytest

from lowprob.core.tokenset import ResolverArg, TokenSet
from lowprob.core.vocabulary import ListVocabulary, Vocabulary

TOKENS = [
    "<bos>", "<eos>", "a", "b", "c", "d", "e", "f", "0", "1", "2", "3", "He", "She", " said", ":", " ",
    "ff", "00", "ab", "HELLO", "A", "B", " screamed", "<pad>",
]
"""Ids are list positions: "<bos>" 0, "<eos>" 1, "a" 2 ... "f" 7, "0" 8 ... "3" 11, "He" 12, "She" 13,
" said" 14, ":" 15, " " 16, "ff" 17, "00" 18, "ab" 19, "HELLO" 20, "A" 21, "B" 22, " screamed" 23."""

ID = {t: i for i, t in enumerate(TOKENS)}


def make_vocab() -> ListVocabulary:
    return ListVocabulary(TOKENS, special={"BOS": 0, "EOS": 1, "PAD": 24})


def freq(vocab: Vocabulary, name: ResolverArg) -> TokenSet:
    """A toy frequency table: weight 1 + id for the letters a..f and the digits."""
    if name != "stdlib":
        raise ValueError(f"no frequency table {name!r}; try 'stdlib'")
    ids = [ID[t] for t in "abcdef0123"]
    return TokenSet.of(ids, [1.0 + i for i in ids])


def nothing(vocab: Vocabulary) -> TokenSet:
    return TokenSet.of([])


RESOLVERS = {"freq": freq, "nothing": nothing}


@pytest.fixture
def vocab() -> ListVocabulary:
    return make_vocab()
