"""lowprob's own trained models: they load offline, fit the size limit, and compute what their weights say.

The reference forward below is written by hand from the safetensors file alone (pre-LN blocks, causal
attention scaled by 1/sqrt(d_head), exact GELU, final LayerNorm, unembedding without bias), independent of
TransformerLens. Tolerance: 1e-4 absolute on float32 logits (weights are stored as float16 and both sides
compute in float32 from the same values).
"""

import json

import pytest
import torch
import torch.nn.functional as F  # noqa: N812

from lowprob.plugins import load_registry
from lowprob.plugins.builtin.hf_vocab import builtin_vocabulary
from lowprob.plugins.builtin.trained import weights_folder

NAMES = ["lowprob-1l", "lowprob-2l", "lowprob-4l"]


def _weights(name: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    raw = load_file(str(weights_folder() / f"{name}.safetensors"))
    return {k.replace("._original_component", ""): v.float() for k, v in raw.items()}


def _reference_logits(sd: dict[str, torch.Tensor], config: dict, tokens: torch.Tensor) -> torch.Tensor:
    d_model, n_heads, d_head = config["d_model"], config["n_heads"], config["d_head"]

    def ln(x: torch.Tensor, name: str) -> torch.Tensor:
        return F.layer_norm(x, (d_model,), sd[f"{name}.weight"], sd[f"{name}.bias"], eps=1e-5)

    def linear(x: torch.Tensor, name: str) -> torch.Tensor:
        return x @ sd[f"{name}.weight"].T + sd[f"{name}.bias"]

    b, n = tokens.shape
    x = sd["tok_embed.weight"][tokens] + sd["pos.weight"][:n]
    causal = torch.tril(torch.ones(n, n, dtype=torch.bool))
    for layer in range(config["n_layers"]):
        p = f"layers.{layer}."
        h = ln(x, p + "ln1")
        q, k, v = (linear(h, p + f"attn.{m}").view(b, n, n_heads, d_head) for m in "qkv")
        scores = torch.einsum("bqhe,bkhe->bhqk", q, k) / d_head**0.5
        z = torch.einsum("bhqk,bkhe->bqhe", scores.masked_fill(~causal, float("-inf")).softmax(-1), v)
        x = x + linear(z.reshape(b, n, d_model), p + "attn.o")
        x = x + linear(F.gelu(linear(ln(x, p + "ln2"), p + "mlp.fc_in")), p + "mlp.fc_out")
    return ln(x, "ln_out") @ sd["head.weight"].T


@pytest.fixture(scope="module")
def registry():  # type: ignore[no-untyped-def]
    return load_registry(entry_points=False)


def test_the_default_model_is_the_trained_one_layer_model(registry) -> None:  # type: ignore[no-untyped-def]
    assert registry.default_model_name == "lowprob-1l"


@pytest.mark.parametrize("name", NAMES)
def test_loads_offline_and_matches_a_hand_written_forward(registry, name: str) -> None:  # type: ignore[no-untyped-def]
    model = registry.model(name)
    config = json.loads((weights_folder() / f"{name}.json").read_text())["config"]
    assert model.d_vocab == builtin_vocabulary().size == 8192 and model.n_ctx == 64
    tokens = torch.randint(2, 8192, (3, 20), generator=torch.Generator().manual_seed(0))
    tokens[:, 0] = 0  # BOS, as lowprob's distributions start
    expected = _reference_logits(_weights(name), config, tokens)
    with torch.no_grad():
        actual = model.model(tokens)
    assert torch.allclose(actual, expected, atol=1e-4), float((actual - expected).abs().max())
    assert torch.allclose(model.last_logits(tokens), expected[:, -1], atol=1e-4)


def test_weights_fit_the_size_limit_and_record_their_training() -> None:
    total = sum((weights_folder() / f"{name}.safetensors").stat().st_size for name in NAMES)
    assert total <= 40 * 2**20, f"{total / 2**20:.1f} MiB"
    for name in NAMES:
        card = json.loads((weights_folder() / f"{name}.json").read_text())
        assert set(card["validation_loss"]) == {"code", "english", "spanish"}
        assert card["training"]["steps"] > 0 and card["config"]["n_layers"] == int(name[-2])
