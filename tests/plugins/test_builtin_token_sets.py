"""The default vocabulary and the built-in token-set resolvers."""

from __future__ import annotations

import string

import pytest

from lowprob.core.vocabulary import ListVocabulary
from lowprob.plugins import load_registry
from lowprob.plugins.builtin.tokenizers import default_vocabulary

VOCAB = default_vocabulary()
RESOLVERS = load_registry(entry_points=False).token_set_resolvers()


def _strings(vocab: ListVocabulary = VOCAB) -> list[str]:
    return [vocab.token_string(i) for i in range(vocab.size)]


def test_vocabulary_layout() -> None:
    tokens = _strings()
    assert tokens[:2] == ["<|BOS|>", "<|EOS|>"]
    assert dict(VOCAB.special_tokens) == {"BOS": 0, "EOS": 1}
    assert len(tokens) == len(set(tokens)) < 1024
    must_have = {*string.printable[:95], "\n", "\t", "00", "ff", " the", "The", "HELLO", "STOP",
                 "ValueError", "HttpRequest", "lambda", ' "', ": ", "==", "->", " screamed", " said"}
    assert must_have <= set(tokens)
    assert sum(len(t) == 2 and all(c in "0123456789abcdef" for c in t) for t in tokens) == 256


def test_vocabulary_is_the_same_object_each_time() -> None:
    assert default_vocabulary() is VOCAB


def test_any_printable_ascii_text_encodes_and_round_trips() -> None:
    text = 'The boy said "STOP" -> ValueError: 0xff == 255\n\tdef f(): return None'
    assert VOCAB.decode(VOCAB.encode(text)) == text


def test_vocab_and_special_resolvers() -> None:
    assert len(RESOLVERS["vocab"](VOCAB)) == VOCAB.size - 2
    assert RESOLVERS["specials"](VOCAB).ids.tolist() == [0, 1]
    with pytest.raises(ValueError, match=r"vocab\(\) takes no arguments"):
        RESOLVERS["vocab"](VOCAB, 3)


@pytest.mark.parametrize("table", ["stdlib", "english"])
def test_frequency_tables_are_weighted_and_cached(table: str) -> None:
    tokens = RESOLVERS["freq"](VOCAB, table)
    assert tokens.weighted and len(tokens) > 50
    assert tokens.weights is not None and float(tokens.weights.min()) >= 1.0
    assert RESOLVERS["freq"](VOCAB, table) is tokens
    assert not set(tokens.ids.tolist()) & {0, 1}


def test_english_table_counts_words() -> None:
    tokens = RESOLVERS["freq"](VOCAB, "english")
    weight = dict(zip(tokens.ids.tolist(), tokens.weights.tolist(), strict=True))  # type: ignore[union-attr]
    (the,) = VOCAB.encode(" the")
    (nation,) = VOCAB.encode("e")
    assert weight[the] >= 5 and weight[nation] >= 1


def test_frequency_table_skips_characters_a_vocabulary_cannot_encode() -> None:
    small = ListVocabulary(["<s>", *"abcdefghijklmnopqrstuvwxyz "], special={"BOS": 0})
    tokens = RESOLVERS["freq"](small, "english")
    assert set(tokens.ids.tolist()) <= set(range(1, small.size))


@pytest.mark.parametrize(("args", "message"), [
    (("latin",), "unknown frequency table 'latin'; known tables: english, stdlib"),
    ((), r"freq\(\) takes one table name"),
    ((3,), r"freq\(\) takes one table name"),
])
def test_freq_rejects_bad_arguments(args: tuple[object, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RESOLVERS["freq"](VOCAB, *args)
