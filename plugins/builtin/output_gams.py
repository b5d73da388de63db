"""Generalized AMS over autoregressive paths (``output-gams``): the input x ~ D and then its continuation
y_1..y_L under the event's sampling, split position by position; unbiased for any score (Bréhier, Gazeau,
Goudenège, Lelièvre & Rousset 2016), as :mod:`~lowprob.plugins.builtin.gams` is over the input alone.

A path is a Markov chain that fills the non-constant input positions p_0 < … < p_{m−1} from D and then draws
y_1, …, y_L from the model's sampling distribution. Its states are its prefixes: x_{≤p_j} (j < m; the whole input
is state m − 1), then x·y_{≤t} (state m − 1 + t, t = 1..L; the last is the whole path). A registered score gives
each state a value ξ: ``Score.prefixes`` the input prefixes before the whole input (−∞ when it has none), and
``Score.complete(x·y_{≤t}, logits)`` the whole input and each generated prefix, from the logits of the next token.
The estimator overrides it where the outcome is already decided: +∞ once a token of a ``contains`` set has been
generated (a sure hit: the path is stopped there), −∞ once the prefix has left a fixed continuation, and the whole
path +∞ on a hit, −∞ otherwise. From there it is gams: each iteration kills every replica whose level Λ = max ξ is
at most the k-th smallest (ties included) and branches each killed one from a uniformly chosen survivor, copied up
to the state where its ξ first exceeds the level; the rest is drawn afresh — the input suffix from D, then the
continuation from the model in one decoding session (one model call, whatever the branch point; the prompt's
pass alone when one token is left to choose). A branch at a
stopped state copies the survivor whole, at no cost, and so does one from the whole input on under greedy decoding.

The built-in score ``lookahead`` (no pilot, no prefix scores, so input prefixes are never branch points and inputs
are copied from survivors) is the one-step look-ahead of ``output-tsmc``'s training-free twist:

- ``contains {set}`` (and a next-token target, as ``greedy(1)`` of its test): ξ(x·y_{≤t}) =
  log Σ_y p(y | x, y_{≤t}) ψ_{t+1}(y) = log(1 − (1 − m_t)^(L − t)), the chance of meeting the set in the L − t steps
  left if each had the next step's set mass m_t (floored at ``output_tsmc.FLOOR``);
- ``== text``: ξ(x·y_{≤t}) = t + p(text_{t+1} | x, y_{≤t}) on a prefix that matches the text so far: the matched
  length first, the next token's conditional probability within it.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from pydantic import Field

from lowprob.core.errors import LowprobError
from lowprob.core.estimator import Capabilities, Problem
from lowprob.core.random import Enumerator
from lowprob.plugins.builtin.gams import GAMS, GAMSOptions, Paths
from lowprob.plugins.builtin.output_tsmc import Twist
from lowprob.plugins.builtin.scores import BUILTIN_SCORES
from lowprob.plugins.builtin.twists import Layout
from lowprob.plugins.hookspecs import hookimpl
from lowprob.plugins.registry import Registrar
from lowprob.plugins.scoring import Score


def path_event(problem: Problem) -> Twist:
    """The event as a path splitter sees it (a ``contains`` set or a fixed continuation; a next-token target as
    ``greedy(1)``), or a clear error for a test on the decoded text."""
    try:
        return Twist.of(problem)
    except LowprobError:
        raise LowprobError(f"output-gams splits paths of events that contain a token set or equal a fixed "
                           f"continuation; {problem.event.describe()} is a test on the decoded text (use naive)"
                           ) from None


class LookaheadScore:
    """ξ of a path state from the logits of its next token: output-tsmc's look-ahead twist (module docstring)."""

    def __init__(self, event: Twist, input_length: int) -> None:
        self.event = event
        self.input_length = input_length

    def complete(self, tokens: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """ξ of ``tokens`` = input and the t tokens generated so far ``[n, length + t]``."""
        step = tokens.shape[1] - self.input_length
        log_p = self.event.sampling.log_probs(logits).double()
        log_psi = self.event.log_psi(step, log_p, torch.zeros(tokens.shape[0], dtype=torch.bool))
        lookahead = torch.logsumexp(log_p + log_psi, dim=1)
        return lookahead if self.event.contains else step + lookahead.exp()

    def prefixes(self, tokens: torch.Tensor) -> torch.Tensor | None:
        """No prefix scores: input prefixes before the whole input are never branch points."""
        return None

    def describe(self) -> dict[str, Any]:
        return {"score": "lookahead", "event": "contains" if self.event.contains else "fixed"}


def build_lookahead(problem: Problem, pilot: int, generator: torch.Generator | Enumerator) -> LookaheadScore:
    """The look-ahead score needs no pilot."""
    return LookaheadScore(path_event(problem), problem.distribution.length)


class OutputGAMSOptions(GAMSOptions):
    """Options of generalized AMS over autoregressive paths."""

    score: str = Field(default="lookahead",
                       description="registered score ξ of path states: lookahead, or an input score (next-token)")


class OutputGAMS(GAMS):
    """Generalized AMS over input and generated tokens: prefix branching, regenerated continuations (unbiased)."""

    name = "output-gams"
    Options = OutputGAMSOptions
    capabilities = Capabilities(unbiased=True, has_error_bars=True, needs_factorized=True, output_events=True)
    options: OutputGAMSOptions
    initial_draws = "initial draws of inputs from D and their continuations"
    run_calls_per_replica = 10
    """A run of N costs about N(1 + ln(1/p)) calls: 10·N plans for p ≈ 1e-4 (measured 6.5·N at p ≈ 8e-4)."""
    builtin_scores = {**BUILTIN_SCORES, "lookahead": build_lookahead}

    def check_problem(self, problem: Problem) -> None:
        super().check_problem(problem)
        path_event(problem)

    def draw(self, n: int, score: Score, problem: Problem, generator: torch.Generator) -> Paths:
        """``n`` inputs from D, each continued in one decoding session."""
        tokens = problem.distribution.sample(n, generator)
        length = path_event(problem).length
        blank = Paths(torch.cat([tokens, torch.zeros((n, length), dtype=torch.int64)], dim=1),
                      torch.full((n, Layout.of(problem.distribution).steps + length), -math.inf, dtype=torch.float64),
                      torch.zeros(n, dtype=torch.bool))
        return self.renew(blank, torch.full((n,), -1, dtype=torch.int64), score, problem, generator)

    def branch(self, layout: Layout, paths: Paths, z: float, dead: torch.Tensor, problem: Problem,
               generator: torch.Generator | Enumerator) -> tuple[Paths, torch.Tensor]:
        """gams' branching, except that a branch at a stopped state (a sure hit, ξ = +∞), or anywhere from the whole
        input on under greedy decoding (the continuation is a function of the input), copies the whole path."""
        branched, first = super().branch(layout, paths, z, dead, problem, generator)
        copy = branched.xi.gather(1, first[:, None])[:, 0] == math.inf
        if path_event(problem).sampling.greedy:
            copy |= first >= layout.steps - 1
        return branched, torch.where(copy, branched.xi.shape[1] - 1, first)

    def renew(self, paths: Paths, first: torch.Tensor, score: Score, problem: Problem,
              generator: torch.Generator) -> Paths:
        """The states after ``first`` of each path, its input suffix already redrawn: input prefixes scored, the
        continuation regenerated after the generated tokens it keeps, one decoding session per number kept."""
        steps, length = Layout.of(problem.distribution).steps, problem.distribution.length
        tokens, xi, hit = paths.tokens.clone(), paths.xi.clone(), paths.hit.clone()
        inputs = torch.nonzero(first < steps - 2)[:, 0]
        if inputs.numel():  # the input prefixes before the whole input (−∞ for a score without prefix scores)
            prefixes = score.prefixes(tokens[inputs, :length])
            new = torch.full((inputs.numel(), steps - 1), -math.inf, dtype=torch.float64) if prefixes is None \
                else self._checked(prefixes[:, :-1].to(torch.float64))
            redo = torch.arange(steps - 1) > first[inputs, None]
            xi[inputs, :steps - 1] = torch.where(redo, new, xi[inputs, :steps - 1])
        kept = (first - (steps - 1)).clamp(min=0)
        for s in sorted(set(kept.tolist())):
            rows = torch.nonzero(kept == s)[:, 0]
            self._continue(tokens, xi, hit, rows, first[rows], s, score, problem, generator)
        return Paths(tokens, xi, hit)

    def _continue(self, tokens: torch.Tensor, xi: torch.Tensor, hit: torch.Tensor, rows: torch.Tensor,
                  first: torch.Tensor, kept: int, score: Score, problem: Problem, generator: torch.Generator) -> None:
        """Regenerate the continuation of paths ``rows`` after their first ``kept`` generated tokens in one decoding
        session, writing the tokens, the ξ of every state after ``first`` and the hits in place."""
        event = path_event(problem)
        n_in, steps = problem.distribution.length, xi.shape[1] - event.length
        ids = torch.tensor(event.ids, dtype=torch.int64)
        sequences = tokens[rows, :n_in + kept]
        # one token left to choose: the prompt's pass alone (as output-tsmc does; it also fits a full context)
        decoding = problem.model.decoding(sequences, event.length - kept) if event.length - kept > 1 else None
        logits = problem.model.last_logits(sequences) if decoding is None else decoding.logits
        generated = sequences[:, n_in:]
        # contains: a set token so far (a sure hit); fixed: the text followed so far
        decided = torch.isin(generated, ids).any(dim=1) if event.contains else (generated == ids[:kept]).all(dim=1)
        for t in range(kept, event.length):
            column = steps - 1 + t
            if column >= 0:
                value = self._checked(score.complete(sequences, logits.cpu()).to(torch.float64))
                value = torch.where(decided, math.inf, value) if event.contains else \
                    torch.where(decided, value, -math.inf)
                write = column > first
                xi[rows[write], column] = value[write]
            chosen = event.sampling.choose(logits, generator)[0].cpu()
            tokens[rows, n_in + t] = chosen
            decided = decided | torch.isin(chosen, ids) if event.contains else decided & (chosen == ids[t])
            sequences = torch.cat([sequences, chosen[:, None]], dim=1)
            if decoding is not None and t + 1 < event.length:
                logits = decoding.push(chosen)
        xi[rows, -1] = torch.where(decided, math.inf, -math.inf).to(torch.float64)
        hit[rows] = decided

    def _checked(self, xi: torch.Tensor) -> torch.Tensor:
        """``xi`` if it holds no NaN and no +∞ (+∞ is a sure hit, which only the estimator may declare)."""
        if torch.isnan(xi).any() or (xi == math.inf).any():
            raise LowprobError(f"the score {self.options.score!r} returned NaN or +inf; output-gams needs finite "
                               "scores or -inf (it gives +inf to sure hits itself)")
        return xi


@hookimpl
def register_estimators(registrar: Registrar) -> None:
    """Register generalized AMS over autoregressive paths."""
    registrar.add_estimator(OutputGAMS)


@hookimpl
def register_scores(registrar: Registrar) -> None:
    """Register the look-ahead score of path states."""
    registrar.add_score("lookahead", build_lookahead,
                        description="output-gams: output-tsmc's look-ahead chance of a hit for each path state")
