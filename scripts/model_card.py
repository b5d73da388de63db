"""Print the model card's numbers: each trained model's validation loss per slice and greedy continuations.

    python scripts/model_card.py > /tmp/card.md    # then paste into docs/models.md
"""

from __future__ import annotations

import json

import torch

from lowprob.plugins import load_registry
from lowprob.plugins.builtin.trained import weights_folder

PROMPTS = ["def __init__(self", "import os\nimport", "The package is installed", "El sistema de archivos"]
NAMES = ("lowprob-1l", "lowprob-2l", "lowprob-4l")


@torch.no_grad()
def greedy(model, prompt: str, new_tokens: int = 16) -> str:  # type: ignore[no-untyped-def]
    """The prompt continued by ``new_tokens`` argmax tokens (BOS first, as in training)."""
    bos = model.vocab.special_tokens["BOS"]
    ids = [bos, *model.vocab.encode(prompt)]
    for _ in range(new_tokens):
        ids.append(int(model.last_logits(torch.tensor([ids])).argmax(-1)))
    return model.vocab.decode(ids[1:])


def main() -> None:
    registry = load_registry(entry_points=False)
    print("| model | layers | params | code | english | spanish | steps | tokens | train time |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name in NAMES:
        card = json.loads((weights_folder() / f"{name}.json").read_text())
        model = registry.model(name)
        params = sum(p.numel() for p in model.model.original_model.parameters() if p.requires_grad or p.any())
        loss, training = card["validation_loss"], card["training"]
        print(f"| {name} | {card['config']['n_layers']} | {params / 1e6:.2f} M | {loss['code']:.3f} | "
              f"{loss['english']:.3f} | {loss['spanish']:.3f} | {training['steps']} | {training['tokens']:,} | "
              f"{training['seconds'] / 60:.1f} min ({training['device']}) |")
    for name in NAMES:
        model = registry.model(name)
        print(f"\n**{name}** (greedy, 16 tokens):\n")
        for prompt in PROMPTS:
            print(f"- `{prompt!r}` → `{greedy(model, prompt)!r}`")


if __name__ == "__main__":
    main()
