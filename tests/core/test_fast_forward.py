"""The fast last-position forward equals TransformerLens' own forward (logits, activations, gradients)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from lowprob.core.fast_forward import FastForward
from lowprob.core.model import ModelAdapter
from lowprob.core.target import ArgmaxIs
from lowprob.plugins.testing import lookup_model, tiny_model

TOL = 1e-4


def _reference_logits(adapter: ModelAdapter, tokens: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return adapter.model(tokens)[:, -1, :].float()


@pytest.mark.parametrize("n_layers", [1, 2, 3])
def test_fast_logits_equal_the_full_forward(n_layers: int) -> None:
    adapter = tiny_model(d_vocab=11, n_ctx=12, n_layers=n_layers, d_model=16, seed=n_layers)
    assert adapter.fast_path is not None
    tokens = torch.randint(11, (64, 9), generator=torch.Generator().manual_seed(1))
    reference = _reference_logits(adapter, tokens)
    fast = adapter.last_logits(tokens)
    assert (fast - reference).abs().max() < TOL
    assert torch.equal(fast.argmax(-1), reference.argmax(-1))


def test_activations_and_gradients_match_the_reference_path() -> None:
    fast = tiny_model(d_vocab=9, n_ctx=8, n_layers=2, d_model=16, seed=4)
    slow = ModelAdapter(fast.model, fast.vocab, fast.name, fast=False)
    assert slow.fast_path is None
    tokens = torch.randint(9, (32, 6), generator=torch.Generator().manual_seed(2))
    a_fast, l_fast = fast.last_activations(tokens)
    a_slow, l_slow = slow.last_activations(tokens)
    assert (a_fast - a_slow).abs().max() < TOL and (l_fast - l_slow).abs().max() < TOL
    target = ArgmaxIs(3, "d")
    g_fast = fast.target_gradients(tokens, target)[1]
    g_slow = slow.target_gradients(tokens, target)[1]
    assert g_fast.shape == g_slow.shape == (32, 6, 9)
    assert (g_fast - g_slow).abs().max() < TOL * max(1.0, g_slow.abs().max().item())


@pytest.mark.parametrize("n_layers", [1, 2])
def test_first_layer_table_gives_the_same_logits(n_layers: int) -> None:
    adapter = tiny_model(d_vocab=10, n_ctx=8, n_layers=n_layers, d_model=16, seed=7)
    ff = adapter.fast_path
    assert ff is not None
    support = torch.zeros(5, 10, dtype=torch.bool)
    support[:, 2:8] = True
    table = ff.first_layer_table(support)
    tokens = torch.randint(2, 8, (40, 5), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert (ff.last_logits(tokens, table) - ff.last_logits(tokens)).abs().max() < TOL
    with pytest.raises(ValueError, match="outside"):
        ff.last_logits(torch.zeros(1, 5, dtype=torch.long), table)


def test_models_without_the_standard_architecture_keep_the_reference_path() -> None:
    assert lookup_model().fast_path is None
    adapter = tiny_model(seed=1)
    adapter.model.cfg.attn_only = True  # a different architecture: the fast path must refuse it
    try:
        assert FastForward.from_model(adapter.model) is None
    finally:
        adapter.model.cfg.attn_only = False


def test_self_check_rejects_weights_it_does_not_reproduce() -> None:
    adapter = tiny_model(seed=2)
    ff = adapter.fast_path
    assert ff is not None
    assert ff.self_check(adapter.model)
    ff.blocks[0] = dataclasses.replace(ff.blocks[0], W_out=ff.blocks[0].W_out * 2)  # not the model
    assert not ff.self_check(adapter.model)


def test_mean_target_gradients_equal_the_mean_of_per_sample_gradients() -> None:
    for adapter in (tiny_model(d_vocab=9, n_ctx=8, n_layers=2, d_model=16, seed=5), lookup_model()):
        tokens = torch.randint(adapter.d_vocab, (20, 3), generator=torch.Generator().manual_seed(6))
        target = ArgmaxIs(1, "b")
        logits, per_sample = adapter.target_gradients(tokens, target)
        mean_logits, mean = adapter.mean_target_gradients(tokens, target)
        assert torch.allclose(mean_logits, logits)
        assert mean.shape == per_sample.shape[1:]
        assert (mean - per_sample.mean(dim=0)).abs().max() < 1e-5 * max(1.0, per_sample.abs().max().item())


def test_embedding_gradients_project_to_the_token_scores() -> None:
    adapter = tiny_model(d_vocab=9, n_ctx=8, n_layers=1, d_model=16, seed=8)
    tokens = torch.randint(9, (10, 4), generator=torch.Generator().manual_seed(9))
    target = ArgmaxIs(2, "c")
    logits, scores = adapter.target_gradients(tokens, target)
    e_logits, grads = adapter.embedding_gradients(tokens, target)
    assert grads.shape == (10, 4, 16) and torch.equal(e_logits, logits)
    assert (grads @ adapter.W_E.T - scores).abs().max() < 1e-5 * max(1.0, scores.abs().max().item())


@pytest.mark.gpu
def test_fast_path_on_a_gpu_matches_the_reference_forward() -> None:
    adapter = tiny_model(d_vocab=11, n_ctx=12, n_layers=2, d_model=16, seed=3)
    model = adapter.model.to("cuda")
    gpu = ModelAdapter(model, adapter.vocab, adapter.name, device="cuda")
    assert gpu.fast_path is not None
    tokens = torch.randint(11, (64, 9), generator=torch.Generator().manual_seed(1))
    reference = _reference_logits(gpu, tokens.cuda()).cpu()
    assert torch.equal(gpu.last_logits(tokens).cpu().argmax(-1), reference.argmax(-1))


def test_the_chunk_size_changes_neither_logits_nor_gradients() -> None:
    """Chunks are memory and speed, not semantics: CPU_CHUNK_ROWS (the CPU default), 1024 and an odd size give the
    same logits and token gradients (up to float rounding, should a BLAS block rows differently by batch size)."""
    from lowprob.core.errors import LowprobError
    from lowprob.core.model import CPU_CHUNK_ROWS

    adapter = tiny_model(d_vocab=11, n_ctx=12, n_layers=2, d_model=16, seed=5)
    assert adapter.chunk_size == CPU_CHUNK_ROWS
    tokens = torch.randint(11, (600, 12), generator=torch.Generator().manual_seed(3))
    target = ArgmaxIs(4, "e")
    outputs = []
    for rows in (CPU_CHUNK_ROWS, 1024, 37):
        adapter.chunk_size = rows
        outputs.append((adapter.last_logits(tokens), *adapter.embedding_gradients(tokens, target)))
    for other in outputs[1:]:
        assert all(torch.allclose(a, b, rtol=1e-6, atol=1e-6) for a, b in zip(outputs[0], other, strict=True))
    with pytest.raises(LowprobError, match="chunk_size must be at least 1"):
        ModelAdapter(adapter.model, adapter.vocab, adapter.name, chunk_size=0)
