"""Built-in demo models: seeded, randomly initialised TransformerLens-native transformers over the
default vocabulary. They need no download, so every example and test runs offline.

The plain TransformerLens initialisation is already far from degenerate: under ``BOS`` + 16
uniformly drawn non-special tokens, ``random-1l``'s last-position argmax takes several hundred
distinct values with a long tail of tokens seen once in 10^4 samples (measured in
``tests/plugins/test_builtin_models.py``), so no rescaling is applied. Loaders import
TransformerLens lazily: registering the models loads nothing.
"""

from __future__ import annotations

from lowprob.core.model import ModelAdapter
from lowprob.plugins.builtin.tokenizers import default_vocabulary
from lowprob.plugins.hookspecs import hookimpl
from lowprob.plugins.registry import Registrar

D_MODEL = 128
N_CTX = 64


def random_model(name: str, n_layers: int, seed: int) -> ModelAdapter:
    """A seeded random model with ``n_layers`` layers over :func:`default_vocabulary`."""
    from transformer_lens.model_bridge import TransformerBridge

    vocab = default_vocabulary()
    config = dict(
        n_layers=n_layers,
        d_model=D_MODEL,
        n_heads=4,
        d_head=D_MODEL // 4,
        d_mlp=4 * D_MODEL,
        n_ctx=N_CTX,
        d_vocab=vocab.size,
        act_fn="gelu",
        normalization_type="LN",
        seed=seed,
    )
    bridge = TransformerBridge.boot_native(config)  # type: ignore[attr-defined]
    return ModelAdapter(bridge, vocab, name)


@hookimpl
def register_models(registrar: Registrar) -> None:
    """Register ``random-1l`` (the default) and ``random-2l``."""
    registrar.add_model(
        "random-1l",
        lambda: random_model("random-1l", n_layers=1, seed=0),
        default=True,
        description="1-layer random transformer (d_model 128) over the default vocabulary",
    )
    registrar.add_model(
        "random-2l",
        lambda: random_model("random-2l", n_layers=2, seed=1),
        description="2-layer random transformer (d_model 128) over the default vocabulary",
    )
