"""The low-precision unembedding's argmax is the float32 one: the error bound holds, and uncertified rows are
recomputed in float32."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from lowprob.api import compile_source, resolve_spec
from lowprob.core.certified_argmax import PRECISIONS, CertifiedUnembedding
from lowprob.core.errors import LowprobError
from lowprob.plugins import load_registry

CHEAP = ["bf16", "fp16"]


def _unembedding(seed: int, d: int = 64, vocab: int = 500, bias: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(d, vocab, generator=gen) / d**0.5, bias * torch.randn(vocab, generator=gen)


def _activations(seed: int, n: int = 256, d: int = 64, scale: float = 1.0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed + 1000)
    return scale * torch.nn.functional.layer_norm(torch.randn(n, d, generator=gen), (d,))


@pytest.mark.parametrize("name", CHEAP)
@given(seed=st.integers(0, 10_000), scale=st.sampled_from([0.01, 1.0, 30.0, 1000.0]))
def test_the_bound_holds_for_every_logit(name: str, seed: int, scale: float) -> None:
    W_U, b_U = _unembedding(seed)  # noqa: N806
    unembed = CertifiedUnembedding(W_U, b_U, name)
    a = _activations(seed, scale=scale)
    cheap, eps = unembed.cheap_logits(a)
    gap = (cheap - unembed.reference_logits(a)).abs()
    assert bool((gap <= eps).all()), f"bound violated by {float((gap - eps).max()):.3g}"
    assert float(gap.max()) > 0  # the cheap logits really are cheaper (inexact)


@pytest.mark.parametrize("name", CHEAP)
@given(seed=st.integers(0, 10_000))
def test_certified_argmax_equals_the_float32_argmax(name: str, seed: int) -> None:
    W_U, b_U = _unembedding(seed)  # noqa: N806
    a = _activations(seed)
    unembed = CertifiedUnembedding(W_U, b_U, name)
    assert torch.equal(unembed.argmax(a).argmax, unembed.reference_logits(a).argmax(dim=-1))


@pytest.fixture(scope="module")
def built_in() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """lowprob-1l's unembedding and its last-position activations and logits on 4096 hex inputs."""
    registry = load_registry()
    compiled = compile_source(registry, resolve_spec("hex", registry), model="lowprob-1l")
    fast = compiled.model.fast_path
    assert fast is not None
    tokens = compiled.spec.distribution(None).sample(4096, torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, logits = fast.last_activations(tokens)
    return fast.W_U, fast.b_U, a, logits


@pytest.mark.parametrize("name", CHEAP)
def test_built_in_model_argmaxes_survive_low_precision(
        name: str, built_in: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]) -> None:
    """On lowprob-1l/hex the raw low-precision argmax is wrong on some rows; the certified one never is."""
    W_U, b_U, a, logits = built_in  # noqa: N806
    unembed = CertifiedUnembedding(W_U, b_U, name)
    reference = logits.argmax(dim=-1)
    raw = unembed.cheap_logits(a)[0].argmax(dim=-1)
    result = unembed.argmax(a)
    assert int((raw != reference).sum()) > 0  # without the recheck the counts would be wrong
    assert torch.equal(result.argmax, reference)
    assert 0 < result.rechecked < a.shape[0]  # most rows certified, the close ones recomputed


def test_exact_and_near_ties_are_recomputed() -> None:
    W_U, b_U = _unembedding(3, vocab=50, bias=0.0)  # noqa: N806
    a = _activations(3, n=64)
    W_U[:, 7] = a[0] * 100  # column 7 wins row 0 by far; column 9 ties it exactly, column 11 nearly
    W_U[:, 9] = W_U[:, 7]
    W_U[:, 11] = W_U[:, 7] * (1 + 1e-6)
    unembed = CertifiedUnembedding(W_U, b_U, "bf16")
    result = unembed.argmax(a)
    assert torch.equal(result.argmax, unembed.reference_logits(a).argmax(dim=-1))
    assert result.rechecked >= 1 and int(result.argmax[0]) in (7, 11)


def test_overflowing_rows_fall_back_to_float32() -> None:
    W_U, b_U = _unembedding(5)  # noqa: N806
    a = _activations(5, n=8)
    a[3] *= 1e6  # float16 overflows (max 65504): this row's cheap logits are inf
    unembed = CertifiedUnembedding(W_U, b_U, "fp16")
    assert not bool(unembed.cheap_logits(a)[0][3].isfinite().all())
    result = unembed.argmax(a)
    assert torch.equal(result.argmax, unembed.reference_logits(a).argmax(dim=-1)) and result.rechecked >= 1


def test_fp32_is_the_reference_itself() -> None:
    W_U, b_U = _unembedding(2)  # noqa: N806
    a = _activations(2)
    result = CertifiedUnembedding(W_U, b_U, "fp32").argmax(a)
    assert result.rechecked == 0 and torch.equal(result.argmax, (a @ W_U + b_U).argmax(dim=-1))


def test_unknown_and_cuda_only_precisions_are_clear_errors() -> None:
    W_U, b_U = _unembedding(1)  # noqa: N806
    with pytest.raises(LowprobError, match="unknown precision 'fp8'; known: fp32, bf16, fp16, tf32"):
        CertifiedUnembedding(W_U, b_U, "fp8")
    with pytest.raises(LowprobError, match="'tf32' is a CUDA tensor-core mode"):
        CertifiedUnembedding(W_U, b_U, "tf32")


@pytest.mark.gpu
@pytest.mark.parametrize("name", [p for p in PRECISIONS if p != "fp32"])
def test_gpu_precisions_give_the_float32_argmax(name: str) -> None:
    W_U, b_U = _unembedding(4, d=512, vocab=48262)  # noqa: N806 - the gelu-1l shape
    a = _activations(4, n=4096, d=512).cuda()
    unembed = CertifiedUnembedding(W_U.cuda(), b_U.cuda(), name)
    cheap, eps = unembed.cheap_logits(a)
    reference = unembed.reference_logits(a)
    assert bool(((cheap - reference).abs() <= eps).all())
    assert torch.equal(unembed.argmax(a).argmax, reference.argmax(dim=-1))
