"""lowprob's ``Vocabulary`` over a Hugging Face ``tokenizers.Tokenizer``, for model loaders and the API.

``TokenizerVocabulary.from_file`` reads any ``tokenizer.json``; ``from_transformers`` wraps a ``transformers`` fast
tokenizer (what a ``TransformerBridge`` carries as ``.tokenizer``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

DEFAULT_SPECIALS = {"BOS": "<|BOS|>", "EOS": "<|EOS|>"}
"""Names and strings of the special tokens ``from_file`` looks for by default (those of the built-in tokenizer)."""


class TokenizerVocabulary:
    """A ``tokenizers.Tokenizer`` seen as a lowprob ``Vocabulary``.

    ``encode`` never adds special tokens and treats special-token text (``"<|BOS|>"``) as plain text, like
    ``ListVocabulary``; ``token_string(i)`` is ``decode([i])`` with specials kept (cached for all ids). The wrapped
    tokenizer is a private copy, so the caller's object is never changed. ``special`` maps names (``"BOS"``,
    ``"EOS"``) to ids. ``size`` makes the vocabulary exactly a model's ``d_vocab``: extra embedding rows read as
    empty strings, and tokenizer ids the model cannot produce are cut off.
    """

    def __init__(self, tokenizer: Tokenizer, special: Mapping[str, int], size: int | None = None) -> None:
        self._tokenizer = Tokenizer.from_str(tokenizer.to_str())
        self._tokenizer.encode_special_tokens = True
        self._special = dict(special)
        known = self._tokenizer.get_vocab_size(with_added_tokens=True)
        size = known if size is None else size
        self._strings = [self._tokenizer.decode([i], skip_special_tokens=False) for i in range(min(known, size))]
        self._strings += [""] * (size - len(self._strings))
        bad = {name: i for name, i in self._special.items() if not 0 <= i < len(self._strings)}
        if bad:
            raise ValueError(f"special token ids out of range 0..{len(self._strings) - 1}: {bad}")

    @classmethod
    def from_file(cls, path: str | Path, special: Mapping[str, str] | None = None) -> TokenizerVocabulary:
        """Load a ``tokenizer.json``; ``special`` maps names to token strings (default: ``<|BOS|>``/``<|EOS|>``)."""
        tokenizer = Tokenizer.from_file(str(path))
        names = DEFAULT_SPECIALS if special is None else special
        ids = {name: tokenizer.token_to_id(text) for name, text in names.items()}
        missing = sorted(name for name, i in ids.items() if i is None)
        if missing:
            raise ValueError(f"{path}: no token for special {', '.join(f'{n}={names[n]!r}' for n in missing)}")
        return cls(tokenizer, {name: i for name, i in ids.items() if i is not None})

    @classmethod
    def from_transformers(cls, tokenizer: Any, size: int | None = None) -> TokenizerVocabulary:
        """Wrap a ``transformers`` fast tokenizer; its ``bos_token_id``/``eos_token_id`` become BOS/EOS."""
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if not isinstance(backend, Tokenizer):
            raise TypeError(f"{type(tokenizer).__name__} is not a fast tokenizer (no backend_tokenizer); "
                            "load it with use_fast=True")
        ids = {"BOS": tokenizer.bos_token_id, "EOS": tokenizer.eos_token_id}
        limit = size if size is not None else backend.get_vocab_size(with_added_tokens=True)
        return cls(backend, {name: int(i) for name, i in ids.items() if i is not None and i < limit}, size)

    @property
    def size(self) -> int:
        return len(self._strings)

    @property
    def special_tokens(self) -> Mapping[str, int]:
        return dict(self._special)

    def token_string(self, token_id: int) -> str:
        return self._strings[token_id]

    def encode(self, text: str) -> list[int]:
        return list(self._tokenizer.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: Sequence[int]) -> str:
        return self._tokenizer.decode([int(i) for i in ids], skip_special_tokens=False)
