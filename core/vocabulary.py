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
