"""Toy output-event problems small enough to enumerate every input and every continuation."""

from __future__ import annotations

import itertools

import torch

from lowprob.core.distribution import InputDistribution
from lowprob.core.model import ModelAdapter
from lowprob.core.output_target import OutputTarget
from lowprob.dsl import load_spec
from lowprob.plugins.testing import ToyProblem, tiny_model

TOY_SPEC = """
tokens w = {"a": 1, "b": 2, "c": 3, "d": 4}
dist main = w w
"""
"""Two independent positions over the toy's four tokens ``a b c d`` (16 inputs)."""

FLOAT32_REL_TOL = 1e-5
"""Relative tolerance of the exact checks here: the reference below and the estimators compute the model's
probabilities by different float32 paths (prefix forwards vs. the key/value cache or one teacher-forced pass),
which agree to about 1e-7 relative; any bias of an estimator's averaging is far larger."""


def toy_model() -> ModelAdapter:
    """A seeded random 1-layer transformer over ``a b c d`` with a context of 8."""
    return tiny_model(d_vocab=4, n_ctx=8, seed=3)


def exact_output_probability(model: ModelAdapter, distribution: InputDistribution, target: OutputTarget) -> float:
    """``Pr[hit]`` summed over every input and every continuation, each continuation's probability the product of
    the model's next-token probabilities under the target's sampling, from one prefix forward per step."""
    inputs, probs = distribution.enumerate()
    n, length = inputs.shape[1], target.length
    continuations = torch.tensor(list(itertools.product(range(model.d_vocab), repeat=length)), dtype=torch.long)
    hit = target.hits(continuations, model.vocab)
    total = 0.0
    for x, px in zip(inputs, probs.tolist(), strict=True):
        sequences = torch.cat([x.expand(len(continuations), -1), continuations], dim=1)
        log_p = torch.zeros(len(continuations), dtype=torch.float64)
        for i in range(length):
            step = target.sampling.log_probs(model.last_logits(sequences[:, :n + i])).double()
            log_p += step.gather(1, continuations[:, i:i + 1])[:, 0]
        total += px * float(log_p.exp()[hit].sum())
    return total


def toy_output_problem(target_text: str, model: ModelAdapter | None = None) -> ToyProblem:
    """The toy distribution with the output target ``target_text`` (DSL), and its exact probability."""
    model = model or toy_model()
    compiled = load_spec(TOY_SPEC + f"target t = {target_text}\n", model.vocab, max_length=model.n_ctx)
    target = compiled.target("t")
    assert isinstance(target, OutputTarget)
    distribution = compiled.distribution()
    return ToyProblem(model, distribution, target, exact_output_probability(model, distribution, target))
