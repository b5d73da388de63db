"""Generation: the key/value cache equals the full recompute, log-probabilities are those of the tokens drawn,
the meter counts generated tokens, budgets stop generation, bad requests are refused."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch

from lowprob.core import Budget, run_estimator
from lowprob.core.errors import LowprobError
from lowprob.core.estimate import Estimate
from lowprob.core.estimator import Capabilities, Estimator, EstimatorOutput, Problem, StepContext, StepInfo
from lowprob.core.fast_forward import FastForward, KVCache
from lowprob.core.generation import CachedDecoder, RecomputeDecoder, Sampling, continuation_logprobs, decoder, generate
from lowprob.core.meter import Cost, MeteredModel
from lowprob.core.model import ModelAdapter
from lowprob.core.random import expectation
from lowprob.plugins.testing import lookup_model, tiny_model, toy_problem

SAMPLINGS = [Sampling.argmax(), Sampling.sample(), Sampling.sample(temperature=0.7, top_k=3)]
TOL = 1e-4


@pytest.fixture(scope="module")
def lowprob_1l() -> ModelAdapter:
    from lowprob.api import load_model

    return load_model("lowprob-1l")


def _prompts(adapter: ModelAdapter, batch: int, n: int, seed: int) -> torch.Tensor:
    return torch.randint(adapter.d_vocab, (batch, n), generator=torch.Generator().manual_seed(seed))


def _models(lowprob_1l: ModelAdapter) -> list[ModelAdapter]:
    return [tiny_model(d_vocab=11, n_ctx=12, n_layers=layers, d_model=16, seed=layers) for layers in (1, 2, 3)] + [
        lowprob_1l]


@pytest.mark.parametrize("sampling", SAMPLINGS, ids=Sampling.describe)
def test_cached_generation_equals_the_full_recompute(lowprob_1l: ModelAdapter, sampling: Sampling) -> None:
    for adapter in _models(lowprob_1l):
        assert adapter.fast_path is not None
        steps = min(8, adapter.n_ctx - 4)
        prompts = _prompts(adapter, 16, 4, seed=1)
        cached = generate(adapter, prompts, steps, sampling, torch.Generator().manual_seed(5))
        full = generate(adapter, prompts, steps, sampling, torch.Generator().manual_seed(5), cache=False)
        assert cached.tokens.shape == (16, steps) and cached.tokens.dtype == torch.int64
        assert torch.equal(cached.tokens, full.tokens), adapter.name
        assert (cached.logprobs - full.logprobs).abs().max() < TOL


def test_same_seed_same_tokens_and_another_seed_other_tokens(lowprob_1l: ModelAdapter) -> None:
    prompts = _prompts(lowprob_1l, 8, 5, seed=2)
    runs = [generate(lowprob_1l, prompts, 10, Sampling.sample(), torch.Generator().manual_seed(s)) for s in (3, 3, 4)]
    assert torch.equal(runs[0].tokens, runs[1].tokens)
    assert not torch.equal(runs[0].tokens, runs[2].tokens)


def test_greedy_continues_with_the_argmax_of_the_reference_forward() -> None:
    adapter = tiny_model(d_vocab=9, n_ctx=10, n_layers=2, seed=6)
    prompts = _prompts(adapter, 12, 3, seed=7)
    out = generate(adapter, prompts, 5, Sampling.argmax(), torch.Generator())
    sequences = torch.cat([prompts, out.tokens], dim=1)
    with torch.no_grad():
        reference = adapter.model(sequences).argmax(-1)[:, 2:-1]
    assert torch.equal(out.tokens, reference)
    assert torch.equal(out.logprobs, torch.zeros(12, 5))


@pytest.mark.parametrize("sampling", SAMPLINGS[1:], ids=Sampling.describe)
def test_sampling_draws_each_continuation_with_its_reported_probability(sampling: Sampling) -> None:
    """Enumerating every draw: each continuation's path probability is exp(its log-probability), the
    probabilities sum to 1, and top-k never draws outside the k largest logits."""
    for adapter in (tiny_model(d_vocab=5, n_ctx=6, n_layers=2, seed=8), lookup_model(positions=4, d_vocab=5)):
        prompt = torch.tensor([[1, 3]])
        seen: dict[tuple[int, ...], float] = {}

        def run(enumerator, adapter=adapter, prompt=prompt, seen=seen):
            out = generate(adapter, prompt, 2, sampling, enumerator)
            seen[tuple(out.tokens[0].tolist())] = out.logprob.exp().item()
            assert math.isclose(enumerator.probability, seen[tuple(out.tokens[0].tolist())], rel_tol=1e-4)
            return 1.0

        total = expectation(run, max_paths=100)
        assert math.isclose(total.mass, 1.0, rel_tol=1e-9)
        assert math.isclose(sum(seen.values()), 1.0, rel_tol=1e-4)
        expected_paths = 25 if sampling.top_k is None else 9
        assert total.paths == len(seen) == expected_paths


@pytest.mark.parametrize("sampling", SAMPLINGS, ids=Sampling.describe)
def test_continuation_logprobs_equal_the_generated_logprobs(lowprob_1l: ModelAdapter, sampling: Sampling) -> None:
    for adapter in [*_models(lowprob_1l), lookup_model(positions=6, d_vocab=5)]:
        steps = min(6, adapter.n_ctx - 3)
        prompts = _prompts(adapter, 10, 3, seed=9)
        out = generate(adapter, prompts, steps, sampling, torch.Generator().manual_seed(10))
        for cache in (True, False):
            scored = continuation_logprobs(adapter, prompts, out.tokens, sampling, cache=cache)
            assert scored.shape == (10, steps)
            assert (scored - out.logprobs).abs().max() < TOL, (adapter.name, cache)


def test_continuation_logprobs_of_one_continuation_for_every_prompt() -> None:
    adapter = tiny_model(d_vocab=7, n_ctx=8, n_layers=1, seed=11)
    prompts = _prompts(adapter, 6, 2, seed=12)
    continuation = torch.tensor([3, 0, 5])
    shared = continuation_logprobs(adapter, prompts, continuation, Sampling.sample())
    each = continuation_logprobs(adapter, prompts, continuation.expand(6, 3), Sampling.sample())
    assert torch.equal(shared, each)
    with torch.no_grad():  # teacher forcing: log softmax of the reference forward at the positions before each y_i
        logits = adapter.model(torch.cat([prompts, continuation.expand(6, 3)], dim=1))[:, 1:-1]
    reference = torch.log_softmax(logits.float(), -1).gather(-1, continuation.expand(6, 3)[..., None])[..., 0]
    assert (shared - reference).abs().max() < TOL
    greedy = continuation_logprobs(adapter, prompts, continuation, Sampling.argmax())
    assert set(greedy.flatten().tolist()) <= {0.0, -math.inf}
    assert torch.equal(greedy == 0, logits.argmax(-1) == continuation)


def test_the_cache_is_used_where_there_is_a_fast_path_and_the_recompute_elsewhere() -> None:
    assert isinstance(decoder(tiny_model(seed=1), 4), CachedDecoder)
    assert isinstance(decoder(tiny_model(seed=1), 4, cache=False), RecomputeDecoder)
    assert isinstance(decoder(lookup_model(), 3), RecomputeDecoder)


def test_self_check_rejects_a_cache_that_does_not_reproduce_the_model() -> None:
    adapter = tiny_model(d_vocab=8, n_ctx=8, n_layers=2, seed=19)
    fast = adapter.fast_path
    assert fast is not None and fast.self_check(adapter.model)

    class StaleCache(FastForward):
        """Wrong once the cache holds earlier positions: the last-position path alone would still pass."""

        def decode(self, cache: KVCache, tokens: torch.Tensor, keep: int = 1) -> torch.Tensor:
            return super().decode(cache, tokens, keep) + float(cache.length > tokens.shape[1])

    fast.__class__ = StaleCache
    assert torch.equal(fast.last_logits(torch.zeros(1, 3, dtype=torch.long)),
                       FastForward.last_logits(fast, torch.zeros(1, 3, dtype=torch.long)))
    assert not fast.self_check(adapter.model)


def test_cache_select_keeps_the_chosen_sequences() -> None:
    fast = tiny_model(d_vocab=8, n_ctx=8, n_layers=2, seed=13).fast_path
    assert fast is not None
    tokens = torch.randint(8, (4, 5), generator=torch.Generator().manual_seed(14))
    cache = fast.new_cache(4, 6)
    fast.decode(cache, tokens)
    index = torch.tensor([2, 2, 0, 3])
    picked = cache.select(index)
    nxt = torch.tensor([[1], [2], [3], [4]])
    moved = fast.decode(picked, nxt)
    fresh = fast.decode(fast.new_cache(4, 6), torch.cat([tokens[index], nxt], dim=1))
    assert (moved - fresh).abs().max() < TOL


def test_the_meter_counts_one_pass_per_sequence_and_its_positions() -> None:
    meter = MeteredModel(tiny_model(d_vocab=7, n_ctx=10, seed=15))
    prompts = _prompts(meter.adapter, 6, 4, seed=16)
    out = meter.generate(prompts, 5, Sampling.sample(), torch.Generator().manual_seed(17))
    cost = meter.cost
    assert (cost.forward_passes, cost.backward_passes, cost.positions, cost.generated_tokens) == (6, 0, 6 * 8, 30)
    meter.continuation_logprobs(prompts, out.tokens, Sampling.sample())
    meter.last_logits(prompts)
    spent = meter.cost - cost
    assert (spent.forward_passes, spent.positions, spent.generated_tokens) == (12, 6 * 8 + 6 * 4, 0)
    assert spent.model_calls(2.0) == 12 and spent.model_seconds > 0
    assert Cost(1, 2, 3.0) - Cost(1, 1, 1.0) == Cost(0, 1, 2.0, 0, 0)  # positional fields keep their meaning


def test_estimates_written_before_positions_were_counted_still_read() -> None:
    toy = toy_problem(0)
    est = run_estimator(_GenerateInBatches(), toy.problem(), Budget(model_calls=20), seed=0, progress=False)
    old_row = est.model_dump(mode="json", exclude={"positions", "generated_tokens"})
    read = Estimate.model_validate(old_row)
    assert (read.positions, read.generated_tokens) == (0, 0) and read.forward_passes == est.forward_passes == 20


@pytest.mark.parametrize(("prompt", "steps", "message"), [
    (4, 7, r"generate: a 4-token prompt and 7 continuation tokens exceed model 'tiny-1l-v7-s18'.s context of 10"),
    (4, 0, r"positive integer, got 0"),
    (0, 2, r"at least one token"),
])
def test_over_long_and_empty_requests_are_refused(prompt: int, steps: int, message: str) -> None:
    meter = MeteredModel(tiny_model(d_vocab=7, n_ctx=10, seed=18))
    with pytest.raises(LowprobError, match=message):
        meter.generate(torch.zeros(2, prompt, dtype=torch.long), steps, Sampling.argmax(), torch.Generator())
    if steps:
        with pytest.raises(LowprobError, match=message.replace("generate", "continuation_logprobs")):
            meter.continuation_logprobs(torch.zeros(2, prompt, dtype=torch.long),
                                        torch.zeros(steps, dtype=torch.long), Sampling.argmax())
    assert meter.cost == Cost()


@pytest.mark.parametrize(("tokens", "continuation", "message"), [
    (torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), r"the prompts must be a \[batch, positions\] integer"),
    (torch.full((2, 3), 7), torch.zeros(2, dtype=torch.long), r"token ids of the prompts must lie in \[0, 7\)"),
    (torch.zeros(2, 3, dtype=torch.long), torch.full((2,), -1), r"ids of the continuation must lie in \[0, 7\)"),
    (torch.zeros(2, 3, dtype=torch.long), torch.zeros(3, 2, dtype=torch.long), r"3 continuations for 2 prompts"),
])
def test_bad_tokens_are_refused(tokens: torch.Tensor, continuation: torch.Tensor, message: str) -> None:
    with pytest.raises(LowprobError, match=message):
        continuation_logprobs(tiny_model(d_vocab=7, n_ctx=10, seed=18), tokens, continuation, Sampling.sample())


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"temperature": 0.0}, "temperature must be a positive finite number, got 0.0"),
    ({"temperature": math.inf}, "temperature must be a positive finite number"),
    ({"temperature": True}, "temperature must be a positive finite number"),
    ({"top_k": 0}, "top_k must be a positive integer, got 0"),
    ({"top_k": 2.5}, "top_k must be a positive integer"),
    ({"greedy": True, "temperature": 0.5}, "greedy decoding takes no temperature or top_k"),
    ({"greedy": 1}, "greedy must be true or false"),
])
def test_bad_sampling_settings_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(LowprobError, match=message):
        Sampling(**kwargs)


def test_top_k_keeps_ties_and_a_large_k_keeps_everything() -> None:
    logits = torch.tensor([[2.0, 1.0, 1.0, 0.0]])
    assert torch.isfinite(Sampling.sample(top_k=2).log_probs(logits)).tolist() == [[True, True, True, False]]
    assert torch.equal(Sampling.sample(top_k=10).log_probs(logits), torch.log_softmax(logits, -1))
    assert Sampling.sample(0.7, 50).describe() == "sample(temperature=0.7, top_k=50)"
    assert Sampling.argmax().describe() == "greedy"


@dataclass(frozen=True)
class _Generated:
    samples: int = 0


class _GenerateInBatches(Estimator[_Generated]):
    """Generates continuations in batches sized by the budget, as an output-event estimator does."""

    name = "generate-in-batches"
    capabilities = Capabilities(unbiased=True, has_error_bars=False)

    def init(self, problem: Problem, generator: torch.Generator) -> _Generated:
        return _Generated()

    def step(self, state: _Generated, problem: Problem, generator: torch.Generator,
             context: StepContext) -> tuple[_Generated, StepInfo]:
        n = context.affordable(1.0, 64)
        tokens = problem.distribution.sample(n, generator)
        problem.model.generate(tokens, 4, Sampling.sample(), generator)
        return _Generated(state.samples + n), StepInfo(samples=state.samples + n, done=n == 0)

    def result(self, state: _Generated, problem: Problem, level: float) -> EstimatorOutput:
        return EstimatorOutput(value=0.5, std_error=None, ci=None, hits=0, samples=state.samples)


def test_a_budget_in_model_calls_stops_generation_exactly() -> None:
    toy = toy_problem(0)
    est = run_estimator(_GenerateInBatches(), toy.problem(), Budget(model_calls=150), seed=0, progress=False)
    assert est.stop_reason == "model_calls"
    assert est.forward_passes == est.samples == 150 and est.model_calls == 150
    assert est.generated_tokens == 4 * 150 and est.positions == 150 * (toy.distribution.length + 3)


@pytest.mark.gpu
def test_generation_on_a_gpu_gives_the_cpu_tokens() -> None:
    cpu = tiny_model(d_vocab=11, n_ctx=12, n_layers=2, d_model=16, seed=3)
    gpu = ModelAdapter(cpu.model.to("cuda"), cpu.vocab, cpu.name, device="cuda")
    assert gpu.fast_path is not None
    prompts = _prompts(cpu, 32, 4, seed=20)
    on_gpu = generate(gpu, prompts, 6, Sampling.argmax(), torch.Generator())
    scored = continuation_logprobs(gpu, prompts, on_gpu.tokens, Sampling.sample())
    cpu = ModelAdapter(gpu.model.to("cpu"), cpu.vocab, cpu.name)
    assert torch.equal(on_gpu.tokens.cpu(), generate(cpu, prompts, 6, Sampling.argmax(), torch.Generator()).tokens)
    reference = continuation_logprobs(cpu, prompts, on_gpu.tokens.cpu(), Sampling.sample())
    assert (scored.cpu() - reference).abs().max() < TOL


def test_a_decoding_session_follows_generate_and_costs_what_it_costs() -> None:
    meter = MeteredModel(tiny_model(d_vocab=7, n_ctx=10, n_layers=2, seed=21))
    prompts = _prompts(meter.adapter, 4, 3, seed=22)
    greedy = generate(meter.adapter, prompts, 4, Sampling.argmax(), torch.Generator())
    session = meter.decoding(prompts, 4)
    assert meter.cost.forward_passes == 4 and meter.cost.positions == 4 * 6 and meter.cost.generated_tokens == 16
    chosen = []
    for step in range(4):
        chosen.append(session.logits.argmax(-1))
        if step < 3:
            session.push(chosen[-1])
    assert torch.equal(torch.stack(chosen, dim=1), greedy.tokens)
    assert meter.cost.forward_passes == 4 and meter.cost.positions == 24  # pushes were paid for at the start
    with pytest.raises(LowprobError, match="opened for 4 tokens"):
        session.push(chosen[-1])
    with pytest.raises(LowprobError, match="select needs 4 indices"):
        session.select(torch.tensor([0, 1]))
    session.select(torch.tensor([3, 3, 0, 1]))
    assert torch.equal(session.logits.argmax(-1), chosen[-1][[3, 3, 0, 1]])
