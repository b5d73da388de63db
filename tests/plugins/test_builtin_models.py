"""The built-in random models: offline, lazy, matched to the default vocabulary, non-degenerate."""

from __future__ import annotations

import pytest
import torch

from lowprob.plugins import load_registry
from lowprob.plugins.builtin.tokenizers import default_vocabulary

SAMPLES = 2000


@pytest.fixture(scope="module")
def model():  # type: ignore[no-untyped-def]
    return load_registry(entry_points=False).model("random-1l")


def test_default_model_loads_offline_and_matches_the_vocabulary(model) -> None:  # type: ignore[no-untyped-def]
    assert model.name == "random-1l"
    assert model.vocab is default_vocabulary()
    assert model.d_vocab == model.vocab.size
    assert model.n_ctx == 64


def test_random_model_is_deterministic(model) -> None:  # type: ignore[no-untyped-def]
    again = load_registry(entry_points=False).model("random-1l")
    assert again is not model
    assert torch.equal(again.W_U, model.W_U)


def test_argmax_histogram_is_not_degenerate(model) -> None:  # type: ignore[no-untyped-def]
    """Under BOS + 16 uniform non-special tokens the argmax is spread over many tokens, with a tail."""
    gen = torch.Generator().manual_seed(0)
    body = torch.randint(2, model.d_vocab, (SAMPLES, 16), generator=gen)
    tokens = torch.cat([torch.zeros(SAMPLES, 1, dtype=torch.int64), body], dim=1)
    counts = torch.bincount(model.last_logits(tokens).argmax(-1), minlength=model.d_vocab)
    seen = counts[counts > 0]
    assert seen.numel() >= 100, f"only {seen.numel()} distinct argmax tokens"
    assert int(seen.max()) < SAMPLES // 4, "one token dominates the argmax"
    assert int((seen == 1).sum()) >= 10, "no long tail of rare argmax tokens"


def test_second_model_has_two_layers() -> None:
    model = load_registry(entry_points=False).model("random-2l")
    assert model.model.cfg.n_layers == 2
    assert model.d_vocab == default_vocabulary().size
