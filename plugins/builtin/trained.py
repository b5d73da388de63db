"""lowprob's own trained transformers: the architecture, and saving/loading weights as safetensors + JSON.

The models are small analogues of the paper's gelu-1l/2l/4l (d_model 256, 4 heads, d_mlp 1024, GELU,
LayerNorm, learned positional embeddings, untied unembedding) built as TransformerLens-native models
(``TransformerBridge.boot_native``), so they load with no network. ``scripts/train_models.py`` trains them.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from lowprob.core.errors import LowprobError
from lowprob.core.model import ModelAdapter
from lowprob.core.vocabulary import Vocabulary

ARCHITECTURE: dict[str, Any] = dict(d_model=256, n_heads=4, d_head=64, d_mlp=1024, n_ctx=64, act_fn="gelu",
                                    normalization_type="LN")
"""Shared by the three built-in trained models; only ``n_layers`` differs."""

WEIGHTS_DIR = "data/models"
"""Package-data folder (under ``lowprob.plugins.builtin``) holding ``<name>.safetensors`` and ``<name>.json``."""


def native_config(n_layers: int, d_vocab: int, seed: int) -> dict[str, Any]:
    """The ``boot_native`` config of a built-in trained model."""
    return {**ARCHITECTURE, "n_layers": n_layers, "d_vocab": d_vocab, "seed": seed}


def build_bridge(config: dict[str, Any]) -> Any:
    """A TransformerLens-native model for ``config``; the unembedding bias is zeroed and frozen (none is used)."""
    from transformer_lens.model_bridge import TransformerBridge

    bridge = TransformerBridge.boot_native(config)  # type: ignore[attr-defined]
    for name, param in bridge.original_model.named_parameters():
        if name.startswith("head.") and name.endswith("bias"):
            with torch.no_grad():
                param.zero_()
            param.requires_grad_(False)
    return bridge


def unique_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The module's state dict with aliases removed (TransformerLens registers some tensors under two names)."""
    seen: set[int] = set()
    state = {}
    for name, tensor in module.state_dict().items():
        if tensor.data_ptr() in seen:
            continue
        seen.add(tensor.data_ptr())
        state[name] = tensor
    return state


def save_weights(bridge: Any, folder: Path, name: str, config: dict[str, Any], meta: dict[str, Any]) -> None:
    """Write ``<name>.safetensors`` (float16) and ``<name>.json`` (config and training metadata)."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in unique_state(bridge.original_model).items()}
    save_file(state, str(folder / f"{name}.safetensors"))
    (folder / f"{name}.json").write_text(json.dumps({"config": config, **meta}, indent=2) + "\n", encoding="utf-8")


def weights_folder() -> Path:
    """Where the built-in weights live (inside the installed package)."""
    return Path(str(resources.files("lowprob.plugins.builtin").joinpath(WEIGHTS_DIR)))


def load_trained(name: str, vocab: Vocabulary, folder: Path | None = None) -> ModelAdapter:
    """Load the trained model ``name`` as a :class:`ModelAdapter`; every parameter must come from the file."""
    from safetensors.torch import load_file

    folder = folder or weights_folder()
    weights, card = folder / f"{name}.safetensors", folder / f"{name}.json"
    if not weights.is_file() or not card.is_file():
        raise LowprobError(f"the weights of built-in model {name!r} are missing ({weights}); "
                           "rebuild them with `make models`")
    config = json.loads(card.read_text(encoding="utf-8"))["config"]
    bridge = build_bridge(config)
    module = bridge.original_model
    state = load_file(str(weights))
    expected = unique_state(module)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise LowprobError(f"{weights} does not match the architecture: missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]}")
    with torch.no_grad():
        for key, tensor in state.items():
            expected[key].copy_(tensor.to(expected[key].dtype))
    return ModelAdapter(bridge, vocab, name)
