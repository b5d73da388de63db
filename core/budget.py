"""Budgets: how much an estimate may spend. The first limit reached stops the run."""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict, Field, model_validator

from lowprob.core.errors import BudgetError
from lowprob.core.meter import Cost


class Budget(BaseModel):
    """Limits on one estimate: model calls, wall seconds and a target relative standard error.

    ``model_calls`` counts forward sequence passes plus ``backward_weight`` × backward passes (default 2: a
    backward pass costs about two forwards in FLOPs). At least one of the three limits must be set.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)  # `model_calls = true` or "5" is an error

    model_calls: int | None = Field(default=None, description="forward + backward_weight × backward passes")
    seconds: float | None = Field(default=None, description="wall-clock seconds")
    target_rel_error: float | None = Field(default=None, description="stop once std_error/value ≤ this")
    backward_weight: float = Field(default=2.0, description="cost of one backward pass in forward passes")

    @model_validator(mode="after")
    def _validate(self) -> Budget:
        if self.model_calls is None and self.seconds is None and self.target_rel_error is None:
            raise BudgetError("a budget needs at least one of model_calls, seconds or target_rel_error")
        if self.model_calls is not None and self.model_calls < 1:
            raise BudgetError(f"model_calls must be at least 1, got {self.model_calls}")
        if self.seconds is not None and not (self.seconds > 0 and math.isfinite(self.seconds)):
            raise BudgetError(f"seconds must be a positive finite number, got {self.seconds}")
        if self.target_rel_error is not None and not (0 < self.target_rel_error < math.inf):
            raise BudgetError(f"target_rel_error must be positive, got {self.target_rel_error}")
        if not (self.backward_weight >= 0 and math.isfinite(self.backward_weight)):
            raise BudgetError(f"backward_weight must be a non-negative number, got {self.backward_weight}")
        return self

    def remaining_calls(self, cost: Cost) -> float:
        """Model calls left (``inf`` without a call limit)."""
        if self.model_calls is None:
            return math.inf
        return self.model_calls - cost.model_calls(self.backward_weight)

    def stop_reason(self, cost: Cost, elapsed: float, value: float | None,
                    std_error: float | None) -> str | None:
        """Why to stop now, or ``None`` to go on."""
        if self.model_calls is not None and self.remaining_calls(cost) < 1:
            return "model_calls"
        if self.seconds is not None and elapsed >= self.seconds:
            return "seconds"
        if (self.target_rel_error is not None and value is not None and std_error is not None and value > 0
                and std_error / value <= self.target_rel_error):
            return "target_rel_error"
        return None

    def describe(self) -> str:
        parts = []
        if self.model_calls is not None:
            parts.append(f"{self.model_calls} model calls")
        if self.seconds is not None:
            parts.append(f"{self.seconds:g} s")
        if self.target_rel_error is not None:
            parts.append(f"rel. error {self.target_rel_error:g}")
        return " or ".join(parts)
