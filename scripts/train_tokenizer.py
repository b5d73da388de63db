"""Train lowprob's built-in tokenizer and its per-slice frequency tables from the corpus of ``build_corpus.py``.

Byte-level BPE (GPT-2 pre-tokenizer and decoder, no normalizer, no post-processor, so nothing is added on encode)
with 8192 tokens: ``<|BOS|>`` (id 0), ``<|EOS|>`` (id 1), the 256 byte tokens, then merges. Documents are fed in a
fixed order (slices ``code``, ``english``, ``spanish``; files in name order). BPE training in ``tokenizers`` is
deterministic for a fixed input: word counts do not depend on order or threads, and ties between equally frequent
pairs are broken by pair ids, which come from the sorted byte alphabet. The script prints the tokenizer's sha256 so a
rerun can be checked, then writes ``freq-<slice>.json`` beside it and reports token-class counts.

Usage: ``make tokenizer`` or ``python scripts/train_tokenizer.py [CORPUS] [OUTDIR]``
(defaults ``data/corpus`` and ``plugins/builtin/data``).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from collections.abc import Iterator
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from lowprob.plugins.builtin.hf_vocab import BUILTIN_SPECIALS
from lowprob.plugins.frequency_tables import FrequencyTable, build_frequency_table, save_table, vocabulary_fingerprint
from lowprob.plugins.tokenizer_vocabulary import TokenizerVocabulary

VOCAB_SIZE = 8192
SLICES = ("code", "english", "spanish")
HEX = set("0123456789abcdef")
CAPS_PUNCTUATION = set(",.?!:;")
SPANISH_TOP = 1000


def slice_files(corpus: Path, name: str) -> list[Path]:
    """The documents of slice ``name`` in order; a missing slice says how to build the corpus."""
    files = sorted((corpus / name).glob("*.txt"))
    if not files:
        sys.exit(f"no documents in {corpus / name}; build the corpus first with `make corpus`")
    return files


def documents(corpus: Path) -> Iterator[str]:
    for name in SLICES:
        for path in slice_files(corpus, name):
            yield path.read_text(encoding="utf-8")


def train(corpus: Path) -> Tokenizer:
    """Byte-level BPE with the special tokens first."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=list(BUILTIN_SPECIALS.values()),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(documents(corpus), trainer=trainer)
    return tokenizer


def is_hex(s: str) -> bool:
    return bool(s) and set(s) <= HEX


def is_camel(s: str) -> bool:
    """The paper's rule: longer than one char, first upper, rest lower, no space, not None/True/False."""
    return len(s) > 1 and s[0].isupper() and s[1:].islower() and " " not in s and s not in ("None", "True", "False")


def is_caps(s: str) -> bool:
    return len(s) > 1 and all(c.isupper() or c in CAPS_PUNCTUATION for c in s)


def is_english_word(s: str) -> bool:
    return len(s) > 1 and s[0] == " " and s[1:].isalpha()


def top_ids(counts: torch.Tensor, k: int) -> set[int]:
    return set(torch.argsort(counts, descending=True, stable=True)[:k].tolist())


def token_classes(strings: list[str], tables: dict[str, torch.Tensor]) -> dict[str, list[str]]:
    """Tokens of each class the paper's distributions draw from.

    ``spanish``: alphabetic words (leading space allowed, accents included) among the spanish slice's top 1000;
    ``spanish-only``: those of them outside the english slice's top 1000.
    """
    words = {i for i, s in enumerate(strings) if len(s.lstrip(" ")) > 1 and s.lstrip(" ").isalpha()}
    spanish = sorted(words & top_ids(tables["spanish"], SPANISH_TOP))
    english_top = top_ids(tables["english"], SPANISH_TOP)
    return {
        "hex": [s for s in strings if is_hex(s)],
        "camel": [s for s in strings if is_camel(s)],
        "caps": [s for s in strings if is_caps(s)],
        "english": [s for s in strings if is_english_word(s)],
        "spanish": [strings[i] for i in spanish],
        "spanish-only": [strings[i] for i in spanish if i not in english_top],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("corpus", nargs="?", type=Path, default=Path("data/corpus"))
    parser.add_argument("outdir", nargs="?", type=Path, default=Path("plugins/builtin/data"))
    args = parser.parse_args()
    args.outdir.mkdir(parents=True, exist_ok=True)
    out = args.outdir / "tokenizer.json"
    train(args.corpus).save(str(out))
    print(f"tokenizer {out} {out.stat().st_size:,d} bytes sha256 {hashlib.sha256(out.read_bytes()).hexdigest()}")
    vocab = TokenizerVocabulary.from_file(out)
    fingerprint = vocabulary_fingerprint(vocab)
    tables: dict[str, torch.Tensor] = {}
    for name in SLICES:
        files = slice_files(args.corpus, name)
        tables[name] = build_frequency_table(vocab, files)
        save_table(args.outdir / f"freq-{name}.json", FrequencyTable(name, len(files), fingerprint, tables[name]))
        print(f"freq-{name}.json: {len(files)} documents, {int(tables[name].sum()):,d} tokens")
    strings = [vocab.token_string(i) for i in range(vocab.size)]
    for name, found in token_classes(strings, tables).items():
        print(f"{name:12s} {len(found):5d}  e.g. {' '.join(repr(s) for s in found[:12])}")


if __name__ == "__main__":
    main()
