"""The built-in BPE tokenizer shipped in ``data/``, as a lowprob ``Vocabulary`` (see
:mod:`lowprob.plugins.tokenizer_vocabulary` for the vocabulary over any Hugging Face tokenizer)."""

from __future__ import annotations

import importlib.resources
from functools import cache
from pathlib import Path

from lowprob.plugins.tokenizer_vocabulary import DEFAULT_SPECIALS, TokenizerVocabulary

BUILTIN_SPECIALS = DEFAULT_SPECIALS
"""Names and strings of the built-in tokenizer's special tokens (ids 0 and 1)."""


def builtin_tokenizer_path() -> Path:
    """The committed ``tokenizer.json`` (found through ``importlib.resources``, so wheels work too)."""
    path = Path(str(importlib.resources.files("lowprob.plugins.builtin") / "data" / "tokenizer.json"))
    if not path.is_file():
        raise FileNotFoundError(f"built-in tokenizer missing at {path}; rebuild it with `make tokenizer`")
    return path


@cache
def builtin_vocabulary() -> TokenizerVocabulary:
    """The built-in 8192-token byte-level BPE vocabulary (one shared instance)."""
    return TokenizerVocabulary.from_file(builtin_tokenizer_path())
