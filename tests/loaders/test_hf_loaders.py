"""``hf:`` (a local Hugging Face directory) and ``gguf:`` (a local GGUF file) model names, on a tiny random Llama."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lowprob.core.errors import LowprobError, UnknownNameError
from lowprob.core.target import ArgmaxIs
from lowprob.plugins import load_registry
from lowprob.plugins.builtin.loaders import hf_directory

ATOL = 1e-5
"""float32 last-position logits of the loaded bridge against the original transformers model."""


@pytest.fixture(scope="module")
def tiny_llama(tiny_tokenizer):  # type: ignore[no-untyped-def]
    """A random 1-layer Llama (d_model 16, untied unembedding) over the tiny tokenizer, in eval mode."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=len(tiny_tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32,
                         tie_word_embeddings=False, bos_token_id=0, eos_token_id=1)
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def tokens(tiny_tokenizer) -> torch.Tensor:  # type: ignore[no-untyped-def]
    return torch.randint(2, len(tiny_tokenizer), (3, 12), generator=torch.Generator().manual_seed(1))


def _expected(model, tokens: torch.Tensor) -> torch.Tensor:  # type: ignore[no-untyped-def]
    with torch.no_grad():
        return model(tokens).logits[:, -1].float()


def _permute(weights: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's reordering of the Q and K rows for its rotary layout (transformers undoes it on load)."""
    return weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:]).swapaxes(1, 2).reshape(
        weights.shape)


def _write_gguf(model, tokenizer, path: Path) -> None:  # type: ignore[no-untyped-def]
    """``model`` and ``tokenizer`` as a float32 GGUF file, laid out as llama.cpp's converter writes a Llama."""
    import gguf

    cfg = model.config
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    writer.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokenizer.convert_ids_to_tokens(list(range(len(tokenizer)))))
    special = set(tokenizer.all_special_ids)
    writer.add_token_types([3 if i in special else 1 for i in range(len(tokenizer))])
    merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    writer.add_bos_token_id(tokenizer.bos_token_id)
    writer.add_eos_token_id(tokenizer.eos_token_id)
    writer.add_add_bos_token(False)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, cfg.num_hidden_layers)
    for name, tensor in model.state_dict().items():
        data = tensor.float().numpy()
        if ".q_proj." in name:
            data = _permute(data, cfg.num_attention_heads)
        elif ".k_proj." in name:
            data = _permute(data, cfg.num_key_value_heads)
        writer.add_tensor(names.get_name(name, try_suffixes=(".weight",)), data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_hf_directory_loads_by_scheme_and_matches_transformers(tiny_llama, tiny_tokenizer, tokens, tmp_path) -> None:  # type: ignore[no-untyped-def]
    tiny_llama.save_pretrained(tmp_path / "llama")
    tiny_tokenizer.save_pretrained(tmp_path / "llama")
    model = load_registry(entry_points=False).model(f"hf:{tmp_path / 'llama'}")
    assert (model.name, model.d_vocab, model.d_model) == (f"hf:{tmp_path / 'llama'}", len(tiny_tokenizer), 16)
    torch.testing.assert_close(model.last_logits(tokens), _expected(tiny_llama, tokens), atol=ATOL, rtol=0)
    activations, logits = model.last_activations(tokens)
    torch.testing.assert_close(activations @ model.W_U, logits, atol=ATOL, rtol=0)
    logits, grads = model.target_gradients(tokens, ArgmaxIs(5))
    assert grads.shape == (*tokens.shape, model.d_vocab)
    assert model.vocab.decode(model.vocab.encode("The cat sat")) == "The cat sat"


def test_hf_directory_factory_is_lazy_and_checks_the_folder(tmp_path: Path) -> None:
    loader = hf_directory(tmp_path / "nothing-here")
    with pytest.raises(LowprobError, match="is not a Hugging Face model directory: it has no config.json"):
        loader()


def test_gguf_round_trips_a_tiny_llama(tiny_llama, tiny_tokenizer, tokens, tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "tiny.gguf"
    _write_gguf(tiny_llama, tiny_tokenizer, path)
    model = load_registry(entry_points=False).model(f"gguf:{path}")
    torch.testing.assert_close(model.last_logits(tokens), _expected(tiny_llama, tokens), atol=ATOL, rtol=0)
    assert [model.vocab.token_string(i) for i in range(model.d_vocab)] == [
        tiny_tokenizer.decode([i]) for i in range(len(tiny_tokenizer))]
    assert model.vocab.encode("El gato 0xff") == tiny_tokenizer.encode("El gato 0xff", add_special_tokens=False)
    assert model.vocab.special_tokens == {"BOS": 0, "EOS": 1}


def test_scheme_names_fail_clearly(tmp_path: Path) -> None:
    registry = load_registry(entry_points=False)
    with pytest.raises(UnknownNameError, match="unknown model scheme 'ftp'; known model schemes: gguf, hf"):
        registry.model("ftp:/x")
    with pytest.raises(LowprobError, match="no GGUF file at"):
        registry.model(f"gguf:{tmp_path / 'absent.gguf'}")
    assert {e.name for e in registry.entries("model_schemes")} == {"gguf", "hf"}
