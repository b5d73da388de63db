"""Loaders for models lowprob does not ship, all offline and lazy (registering them loads nothing).

* ``gelu-1l``, ``gelu-2l``, ``gelu-4l``: the paper's legacy TransformerLens checkpoints, read from the local
  Hugging Face cache only; when files are missing the error names them and says how to fetch them.
* ``hf:/path/to/dir``: any Hugging Face causal LM saved in a local directory, through
  ``TransformerBridge.boot_transformers(hf_model=...)``.
* ``gguf:/path/to/model.gguf``: any GGUF causal LM that transformers can read (``pip install 'lowprob[gguf]'``).

``TransformerBridge.boot_tl_legacy`` cannot run offline (it lists the remote repository to find the weights
file), so :func:`load_legacy` performs its steps on the cached files: TransformerLens derives the config,
converts the state dict and builds the native bridge; only the file lookup is lowprob's.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lowprob.core.errors import LowprobError
from lowprob.core.model import ModelAdapter
from lowprob.plugins.hookspecs import hookimpl
from lowprob.plugins.registry import ModelLoader, Registrar
from lowprob.plugins.tokenizer_vocabulary import TokenizerVocabulary

GELU_TOKENIZER_REPO = "NeelNanda/gpt-neox-tokenizer-digits"
WEIGHTS_FILE = "model_final.pth"
LEGACY_FILES = ("config.json", WEIGHTS_FILE)
"""What a legacy repo must hold in the cache: the TransformerLens config and the final weights."""
TOKENIZER_FILES = ("tokenizer.json",)


@dataclass(frozen=True)
class LegacyModel:
    """A legacy TransformerLens checkpoint on the Hugging Face Hub and the tokenizer repo it needs."""

    name: str
    repo: str
    tokenizer_repo: str = GELU_TOKENIZER_REPO


LEGACY_MODELS = (
    LegacyModel("gelu-1l", "NeelNanda/GELU_1L512W_C4_Code"),
    LegacyModel("gelu-2l", "NeelNanda/GELU_2L512W_C4_Code"),
    LegacyModel("gelu-4l", "NeelNanda/GELU_4L512W_C4_Code"),
)


def _adapter(bridge: Any, tokenizer: Any, name: str) -> ModelAdapter:
    return ModelAdapter(bridge, TokenizerVocabulary.from_transformers(tokenizer, int(bridge.cfg.d_vocab)), name)


def _hub_cache() -> Path:
    """The Hugging Face hub cache in effect now (``HF_HUB_CACHE``, else ``HF_HOME/hub``)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def _missing(repo: str, filenames: Sequence[str], cache: Path) -> list[str]:
    from huggingface_hub import try_to_load_from_cache

    return [f for f in filenames if not isinstance(try_to_load_from_cache(repo, f, cache_dir=cache), str)]


def missing_legacy_files(model: LegacyModel, cache: Path) -> dict[str, list[str]]:
    """The files ``model`` needs that are absent from ``cache``, by repo id (empty when all are there)."""
    missing = {model.repo: _missing(model.repo, LEGACY_FILES, cache),
               model.tokenizer_repo: _missing(model.tokenizer_repo, TOKENIZER_FILES, cache)}
    return {repo: files for repo, files in missing.items() if files}


def _missing_message(model: LegacyModel, missing: Mapping[str, list[str]], cache: Path) -> str:
    listing = "\n".join(f"  {repo}: {', '.join(files)}" for repo, files in missing.items())
    weights = ", ".join(repr(f) for f in LEGACY_FILES)
    return (
        f"model {model.name!r} needs files that are missing from the local Hugging Face cache {cache}:\n"
        f"{listing}\n"
        "lowprob never downloads them. On a machine with network, fetch them with\n"
        f"  hf download {model.repo} {' '.join(LEGACY_FILES)}\n"
        f"  hf download {model.tokenizer_repo}\n"
        "(older huggingface_hub: huggingface-cli download ...), or\n"
        f"  python -c \"from huggingface_hub import hf_hub_download, snapshot_download; "
        f"[hf_hub_download('{model.repo}', f) for f in ({weights})]; "
        f"snapshot_download('{model.tokenizer_repo}')\"\n"
        "then copy that cache here (or point HF_HUB_CACHE or HF_HOME at it)."
    )


