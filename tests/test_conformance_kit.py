"""The conformance kit itself: toy models behave as documented and the checks can fail."""

import pytest
import torch

from lowprob.core import Budget
from lowprob.core.estimator import StepInfo
from lowprob.plugins.builtin.naive import NaiveMonteCarlo
from lowprob.plugins.testing import check_consistent, exact_probability, lookup_model, toy_problem


@pytest.fixture(scope="module")
def lookup():  # type: ignore[no-untyped-def]
    model = lookup_model(positions=3, d_vocab=5, seed=0)
    return toy_problem(0, d_vocab=5, length=3, model=model)


def test_lookup_model_logits_are_a_sum_of_table_rows(lookup) -> None:  # type: ignore[no-untyped-def]
    model = lookup.model
    x = torch.tensor([[0, 1, 2], [4, 4, 4]])
    table = model.model.table
    expected = table[0, x[:, 0]] + table[1, x[:, 1]] + table[2, x[:, 2]]
    assert torch.allclose(model.last_logits(x), expected)


def test_lookup_model_token_gradients_are_exact(lookup) -> None:  # type: ignore[no-untyped-def]
    model, t = lookup.model, lookup.target.token_id
    x = lookup.distribution.sample(6, torch.Generator().manual_seed(0))
    _, grads = model.target_gradients(x, lookup.target)
    for i in range(3):
        assert torch.allclose(grads[:, i, :], model.model.table[i, :, t].expand(6, -1))


def test_lookup_model_activations_give_logits(lookup) -> None:  # type: ignore[no-untyped-def]
    x = lookup.distribution.sample(6, torch.Generator().manual_seed(1))
    acts, logits = lookup.model.last_activations(x)
    assert torch.allclose(acts @ lookup.model.W_U, logits)


def test_exact_probability_matches_a_large_naive_run(lookup) -> None:  # type: ignore[no-untyped-def]
    x = lookup.distribution.sample(200_000, torch.Generator().manual_seed(2))
    freq = float(lookup.target.hits(lookup.model.last_logits(x)).double().mean())
    sd = (lookup.exact * (1 - lookup.exact) / 200_000) ** 0.5
    assert abs(freq - exact_probability(lookup.model, lookup.distribution, lookup.target)) < 4 * sd


def test_check_consistent_passes_for_naive_mc(lookup) -> None:  # type: ignore[no-untyped-def]
    report = check_consistent(NaiveMonteCarlo, lookup, [Budget(model_calls=50), Budget(model_calls=5000)])
    assert report.passed, report.detail


class StuckAfterOneBatch(NaiveMonteCarlo):
    """Does not converge: it stops learning after its first batch of 50, whatever the budget."""

    name = "stuck"

    def step(self, state, problem, generator, context):  # type: ignore[no-untyped-def]
        if state.samples >= 50:
            return state, StepInfo(value=state.hits / state.samples, samples=state.samples, done=True)
        return super().step(state, problem, generator, context)


def test_check_consistent_has_teeth(lookup) -> None:  # type: ignore[no-untyped-def]
    report = check_consistent(StuckAfterOneBatch, lookup, [Budget(model_calls=50), Budget(model_calls=5000)],
                              options={"batch_size": 50})
    assert not report.passed, report.detail
