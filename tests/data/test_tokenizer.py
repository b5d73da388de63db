"""The committed byte-level BPE tokenizer: layout, round trips, no automatic BOS, enough tokens of each class."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
from tokenizers import Tokenizer

from lowprob.core.vocabulary import Vocabulary
from lowprob.plugins.builtin.frequency import BUILTIN_TABLES, builtin_table_path
from lowprob.plugins.builtin.hf_vocab import builtin_tokenizer_path, builtin_vocabulary
from lowprob.plugins.frequency_tables import load_table
from lowprob.plugins.tokenizer_vocabulary import TokenizerVocabulary

VOCAB = builtin_vocabulary()
SAMPLES = [
    "def parse_header(self, line: bytes) -> dict[str, int]:\n    return {'0xff': 255}  # HttpRequest\n",
    "The Debian project maintains thousands of packages.\n\tTabs, \"quotes\" and émojis 🙂 survive.",
    "La configuración del núcleo está en el archivo /etc/sysctl.conf; ¿también la página?",
    "  leading spaces and <|BOS|> text stay plain",
]
MINIMUMS = {"hex": 150, "camel": 200, "caps": 400, "english": 3000, "spanish": 600}
"""Class sizes the paper's distributions need (actual counts are in docs/models.md)."""


def _script(name: str) -> ModuleType:
    path = Path(__file__).resolve().parents[2] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_tokenizer_file_layout() -> None:
    raw = Tokenizer.from_file(str(builtin_tokenizer_path()))
    assert raw.get_vocab_size(with_added_tokens=True) == VOCAB.size == 8192
    assert dict(VOCAB.special_tokens) == {"BOS": 0, "EOS": 1}
    assert [VOCAB.token_string(i) for i in (0, 1)] == ["<|BOS|>", "<|EOS|>"]
    assert raw.encode("").ids == [] and raw.encode("x").ids == VOCAB.encode("x")
    assert isinstance(VOCAB, Vocabulary) and builtin_vocabulary() is VOCAB


@pytest.mark.parametrize("text", SAMPLES)
def test_encode_decode_round_trips_without_specials(text: str) -> None:
    ids = VOCAB.encode(text)
    assert VOCAB.decode(ids) == text
    assert not {0, 1} & set(ids)


def test_code_and_prose_compress() -> None:
    assert len(VOCAB.encode(SAMPLES[0])) < len(SAMPLES[0]) / 2.5
    assert len(VOCAB.encode(" the and of to in")) == 5


def test_decode_keeps_special_tokens() -> None:
    assert VOCAB.decode([0, *VOCAB.encode("hi"), 1]) == "<|BOS|>hi<|EOS|>"


def test_wrapping_leaves_the_callers_tokenizer_alone() -> None:
    raw = Tokenizer.from_file(str(builtin_tokenizer_path()))
    TokenizerVocabulary(raw, {"BOS": 0, "EOS": 1})
    assert raw.encode("<|BOS|>", add_special_tokens=False).ids == [0]
    assert VOCAB.encode("<|BOS|>") != [0]


def test_missing_special_token_is_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"no token for special BOS='<s>'"):
        TokenizerVocabulary.from_file(builtin_tokenizer_path(), {"BOS": "<s>"})


def test_token_classes_are_large_enough() -> None:
    train = _script("train_tokenizer")
    strings = [VOCAB.token_string(i) for i in range(VOCAB.size)]
    tables = {name: load_table(builtin_table_path(name)).counts for name in BUILTIN_TABLES}
    sizes = {name: len(found) for name, found in train.token_classes(strings, tables).items()}
    assert all(sizes[name] >= low for name, low in MINIMUMS.items()), sizes
    assert {"0", "ff", "de"} <= set(train.token_classes(strings, tables)["hex"])
