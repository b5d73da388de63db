"""Built-in models: lowprob's own trained transformers (``lowprob-1l`` — the default —, ``-2l``, ``-4l``) over
the built-in BPE tokenizer, and two seeded random demo models (``random-1l``, ``random-2l``) over the small
demo vocabulary, which need no weights and keep tests fast.

Under ``BOS`` + 16 uniformly drawn non-special tokens, ``random-1l``'s last-position argmax takes several
hundred distinct values with a long tail (measured in ``tests/plugins/test_builtin_models.py``). Loaders
import TransformerLens lazily: registering the models loads nothing.
"""

from __future__ import annotations

import functools

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


def trained_model(name: str) -> ModelAdapter:
    """One of lowprob's own trained models over the built-in BPE tokenizer (see docs/models.md)."""
    from lowprob.plugins.builtin.hf_vocab import builtin_vocabulary
    from lowprob.plugins.builtin.trained import load_trained

    return load_trained(name, builtin_vocabulary())


TRAINED = {1: "the default; analogue of the paper's gelu-1l", 2: "analogue of gelu-2l", 4: "analogue of gelu-4l"}


@hookimpl
def register_models(registrar: Registrar) -> None:
    """Register lowprob's trained models ``lowprob-1l`` (the default), ``-2l``, ``-4l``, and the random demo
    models ``random-1l`` and ``random-2l`` (small, fast, over the demo vocabulary; used by tests)."""
    for layers, note in TRAINED.items():
        name = f"lowprob-{layers}l"
        registrar.add_model(name, functools.partial(trained_model, name), default=layers == 1,
                            description=f"{layers}-layer GELU transformer trained by lowprob ({note})")
    registrar.add_model(
        "random-1l",
        lambda: random_model("random-1l", n_layers=1, seed=0),
        description="1-layer random transformer (d_model 128) over the default vocabulary",
    )
    registrar.add_model(
        "random-2l",
        lambda: random_model("random-2l", n_layers=2, seed=1),
        description="2-layer random transformer (d_model 128) over the default vocabulary",
    )
