"""Fabricated inputs for the loader tests: a tiny byte-level BPE tokenizer and a temporary Hugging Face cache."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

TEXT = ["def f(x):\n    return x + 1\n", "The cat sat on the mat.", "El gato se sentó.", "0x1f 0xff CamelCase"] * 4
COMMIT = "0" * 40


@pytest.fixture(scope="session")
def tiny_tokenizer():  # type: ignore[no-untyped-def]
    """A byte-level BPE tokenizer of 300 tokens with ``<s>`` (BOS, id 0) and ``</s>`` (EOS, id 1)."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(TEXT, vocab_size=300, min_frequency=1, special_tokens=["<s>", "</s>"])
    return PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<s>", eos_token="</s>")


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hugging Face hub cache that every hub lookup in this test uses."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


def _put(cache: Path, repo: str, files: dict[str, bytes]) -> Path:
    """Write ``files`` into ``cache`` as the ``main`` snapshot of model repo ``repo`` (the hub's layout)."""
    root = cache / f"models--{repo.replace('/', '--')}"
    snapshot = root / "snapshots" / COMMIT
    snapshot.mkdir(parents=True, exist_ok=True)
    (root / "refs").mkdir(exist_ok=True)
    (root / "refs" / "main").write_text(COMMIT)
    for name, data in files.items():
        (snapshot / name).write_bytes(data)
    return snapshot


@pytest.fixture
def put_in_cache() -> Callable[[Path, str, dict[str, bytes]], Path]:
    return _put
