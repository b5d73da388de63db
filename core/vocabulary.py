"""The tokenizer view the rest of lowprob needs: token strings, encode/decode and named special tokens."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable


@runtime_checkable
class Vocabulary(Protocol):
    """A model's tokenizer as lowprob sees it.

    ``size`` must equal the model's ``d_vocab``; ids are ``0 .. size-1``. ``token_string(i)`` is the text of
    token ``i`` decoded on its own (what DSL regular expressions and filters match against).
    ``special_tokens`` maps names such as ``"BOS"`` and ``"EOS"`` to ids.
    """

    @property
    def size(self) -> int: ...

    @property
    def special_tokens(self) -> Mapping[str, int]: ...

    def token_string(self, token_id: int) -> str: ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


def token_strings(vocab: Vocabulary) -> list[str]:
    """All token strings of ``vocab`` in id order (handy for regular-expression scans)."""
    return [vocab.token_string(i) for i in range(vocab.size)]


class ListVocabulary:
    """A vocabulary given as a list of token strings, encoded by greedy longest match.

    Good for toy models, tests and the built-in default model; real tokenizers come through model loaders.
    ``special`` maps names (``"BOS"``, ``"EOS"``) to ids; special tokens never match plain text in ``encode``.
    """

    def __init__(self, tokens: Sequence[str], special: Mapping[str, int] | None = None) -> None:
        self._tokens = list(tokens)
        self._special = dict(special or {})
        special_ids = set(self._special.values())
        self._lookup: dict[str, int] = {}
        for i, tok in enumerate(self._tokens):
            if i not in special_ids and tok and tok not in self._lookup:
                self._lookup[tok] = i
        self._longest = max((len(t) for t in self._lookup), default=1)

    @property
    def size(self) -> int:
        return len(self._tokens)

    @property
    def special_tokens(self) -> Mapping[str, int]:
        return dict(self._special)

    def token_string(self, token_id: int) -> str:
        return self._tokens[token_id]

    def encode(self, text: str) -> list[int]:
        ids, i = [], 0
        while i < len(text):
            for n in range(min(self._longest, len(text) - i), 0, -1):
                hit = self._lookup.get(text[i:i + n])
                if hit is not None:
                    ids.append(hit)
                    i += n
                    break
            else:
                raise ValueError(f"character {text[i]!r} at offset {i} has no token in this vocabulary")
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(self._tokens[int(i)] for i in ids)
