"""Error types every layer raises, so the CLI can print them as one clear line instead of a traceback."""


class LowprobError(Exception):
    """Base of every error lowprob raises on purpose; its message is meant for the user."""


class BudgetError(LowprobError):
    """A budget that cannot be met or makes no sense (zero calls, negative seconds, ...)."""


class WeightError(LowprobError):
    """Weights or probabilities that are NaN, infinite, negative or all zero."""


class UnknownNameError(LowprobError):
    """A name that is not registered; the message lists the known ones."""

    def __init__(self, kind: str, name: str, known: list[str] | tuple[str, ...]) -> None:
        self.kind, self.name, self.known = kind, name, sorted(known)
        listing = ", ".join(self.known) if self.known else "(none registered)"
        super().__init__(f"unknown {kind} {name!r}; known {kind}s: {listing}")
