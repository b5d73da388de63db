"""Target events: what counts as a hit, judged from the last position's logits."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ArgmaxIs:
    """The argmax token at the last position is ``token_id`` (ties go to the lowest id, as ``torch.argmax``)."""

    token_id: int
    label: str = ""

    def hits(self, logits: torch.Tensor) -> torch.Tensor:
        """Boolean hit vector for a batch of last-position logits ``[batch, vocab]``."""
        return logits.argmax(dim=-1) == self.token_id

    @property
    def token_ids(self) -> tuple[int, ...]:
        return (self.token_id,)

    def describe(self) -> str:
        return f"argmax == {self.label!r} (id {self.token_id})" if self.label else f"argmax == #{self.token_id}"


@dataclass(frozen=True)
class ArgmaxIn:
    """The argmax token at the last position lies in a set of token ids."""

    ids: frozenset[int]
    label: str = ""

    def hits(self, logits: torch.Tensor) -> torch.Tensor:
        index = torch.tensor(sorted(self.ids), device=logits.device)
        return torch.isin(logits.argmax(dim=-1), index)

    @property
    def token_ids(self) -> tuple[int, ...]:
        return tuple(sorted(self.ids))

    def describe(self) -> str:
        name = self.label or "set"
        return f"argmax in {name} ({len(self.ids)} tokens)"


Target = ArgmaxIs | ArgmaxIn
