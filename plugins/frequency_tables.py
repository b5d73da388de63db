"""Unigram token-frequency tables built the paper's way: the format the ``freq`` token-set resolver reads.

Each document is tokenized as ``[BOS] + tokens + [EOS]``, truncated to ``2**14`` tokens, and counted (paper.md
§3.1). A table file is JSON: the slice name, document count, the vocabulary's fingerprint and one count per id.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from lowprob.core.vocabulary import Vocabulary

MAX_DOCUMENT_TOKENS = 2**14
"""Each document is truncated to this many tokens, BOS and EOS included (as in the paper)."""


@dataclass(frozen=True)
class FrequencyTable:
    """Token counts (length ``vocab.size``) of a named text collection under one vocabulary."""

    name: str
    documents: int
    fingerprint: str
    counts: torch.Tensor


def vocabulary_fingerprint(vocab: Vocabulary) -> str:
    """sha256 of the vocabulary's token strings and special ids: tables apply only to a matching vocabulary."""
    payload = json.dumps([[vocab.token_string(i) for i in range(vocab.size)], sorted(vocab.special_tokens.items())])
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def build_frequency_table(vocab: Vocabulary, files: Iterable[Path],
                          max_tokens: int = MAX_DOCUMENT_TOKENS) -> torch.Tensor:
    """Counts of each token id over ``files`` (one document each) as ``[BOS] + tokens + [EOS]``, truncated."""
    special = vocab.special_tokens
    missing = [name for name in ("BOS", "EOS") if name not in special]
    if missing:
        raise ValueError(f"the vocabulary has no {' or '.join(missing)} token; frequency tables need both")
    counts = torch.zeros(vocab.size, dtype=torch.int64)
    for path in files:
        ids = [special["BOS"], *vocab.encode(Path(path).read_text(encoding="utf-8")), special["EOS"]][:max_tokens]
        counts += torch.bincount(torch.tensor(ids, dtype=torch.int64), minlength=vocab.size)
    return counts


def save_table(path: Path, table: FrequencyTable) -> None:
    """Write ``table`` as compact JSON."""
    record = {"name": table.name, "documents": table.documents, "fingerprint": table.fingerprint,
              "counts": table.counts.tolist()}
    path.write_text(json.dumps(record, separators=(",", ":")) + "\n", encoding="utf-8")


def load_table(path: Path) -> FrequencyTable:
    """Read a table written by ``save_table``."""
    record = json.loads(Path(path).read_text(encoding="utf-8"))
    return FrequencyTable(record["name"], record["documents"], record["fingerprint"],
                          torch.tensor(record["counts"], dtype=torch.int64))
