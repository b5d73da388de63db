"""The DSL tests' toy vocabulary and plain-function resolvers (the docs' examples use them too)."""

from __future__ import annotations

from lowprob.core.token_set import ResolverArg, TokenSet
from lowprob.core.vocabulary import ListVocabulary, Vocabulary

# fmt: off
TOKENS = [
    "<bos>", "<eos>", "a", "b", "c", "d", "e", "f", "0", "1", "2", "3", "He", "She", " said", ":",
    " ",
    "ff", "00", "ab", "HELLO", "A", "B", " screamed", "<pad>",
]
# fmt: on
"""Ids are list positions: "<bos>" 0, "<eos>" 1, "a".."f" 2..7, "0".."3" 8..11, "He" 12, "She" 13,
" said" 14, ":" 15, " " 16, "ff" 17, "00" 18, "ab" 19, "HELLO" 20, "A" 21, "B" 22, " screamed" 23;
"<pad>" 24 is the special token PAD."""

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
