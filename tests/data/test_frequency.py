"""Frequency tables: exact counts, the committed tables, the CLI command and the ``freq()`` resolver."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from lowprob.cli import main
from lowprob.core.vocabulary import ListVocabulary
from lowprob.plugins import load_registry
from lowprob.plugins.builtin.frequency import BUILTIN_TABLES, builtin_table_path
from lowprob.plugins.builtin.hf_vocab import builtin_tokenizer_path, builtin_vocabulary
from lowprob.plugins.builtin.tokenizers import default_vocabulary
from lowprob.plugins.frequency_tables import (
    FrequencyTable,
    build_frequency_table,
    load_table,
    save_table,
    vocabulary_fingerprint,
)

TINY = ListVocabulary(["<s>", "</s>", "a", "b", "ab", " "], special={"BOS": 0, "EOS": 1})
FREQ = load_registry(entry_points=False).token_set_resolvers()["freq"]


def _docs(tmp_path: Path, *texts: str) -> list[Path]:
    paths = [tmp_path / f"{i}.txt" for i in range(len(texts))]
    for path, text in zip(paths, texts, strict=True):
        path.write_text(text, encoding="utf-8")
    return paths


def test_counts_on_a_known_text_are_exact(tmp_path: Path) -> None:
    # "abab a" -> <s> ab ab " " a </s>;  "ba" -> <s> b a </s>
    counts = build_frequency_table(TINY, _docs(tmp_path, "abab a", "ba"))
    assert counts.tolist() == [2, 2, 2, 1, 2, 1]


def test_documents_are_truncated_bos_and_eos_included(tmp_path: Path) -> None:
    # "abab a" truncated to 3 tokens -> <s> ab ab
    assert build_frequency_table(TINY, _docs(tmp_path, "abab a"), max_tokens=3).tolist() == [1, 0, 0, 0, 2, 0]


def test_a_vocabulary_without_eos_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no EOS token"):
        build_frequency_table(ListVocabulary(["<s>", "a"], {"BOS": 0}), _docs(tmp_path, "a"))


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    table = FrequencyTable("tiny", 2, vocabulary_fingerprint(TINY), torch.tensor([2, 2, 2, 1, 2, 1]))
    save_table(tmp_path / "t.json", table)
    back = load_table(tmp_path / "t.json")
    assert (back.name, back.documents, back.fingerprint) == ("tiny", 2, table.fingerprint)
    assert torch.equal(back.counts, table.counts)


@pytest.mark.parametrize("name", BUILTIN_TABLES)
def test_committed_tables_match_the_tokenizer(name: str) -> None:
    vocab = builtin_vocabulary()
    table = load_table(builtin_table_path(name))
    assert table.name == name and table.documents > 100
    assert table.counts.shape == (vocab.size,) and table.fingerprint == vocabulary_fingerprint(vocab)
    assert table.counts[0] == table.documents >= table.counts[1]  # one BOS per document; long ones lose their EOS
    assert builtin_table_path(name).stat().st_size < 100_000


def test_cli_builds_a_table_for_any_tokenizer_json(tmp_path: Path) -> None:
    vocab = builtin_vocabulary()
    (doc,) = _docs(tmp_path, "def main():\n    return None\n")
    out = tmp_path / "freq-mine.json"
    result = CliRunner().invoke(main, ["freq-table", "--tokenizer", str(builtin_tokenizer_path()),
                                       "--output", str(out), str(doc)])
    assert result.exit_code == 0, result.output
    record = json.loads(out.read_text())
    expected = torch.bincount(torch.tensor([0, *vocab.encode(doc.read_text()), 1]), minlength=vocab.size)
    assert record["counts"] == expected.tolist() and record["documents"] == 1 and record["name"] == "freq-mine"


def test_cli_names_a_missing_special_token(tmp_path: Path) -> None:
    (doc,) = _docs(tmp_path, "x")
    result = CliRunner().invoke(main, ["freq-table", "--tokenizer", str(builtin_tokenizer_path()), "--bos", "<s>",
                                       "--output", str(tmp_path / "o.json"), str(doc)])
    assert result.exit_code == 1 and "no token for special BOS='<s>'" in result.output


@pytest.mark.parametrize("name", BUILTIN_TABLES)
def test_resolver_serves_committed_tables_for_the_bpe_vocabulary(name: str) -> None:
    vocab = builtin_vocabulary()
    tokens = FREQ(vocab, name)
    counts = load_table(builtin_table_path(name)).counts
    assert tokens.weights is not None and not {0, 1} & set(tokens.ids.tolist())
    assert tokens.weights.tolist() == counts[tokens.ids].double().tolist()
    assert len(tokens) == int((counts[2:] > 0).sum())
    assert FREQ(vocab, name) is tokens


def test_resolver_code_table_looks_like_python() -> None:
    vocab = builtin_vocabulary()
    tokens = FREQ(vocab, "code")
    top = {vocab.token_string(i) for i in tokens.ids[torch.argsort(tokens.weights, descending=True)[:100]].tolist()}
    assert {" self", " def", " return", "):"} <= top


def test_unknown_table_lists_the_tables_of_that_vocabulary() -> None:
    with pytest.raises(ValueError, match="known tables: code, english, spanish, stdlib"):
        FREQ(builtin_vocabulary(), "latin")
    with pytest.raises(ValueError, match="known tables: english, stdlib$"):
        FREQ(default_vocabulary(), "code")
