"""The paper's legacy TransformerLens checkpoints (``gelu-1l`` ...) from a fabricated local Hugging Face cache."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F  # noqa: N812

from lowprob.core.errors import LowprobError
from lowprob.plugins import load_registry
from lowprob.plugins.builtin.loaders import GELU_TOKENIZER_REPO, LEGACY_MODELS

REPO = "NeelNanda/GELU_1L512W_C4_Code"
N_LAYERS, D_MODEL, N_HEADS, D_HEAD, D_MLP, N_CTX = 1, 16, 2, 8, 64, 32
ATOL = 1e-5
"""float32 logits of the loaded bridge against the reference forward of the same weights."""


def _config(d_vocab: int) -> dict[str, object]:
    """A legacy TransformerLens config.json of the GELU family, scaled down."""
    return {"n_layers": N_LAYERS, "d_model": D_MODEL, "d_mlp": D_MLP, "d_head": D_HEAD, "n_heads": N_HEADS,
            "n_ctx": N_CTX, "d_vocab": d_vocab, "act_fn": "gelu", "attn_only": False, "normalization_type": "LN",
            "positional_embedding_type": "standard", "tokenizer_name": GELU_TOKENIZER_REPO}


def _state_dict(d_vocab: int) -> dict[str, torch.Tensor]:
    """Random weights in HookedTransformer's property layout, with the attention buffers it saved."""
    g = torch.Generator().manual_seed(0)

    def r(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * 0.5

    sd = {"embed.W_E": r(d_vocab, D_MODEL), "pos_embed.W_pos": r(N_CTX, D_MODEL),
          "ln_final.w": 1 + r(D_MODEL), "ln_final.b": r(D_MODEL),
          "unembed.W_U": r(D_MODEL, d_vocab), "unembed.b_U": r(d_vocab)}
    for layer in range(N_LAYERS):
        p = f"blocks.{layer}."
        sd |= {p + "ln1.w": 1 + r(D_MODEL), p + "ln1.b": r(D_MODEL), p + "ln2.w": 1 + r(D_MODEL),
               p + "ln2.b": r(D_MODEL), p + "attn.W_O": r(N_HEADS, D_HEAD, D_MODEL), p + "attn.b_O": r(D_MODEL),
               p + "attn.mask": torch.tril(torch.ones(N_CTX, N_CTX, dtype=torch.bool)),
               p + "attn.IGNORE": torch.tensor(-1e5),
               p + "mlp.W_in": r(D_MODEL, D_MLP), p + "mlp.b_in": r(D_MLP), p + "mlp.W_out": r(D_MLP, D_MODEL),
               p + "mlp.b_out": r(D_MODEL)}
        for x in "QKV":
            sd |= {p + f"attn.W_{x}": r(N_HEADS, D_MODEL, D_HEAD), p + f"attn.b_{x}": r(N_HEADS, D_HEAD)}
    return sd


def _reference_logits(sd: dict[str, torch.Tensor], tokens: torch.Tensor) -> torch.Tensor:
    """The GELU transformer of paper.md §2 written out by hand: pre-LN blocks, causal attention, exact GELU."""

    def ln(x: torch.Tensor, name: str) -> torch.Tensor:
        return F.layer_norm(x, (D_MODEL,), sd[f"{name}.w"], sd[f"{name}.b"], eps=1e-5)

    x = sd["embed.W_E"][tokens] + sd["pos_embed.W_pos"][: tokens.shape[1]]
    causal = torch.tril(torch.ones(tokens.shape[1], tokens.shape[1], dtype=torch.bool))
    for layer in range(N_LAYERS):
        p = f"blocks.{layer}."
        h = ln(x, p + "ln1")
        q, k, v = (torch.einsum("bpd,hde->bphe", h, sd[p + f"attn.W_{n}"]) + sd[p + f"attn.b_{n}"] for n in "QKV")
        scores = torch.einsum("bqhe,bkhe->bhqk", q, k) / D_HEAD**0.5
        pattern = scores.masked_fill(~causal, float("-inf")).softmax(-1)
        z = torch.einsum("bhqk,bkhe->bqhe", pattern, v)
        x = x + torch.einsum("bqhe,hed->bqd", z, sd[p + "attn.W_O"]) + sd[p + "attn.b_O"]
        h = ln(x, p + "ln2")
        x = x + F.gelu(h @ sd[p + "mlp.W_in"] + sd[p + "mlp.b_in"]) @ sd[p + "mlp.W_out"] + sd[p + "mlp.b_out"]
    return ln(x, "ln_final") @ sd["unembed.W_U"] + sd["unembed.b_U"]


@pytest.fixture
def legacy_cache(hub_cache: Path, put_in_cache, tiny_tokenizer, tmp_path: Path):  # type: ignore[no-untyped-def]
    """The cache holding a fabricated ``GELU_1L512W_C4_Code`` and its tokenizer repo; yields the state dict."""
    d_vocab = len(tiny_tokenizer)
    sd = _state_dict(d_vocab)
    buffer = io.BytesIO()
    torch.save(sd, buffer)
    put_in_cache(hub_cache, REPO, {"config.json": json.dumps(_config(d_vocab)).encode(),
                                   "model_final.pth": buffer.getvalue()})
    tiny_tokenizer.save_pretrained(tmp_path / "tok")
    put_in_cache(hub_cache, GELU_TOKENIZER_REPO, {f.name: f.read_bytes() for f in (tmp_path / "tok").iterdir()})
    return sd


def _tokens(d_vocab: int) -> torch.Tensor:
    return torch.randint(0, d_vocab, (3, 10), generator=torch.Generator().manual_seed(1))


def test_gelu_1l_loads_from_the_cache_and_matches_a_hand_written_forward(legacy_cache, tiny_tokenizer) -> None:  # type: ignore[no-untyped-def]
    model = load_registry(entry_points=False).model("gelu-1l")
    assert (model.name, model.d_vocab, model.d_model, model.n_ctx) == ("gelu-1l", len(tiny_tokenizer), D_MODEL, N_CTX)
    tokens = _tokens(model.d_vocab)
    full = model.model(tokens)
    torch.testing.assert_close(full, _reference_logits(legacy_cache, tokens), atol=ATOL, rtol=0)
    activations, logits = model.last_activations(tokens)
    torch.testing.assert_close(logits, full[:, -1], atol=ATOL, rtol=0)
    assert model.vocab.special_tokens == {"BOS": 0, "EOS": 1}
    assert model.vocab.decode(model.vocab.encode("The cat")) == "The cat"


def test_gelu_1l_equals_transformer_lens_boot_tl_legacy(legacy_cache, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """``boot_tl_legacy`` itself needs the Hub's file listing; given the cached one, it builds the same model."""
    from huggingface_hub import HfApi
    from transformer_lens.model_bridge import TransformerBridge

    monkeypatch.setattr(HfApi, "list_repo_files", lambda self, repo_id: ["config.json", "model_final.pth"])
    model = load_registry(entry_points=False).model("gelu-1l")
    reference = TransformerBridge.boot_tl_legacy(REPO, tokenizer=model.model.tokenizer)
    tokens = _tokens(model.d_vocab)
    torch.testing.assert_close(model.model(tokens), reference(tokens), atol=0, rtol=0)


def test_missing_files_are_named_with_the_cache_and_how_to_fetch_them(hub_cache: Path) -> None:
    with pytest.raises(LowprobError) as info:
        load_registry(entry_points=False).model("gelu-2l")
    message = str(info.value)
    assert f"missing from the local Hugging Face cache {hub_cache}" in message
    assert "NeelNanda/GELU_2L512W_C4_Code: config.json, model_final.pth" in message
    assert f"{GELU_TOKENIZER_REPO}: tokenizer.json" in message
    assert "hf download NeelNanda/GELU_2L512W_C4_Code config.json model_final.pth" in message
    assert "huggingface-cli download" in message
    assert f"snapshot_download('{GELU_TOKENIZER_REPO}')" in message


def test_only_the_files_actually_missing_are_listed(legacy_cache, hub_cache: Path) -> None:  # type: ignore[no-untyped-def]
    next(hub_cache.rglob("model_final.pth")).unlink()
    with pytest.raises(LowprobError) as info:
        load_registry(entry_points=False).model("gelu-1l")
    assert f"  {REPO}: model_final.pth\n" in str(info.value)
    assert GELU_TOKENIZER_REPO + ":" not in str(info.value)


def test_the_legacy_models_are_listed_without_touching_the_cache(hub_cache: Path) -> None:
    entries = {e.name: e for e in load_registry(entry_points=False).entries("models")}
    assert {m.name for m in LEGACY_MODELS} == {"gelu-1l", "gelu-2l", "gelu-4l"} <= set(entries)
    assert "NeelNanda/GELU_4L512W_C4_Code" in entries["gelu-4l"].description
    assert not entries["gelu-1l"].default


def test_listing_models_imports_no_model_library() -> None:
    code = ("import sys; from lowprob.plugins import load_registry; "
            "r = load_registry(entry_points=False); names = [e.name for e in r.entries('models')]; "
            "print('gelu-1l' in names, sorted(m for m in sys.modules "
            "if m.split('.')[0] in ('transformers', 'transformer_lens', 'huggingface_hub', 'gguf')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True []"
