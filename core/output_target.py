"""Output events: targets on the ``L`` tokens a model generates after the input (greedy or sampled).

An :class:`OutputTarget` is a continuation (its length and :class:`~lowprob.core.generation.Sampling`) and a
test on it. Tests judge the continuation's tokens (``==``, ``contains`` a token set) or its decoded text,
``vocab.decode`` of the ``L`` ids (``startswith``, ``contains`` a string, ``matches`` a regular expression).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property
from typing import Literal, TypeAlias

import torch

from lowprob.core.errors import LowprobError
from lowprob.core.generation import Sampling
from lowprob.core.regex_scan import SCAN_SECONDS, search_all
from lowprob.core.target import Target
from lowprob.core.vocabulary import Vocabulary


@dataclass(frozen=True)
class Equals:
    """The continuation is exactly the tokens ``ids`` (``text`` encoded; ``text`` is what the spec wrote)."""

    ids: tuple[int, ...]
    text: str

    def passes(self, continuations: torch.Tensor, vocab: Vocabulary) -> torch.Tensor:
        expected = torch.tensor(self.ids, device=continuations.device)
        return (continuations == expected).all(dim=1)

    def describe(self) -> str:
        return f"== {self.text!r}"


@dataclass(frozen=True)
class ContainsToken:
    """Some token of the continuation lies in ``ids``."""

    ids: frozenset[int]
    label: str = ""

    def passes(self, continuations: torch.Tensor, vocab: Vocabulary) -> torch.Tensor:
        index = torch.tensor(sorted(self.ids), device=continuations.device)
        return torch.isin(continuations, index).any(dim=1)

    def describe(self) -> str:
        return f"contains {self.label or 'set'} ({len(self.ids)} tokens)"


@dataclass(frozen=True)
class TextTest:
    """A test on the decoded continuation: ``startswith`` / ``contains`` a string, or ``matches`` a pattern
    (``re.search``, under the time limit of :mod:`lowprob.core.regex_scan`)."""

    op: Literal["startswith", "contains", "matches"]
    text: str

    def __post_init__(self) -> None:
        if self.op not in ("startswith", "contains", "matches"):
            raise LowprobError(f"unknown text test {self.op!r}: startswith, contains or matches")
        if self.op == "matches":
            self.pattern  # noqa: B018 - compile now, so a bad pattern fails when the target is made

    @cached_property
    def pattern(self) -> re.Pattern[str]:
        """The compiled regular expression (``matches``), or the literal text escaped."""
        return re.compile(self.text if self.op == "matches" else re.escape(self.text))

    def passes(self, continuations: torch.Tensor, vocab: Vocabulary) -> torch.Tensor:
        texts = [vocab.decode(row) for row in continuations.tolist()]
        if self.op == "startswith":
            found = [t.startswith(self.text) for t in texts]
        elif self.op == "contains":
            found = [self.text in t for t in texts]
        else:
            try:
                found = search_all(self.pattern, texts, SCAN_SECONDS)
            except TimeoutError:
                raise LowprobError(f"matching /{self.text}/ against {len(texts)} generated continuations took more "
                                   f"than {SCAN_SECONDS:g} s: the pattern backtracks catastrophically") from None
        return torch.tensor(found, dtype=torch.bool, device=continuations.device)

    def describe(self) -> str:
        return f"matches /{self.text}/" if self.op == "matches" else f"{self.op} {self.text!r}"


OutputTest = Equals | ContainsToken | TextTest


@dataclass(frozen=True)
class OutputTarget:
    """The ``length`` tokens generated after the input under ``sampling`` pass ``test``."""

    length: int
    sampling: Sampling
    test: OutputTest

    def __post_init__(self) -> None:
        if isinstance(self.length, bool) or not isinstance(self.length, int) or self.length < 1:
            raise LowprobError(f"an output target needs a continuation of at least 1 token, got {self.length!r}")
        if isinstance(self.test, Equals) and len(self.test.ids) != self.length:
            raise LowprobError(f"{self.test.describe()} is {len(self.test.ids)} tokens, but the continuation "
                               f"has {self.length}")

    def hits(self, continuations: torch.Tensor, vocab: Vocabulary) -> torch.Tensor:
        """Boolean hit vector for generated continuations ``[batch, length]``."""
        if continuations.dim() != 2 or continuations.shape[1] != self.length:
            raise LowprobError(f"expected continuations of shape [batch, {self.length}], got "
                               f"{list(continuations.shape)}")
        return self.test.passes(continuations, vocab)

    @property
    def fixed_continuation(self) -> tuple[int, ...] | None:
        """The one continuation that hits (``==``), else ``None``."""
        return self.test.ids if isinstance(self.test, Equals) else None

    def describe(self) -> str:
        s = self.sampling
        if s.greedy:
            head = f"greedy({self.length})"
        else:
            options = "" if s.temperature == 1 else f", temperature={s.temperature:g}"
            options += "" if s.top_k is None else f", top_k={s.top_k}"
            head = f"sample({self.length}{options})"
        return f"{head} {self.test.describe()}"


Event: TypeAlias = Target | OutputTarget
"""What a problem asks about: the next token after the input (:data:`Target`) or what the model generates."""


def check_fits(event: Event, input_length: int, n_ctx: int) -> None:
    """Raise unless an input of ``input_length`` tokens and the event's continuation fit the model's context."""
    if isinstance(event, OutputTarget) and input_length + event.length > n_ctx:
        raise LowprobError(f"{event.describe()}: {input_length} input tokens and {event.length} generated ones are "
                           f"{input_length + event.length}, more than the model's context of {n_ctx}")