def load_legacy(model: LegacyModel) -> ModelAdapter:
    """``model`` from the local Hugging Face cache, as ``TransformerBridge.boot_tl_legacy`` would build it."""
    cache = _hub_cache()
    missing = missing_legacy_files(model, cache)
    if missing:
        raise LowprobError(_missing_message(model, missing, cache))
    from huggingface_hub import hf_hub_download
    from transformer_lens.model_bridge import TransformerBridge
    from transformer_lens.model_bridge.sources.tl_legacy import derive_tl_legacy_config
    from transformer_lens.utilities.tl_checkpoint_conversion import convert_tl_checkpoint
    from transformers import AutoTokenizer

    cfg = derive_tl_legacy_config(model.repo)
    if getattr(cfg, "original_architecture", None) != "neel":
        raise LowprobError(f"{model.repo} is not a standard-layout TransformerLens checkpoint")
    # From the snapshot folder: by repo id, transformers also wants a config.json that tokenizer repos may lack.
    snapshot = Path(hf_hub_download(model.tokenizer_repo, TOKENIZER_FILES[0], cache_dir=cache, local_files_only=True))
    tokenizer = AutoTokenizer.from_pretrained(snapshot.parent)
    bridge = TransformerBridge.boot_native(cfg, tokenizer=tokenizer, model_name=model.repo)  # type: ignore[attr-defined]
    weights = hf_hub_download(model.repo, WEIGHTS_FILE, cache_dir=cache, local_files_only=True)
    state = convert_tl_checkpoint(torch.load(weights, map_location="cpu", weights_only=True), cfg)
    state.setdefault("unembed.bias", torch.zeros(cfg.d_vocab))  # legacy repos may ship no unembed bias
    bridge.load_state_dict(state, strict=True)
    return _adapter(bridge, tokenizer, model.name)


def _from_hf(hf_model: Any, tokenizer: Any, name: str) -> ModelAdapter:
    from transformer_lens.model_bridge import TransformerBridge

    bridge = TransformerBridge.boot_transformers(name, hf_model=hf_model.eval(), tokenizer=tokenizer)
    return _adapter(bridge, tokenizer, name)


def load_hf_directory(path: str | Path) -> ModelAdapter:
    """The causal LM and tokenizer saved in the Hugging Face model directory ``path`` (``save_pretrained``)."""
    path = Path(path).expanduser()
    if not (path / "config.json").is_file():
        raise LowprobError(f"{path} is not a Hugging Face model directory: it has no config.json")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    hf_model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=torch.float32)
    return _from_hf(hf_model, tokenizer, f"hf:{path}")


def load_gguf(path: str | Path) -> ModelAdapter:
    """The causal LM and tokenizer in the GGUF file ``path``, dequantised to float32 by transformers."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise LowprobError(f"no GGUF file at {path}")
    try:
        import gguf  # noqa: F401  # transformers reads GGUF through this package
    except ImportError:
        raise LowprobError("loading GGUF models needs the gguf package: pip install 'lowprob[gguf]'") from None
    from transformers import AutoModelForCausalLM, AutoTokenizer

    where = dict(gguf_file=path.name, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, **where)
    hf_model = AutoModelForCausalLM.from_pretrained(path.parent, dtype=torch.float32, **where)
    return _from_hf(hf_model, tokenizer, f"gguf:{path}")


def hf_directory(path: str | Path) -> ModelLoader:
    """A lazy loader for the Hugging Face model directory ``path`` (what the ``hf:`` scheme resolves to)."""
    return functools.partial(load_hf_directory, path)


def gguf_file(path: str | Path) -> ModelLoader:
    """A lazy loader for the GGUF file ``path`` (what the ``gguf:`` scheme resolves to)."""
    return functools.partial(load_gguf, path)


@hookimpl
def register_models(registrar: Registrar) -> None:
    """Register the legacy ``gelu-*`` checkpoints and the ``hf:`` and ``gguf:`` schemes; nothing is loaded."""
    for model in LEGACY_MODELS:
        registrar.add_model(
            model.name, functools.partial(load_legacy, model),
            description=f"the paper's {model.repo} (TransformerLens legacy), from the local Hugging Face cache")
    registrar.add_model_scheme(
        "hf", load_hf_directory,
        description="hf:/path/to/dir loads a local Hugging Face causal LM directory with its tokenizer")
    registrar.add_model_scheme(
        "gguf", load_gguf,
        description="gguf:/path/to/model.gguf loads a local GGUF causal LM with its tokenizer (needs gguf)")
