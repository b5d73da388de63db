"""Conditional-exact Monte Carlo for output events: sample x ~ D, compute Pr[hit | x] exactly, average.

For a fixed continuation (``sample(L) == "text"``) Pr[hit | x] = Π_i p(y_i | x, y_<i), one teacher-forced pass;
for a one-token continuation it is the sum of p(v | x) over the tokens v that pass the test, one pass; for greedy
decoding it is 0 or 1, one generation. Averaging the exact conditional instead of counting sampled hits removes
the sampling noise of the continuation (Rao–Blackwellisation), so the variance is never larger than naive's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from pydantic import Field

from lowprob.core.errors import LowprobError
from lowprob.core.estimate import ConfidenceInterval
from lowprob.core.estimator import (
    Capabilities,
    Estimator,
    EstimatorOptions,
    EstimatorOutput,
    Problem,
    StepContext,
    StepInfo,
)
from lowprob.core.output_target import OutputTarget
from lowprob.core.stats import clopper_pearson, normal_interval
from lowprob.plugins.hookspecs import hookimpl
from lowprob.plugins.registry import Registrar


class ConditionalExactOptions(EstimatorOptions):
    """Options of conditional-exact Monte Carlo."""

    batch_size: int = Field(default=4096, ge=1, description="inputs per model call batch")


@dataclass(frozen=True)
class ConditionalState:
    """Running sums of the per-input conditional probabilities (float64), how many are 0 < c < 1, and for a
    one-token event the ids of the tokens that pass its test on their own."""

    passing: torch.Tensor | None = None
    total: float = 0.0
    squares: float = 0.0
    hits: int = 0
    fractional: int = 0
    samples: int = 0


class ConditionalExact(Estimator[ConditionalState]):
    """p̂ = mean over x ~ D of Pr[hit | x], computed exactly per input; see the module docstring for the events."""

    name = "conditional-exact"
    Options = ConditionalExactOptions
    capabilities = Capabilities(unbiased=True, has_error_bars=True, output_events=True)
    options: ConditionalExactOptions

    def check_problem(self, problem: Problem) -> None:
        super().check_problem(problem)
        event = problem.event
        if isinstance(event, OutputTarget) and not (
                event.fixed_continuation is not None or event.length == 1 or event.sampling.greedy):
            raise LowprobError(
                f"conditional-exact needs a fixed continuation (==), a one-token continuation or greedy decoding; "
                f"{event.describe()} is none of these (use naive)")

    def init(self, problem: Problem, generator: torch.Generator) -> ConditionalState:
        event, vocab = problem.event, problem.model.vocab
        if isinstance(event, OutputTarget) and event.length == 1 and event.fixed_continuation is None:
            every = torch.arange(vocab.size)[:, None]
            return ConditionalState(passing=torch.nonzero(event.hits(every, vocab)).flatten())
        return ConditionalState()

    def step(self, state: ConditionalState, problem: Problem, generator: torch.Generator,
             context: StepContext) -> tuple[ConditionalState, StepInfo]:
        if (tokens := context.draw_inputs(problem, self.options.batch_size, generator)) is None:
            return state, StepInfo(samples=state.samples, done=True)
        c = self._conditional(state, problem, tokens, generator).to(torch.float64).cpu().clamp(0.0, 1.0)
        new = ConditionalState(state.passing, state.total + float(c.sum()), state.squares + float((c * c).sum()),
                               state.hits + int((c > 0).sum()), state.fractional + int(((c > 0) & (c < 1)).sum()),
                               state.samples + len(tokens))
        return new, StepInfo(value=new.total / new.samples, std_error=_std_error(new), samples=new.samples)

    def _conditional(self, state: ConditionalState, problem: Problem, tokens: torch.Tensor,
                     generator: torch.Generator) -> torch.Tensor:
        """Pr[hit | x] for each input row of ``tokens``, ``[batch]``."""
        event, model = problem.event, problem.model
        if not isinstance(event, OutputTarget):  # a next-token target is greedy(1): the hit itself
            return event.hits(model.last_logits(tokens)).double()
        fixed = event.fixed_continuation
        if fixed is not None:
            continuation = torch.tensor(fixed, dtype=torch.long)
            return model.continuation_logprobs(tokens, continuation, event.sampling).double().sum(dim=1).exp()
        if state.passing is not None:
            log_p = event.sampling.log_probs(model.last_logits(tokens)).double()
            return torch.logsumexp(log_p[:, state.passing.to(log_p.device)], dim=1).exp()
        continuations = model.generate(tokens, event.length, event.sampling, generator).tokens
        return event.hits(continuations, model.vocab).double()

    def result(self, state: ConditionalState, problem: Problem, level: float) -> EstimatorOutput:
        if state.samples == 0:
            raise LowprobError("conditional-exact drew no samples; the budget ran out before the first batch")
        value = state.total / state.samples
        std_error = _std_error(state)
        if state.fractional == 0:  # every conditional is 0 or 1: the count is binomial, so the exact interval
            low, high = clopper_pearson(state.hits, state.samples, level)
            method = "clopper-pearson"
        elif std_error is None:  # a single input with 0 < c < 1: nothing to say about the spread
            low, high, method = 0.0, 1.0, "none"
        else:
            low, high = normal_interval(value, std_error, level)
            method = "normal"
        return EstimatorOutput(
            value=value,
            std_error=std_error,
            ci=ConfidenceInterval(low=low, high=min(high, 1.0), level=level, method=method),
            hits=state.hits,
            samples=state.samples,
            diagnostics={"fractional": state.fractional, "interval": method},
        )


def _std_error(state: ConditionalState) -> float | None:
    """Standard error of the mean from the sample variance; ``None`` with no hit, where it would be a misleading 0."""
    if state.hits == 0 or state.samples < 2:
        return None
    mean = state.total / state.samples
    variance = max(state.squares / state.samples - mean * mean, 0.0) * state.samples / (state.samples - 1)
    return math.sqrt(variance / state.samples)


@hookimpl
def register_estimators(registrar: Registrar) -> None:
    """Register the conditional-exact estimator for output events."""
    registrar.add_estimator(ConditionalExact)
