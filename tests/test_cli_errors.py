"""The CLI under hostile input: one error boundary, values refused at parse time naming the option, outputs
checked before any compute, pydantic errors in plain words; and a few dozen generated cases of the fuzz suite."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from fuzz.hostile_inputs import (
    COMMANDS,
    DEMO,
    EXAMPLES,
    Mutation,
    Tally,
    flag_sets,
    mutations,
    run_experiment_case,
    run_flag_case,
    shared_cli_registry,
)
from hypothesis import given, settings
from hypothesis import strategies as st

import lowprob.cli as cli
import lowprob.ground_truth as ground_truth
from lowprob.core.budget import Budget
from lowprob.core.errors import LowprobError
from lowprob.core.random import MAX_SEED
from lowprob.core.runner import run_estimator
from lowprob.ground_truth import GroundTruth, run_ground_truth
from lowprob.plugins import Registry, load_registry
from lowprob.plugins.testing import toy_problem

RANDOM = ["--model", "random-1l"]
GT = ["ground-truth", "run", DEMO, *RANDOM, "--samples", "2^11", "--shard-size", "2^10", "--no-progress"]


@pytest.fixture(scope="module")
def registry() -> Iterator[Registry]:
    """One registry for the module, so each model loads once (the CLI builds a fresh one per call)."""
    with shared_cli_registry() as shared:
        yield shared


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli.main, list(args))
    assert isinstance(result.exception, SystemExit | None), result.exception  # the boundary caught it
    assert "Traceback" not in result.output
    return result.exit_code, result.output


# ---- the error boundary ----

def test_an_unexpected_exception_is_one_paragraph_with_its_own_exit_status(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> Registry:
        raise ValueError("Overflow when unpacking long long")

    monkeypatch.setattr(cli, "_registry", broken)
    code, output = invoke("estimate", "caps", "--seed", "3")
    assert code == cli.EXIT_INTERNAL_ERROR == 70
    lines = output.strip().splitlines()
    assert len(lines) == 1, output
    assert "internal error in `lowprob estimate caps --seed 3`: ValueError: Overflow when unpacking" in lines[0]
    assert "lowprob -v estimate" in lines[0] and "bug" in lines[0]
    verbose = CliRunner().invoke(cli.main, ["-v", "estimate", "caps"])
    assert verbose.exit_code == 70
    assert "Traceback (most recent call last)" in verbose.output and 'raise ValueError("Overflow' in verbose.output


def test_ctrl_c_exits_130_and_user_errors_1_and_usage_errors_2(monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted() -> Registry:
        raise KeyboardInterrupt

    assert invoke("estimate", "missing.lp")[0] == cli.EXIT_USER_ERROR == 1
    assert invoke("estimate", "caps", "--seed", "x")[0] == 2
    monkeypatch.setattr(cli, "_registry", interrupted)
    code, output = invoke("estimate", "caps")
    assert code == 130 and "interrupted" in output


def test_a_long_input_is_cut_in_the_internal_error_message(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> Registry:
        raise RuntimeError("boom")

    monkeypatch.setattr(cli, "_registry", broken)
    code, output = invoke("check", "dist main = BOS " + '"a" ' * 10_000)
    assert code == 70 and len(output) < 600


# ---- seeds (defect 8) ----

@pytest.mark.parametrize("seed", [str(2**63), str(2**64), "-1", str(-(2**63) - 1)])
@pytest.mark.parametrize("command", [
    ["estimate", DEMO, *RANDOM, "--dry-run", "--seed"],
    ["sample", DEMO, *RANDOM, "--seed"],
    ["brackets", "lowprob-1l", "hex", "--seed"],
    [*GT, "--output", "never.json", "--first-seed"],
])
def test_seeds_outside_0_to_2_63_are_refused_at_parse_time(command: list[str], seed: str) -> None:
    code, output = invoke(*command, seed)
    assert code == 2 and "Invalid value for '--" in output and "0<=x<=9223372036854775807" in output


def test_the_largest_seed_works(registry: Registry) -> None:
    code, output = invoke("sample", DEMO, *RANDOM, "-n", "2", "--seed", str(MAX_SEED))
    assert code == 0 and len(output.splitlines()) == 2


def test_run_estimator_refuses_a_seed_that_would_overflow() -> None:
    toy = toy_problem(seed=1)
    with pytest.raises(LowprobError, match=r"seed must be an integer from 0 to 2\^63 - 1, got 18446744073709551616"):
        run_estimator(load_registry().create_estimator("naive"), toy.problem(), Budget(model_calls=100), 2**64)


def _experiment(tmp_path: Path, budgets: str, top: str = "") -> Path:
    """An experiment file: naive on hex with ``budgets`` (the body of its first ``[[budgets]]``)."""
    path = tmp_path / "e.toml"
    path.write_text(f'name = "s"\noutput = "r.jsonl"\n{top}[[distributions]]\nspec = "hex"\n[[estimators]]\n'
                    f'name = "naive"\n[[budgets]]\n{budgets}\n')
    return path


@pytest.mark.parametrize(("seeds", "message"), [
    ("[9223372036854775808]", "seeds.0: Input should be less than or equal to 9223372036854775807"),
    ("[-1]", "seeds.0: Input should be greater than or equal to 0"),
    ("[1.5]", "seeds.0: Input should be a valid integer"),
    ("[true]", "seeds.0: Input should be a valid integer"),
])
def test_experiment_seeds_are_validated_with_the_key(tmp_path: Path, seeds: str, message: str) -> None:
    path = _experiment(tmp_path, "model_calls = 100", top=f"seeds = {seeds}\n")
    code, output = invoke("run", str(path), "--dry-run")
    assert code == 1 and message in output


def test_union_errors_name_the_forms_not_pydantic_internals(tmp_path: Path) -> None:
    path = _experiment(tmp_path, 'model_call = 5\n[[budgets]]\npreset = "papr"')
    code, output = invoke("run", str(path), "--dry-run")
    assert code == 1
    assert "function-after" not in output and "[_validate()" not in output
    assert "budgets.0: fits none of its forms: Budget (unknown key 'model_call') or BudgetPreset (preset: " \
           "required; unknown key 'model_call')" in output
    assert "budgets.1: fits none of its forms: Budget (unknown key 'preset') or BudgetPreset (preset: Input " \
           "should be 'paper')" in output


@pytest.mark.parametrize(("budget", "message"), [
    ("model_calls = true", "model_calls: Input should be a valid integer"),
    ('model_calls = "5"', "model_calls: Input should be a valid integer"),
    ('seconds = "5"', "seconds: Input should be a valid number"),
])
def test_budget_values_of_the_wrong_type_are_refused(tmp_path: Path, budget: str, message: str) -> None:
    path = _experiment(tmp_path, budget)
    code, output = invoke("run", str(path), "--dry-run")
    assert code == 1 and message in output


# ---- estimate and sample flags (defect 12) ----

@pytest.mark.parametrize(("args", "message"), [
    (["estimate", DEMO, *RANDOM, "--samples", "-5"], "'--samples': -5 is not in the range 0<=x<=10000"),
    (["estimate", DEMO, *RANDOM, "--level", "nan"], "'--level': 'nan': must be a finite number with 0 < x < 1"),
    (["estimate", DEMO, *RANDOM, "--level", "1"], "'--level': '1': must be a finite number with 0 < x < 1"),
    (["sample", DEMO, *RANDOM, "-n", "0"], "'-n': 0 is not in the range 1<=x<=10000"),
    (["sample", DEMO, *RANDOM, "-n", str(2**70)], "is not in the range 1<=x<=10000"),
    (["ground-truth", "show", "x.json", "--top", "-1"], "'--top': -1 is not in the range x>=0"),
    (["brackets", "lowprob-1l", "hex", "--runs", "0"], "'--runs': 0 is not in the range x>=1"),
])
def test_bad_numbers_are_refused_naming_the_option(args: list[str], message: str) -> None:
    code, output = invoke(*args)
    assert code == 2 and message in output


def test_estimate_dry_run_validates_and_estimates_nothing(registry: Registry, tmp_path: Path) -> None:
    code, output = invoke("estimate", DEMO, *RANDOM, "--dry-run", "--output", str(tmp_path / "r.jsonl"))
    assert code == 0 and "dry run      nothing estimated" in output and "result" not in output
    assert not (tmp_path / "r.jsonl").exists()
    code, output = invoke("estimate", DEMO, *RANDOM, "--dry-run", "--estimator", "mhis", "--budget-calls", "5")
    assert code == 1 and "a budget of 5 model calls is less than one step of estimator 'mhis'" in output


# ---- ground-truth run (defects 11, 12, 16) ----

@pytest.mark.parametrize(("flags", "message"), [
    (["--samples", "2^70"], "'--samples': '2^70': must be at least 1 and at most 2^52"),
    (["--samples", "2^-1"], "'--samples': '2^-1': the exponent must be an integer from 0 to 256"),
    (["--samples", "0.5"], "'--samples': '0.5' is not an integer or 2^k"),
    (["--samples", "2^9999999999"], "the exponent must be an integer from 0 to 256"),
    (["--samples", "2^40", "--shard-size", "2^10"], "a file holds at most 1048576 shards"),
    (["--samples", "3000"], "samples (3000) must be a positive multiple of the shard size (1024)"),
    (["--shard-size", "0"], "'--shard-size': '0': must be at least 1"),
    (["--shard-size", "-1"], "'--shard-size': '-1': must be at least 1"),
    (["--shard-size", "2^-1"], "'--shard-size': '2^-1': the exponent must be"),
    (["--batch-size", "0"], "'--batch-size': 0 is not in the range 1<=x<=16777216"),
    (["--batch-size", "-1"], "'--batch-size': -1 is not in the range"),
    (["--reservoir", "-1"], "'--reservoir': -1 is not in the range 0<=x<=4096"),
    (["--reservoir-max-p", "nan"], "'--reservoir-max-p': 'nan': must be a finite number with 0 ≤ x ≤ 1"),
    (["--reservoir-max-p", "1.5"], "'--reservoir-max-p': '1.5'"),
    (["--first-seed", str(MAX_SEED)], "the first seed must be from 0 to 2^63 - 1 minus the shard count"),
    (["--device", "nonsense"], "'--device': 'nonsense' is not a torch device"),
    (["--device", "meta"], "lowprob counts on cpu, cuda or mps, not meta"),
    pytest.param(["--device", "cuda"], "'--device': 'cuda': CUDA is not available on this machine",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")),
])
def test_ground_truth_flags_are_refused_before_anything_is_counted(
        flags: list[str], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ground_truth, "count_shard", lambda *a, **k: pytest.fail("a shard was counted"))
    code, output = invoke(*GT, "--output", str(tmp_path / "gt.json"), *flags)
    assert code in (1, 2) and message in output, output
    assert not (tmp_path / "gt.json").exists()


@pytest.mark.parametrize(("output", "message"), [
    ("/proc/lowprob.json", "cannot write /proc/lowprob.json: /proc is not writable"),
    ("{tmp}", "is a folder; name a ground-truth file"),
    ("", "is a folder"),
    ("{tmp}/read-only.json", "is read-only; make it writable (chmod u+w)"),
    ("{tmp}/a\x00b.json", "is not a valid path (it contains a NUL character)"),
])
def test_unwritable_ground_truth_outputs_are_refused_before_counting(
        output: str, message: str, registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    toy = toy_problem(seed=2)
    readonly = tmp_path / "read-only.json"
    run_ground_truth(toy.model, toy.distribution, "toy", readonly, samples=64, shard_size=64)
    readonly.chmod(0o444)
    before = readonly.read_bytes(), readonly.stat().st_mode
    monkeypatch.setattr(ground_truth, "count_shard", lambda *a, **k: pytest.fail("a shard was counted"))
    code, text = invoke(*GT, "--output", output.format(tmp=tmp_path))
    assert code in (1, 2) and message in text, text
    assert (readonly.read_bytes(), readonly.stat().st_mode) == before  # not replaced by the atomic rename
    assert stat.S_IMODE(before[1]) == 0o444


def test_ground_truth_dry_run_counts_nothing_and_says_what_is_left(registry: Registry, tmp_path: Path) -> None:
    out = tmp_path / "gt.json"
    code, output = invoke(*GT, "--output", str(out), "--dry-run")
    assert code == 0 and "2 shards of 1024 wanted, 0 already there, 2 to count" in output and not out.exists()
    assert invoke(*GT, "--output", str(out))[0] == 0
    code, output = invoke(*GT[:5], "--samples", "2^12", "--shard-size", "2^10", "--output", str(out), "--dry-run")
    assert code == 0 and "4 shards of 1024 wanted, 2 already there, 2 to count" in output


def test_ground_truth_show_prints_the_tokens(registry: Registry, tmp_path: Path) -> None:
    out = tmp_path / "gt.json"
    assert invoke(*GT, "--output", str(out))[0] == 0
    gt = GroundTruth.load(out)
    vocab = registry.model("random-1l").vocab
    code, output = invoke("ground-truth", "show", str(out), "--top", "3")
    assert code == 0
    top = sorted(range(gt.d_vocab), key=lambda t: (-gt.hits(t), t))[:3]
    for line, token in zip(output.splitlines()[1:], top, strict=True):
        assert line.split()[0] == str(token) and repr(vocab.token_string(token)) in line
        assert f"{gt.hits(token):>12}" in line


def test_hits_is_the_count_and_hitting_inputs_the_stored_examples(tmp_path: Path) -> None:
    toy = toy_problem(seed=3)
    gt = run_ground_truth(toy.model, toy.distribution, "toy", tmp_path / "gt.json", samples=256, shard_size=256,
                          reservoir_size=2, reservoir_max_p=1.0)
    for token in range(gt.d_vocab):
        assert gt.hits(token) == int(gt.counts[token]) and isinstance(gt.hits(token), int)
        assert len(gt.hitting_inputs(token)) == min(2, gt.hits(token))


# ---- generated cases (the fuzz suite runs ≥ 1000 of each under `make test-fuzz`) ----

@pytest.fixture(scope="module")
def show_file(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with a small ground truth of the random model, for ``ground-truth show`` cases."""
    folder = tmp_path_factory.mktemp("show")
    toy = registry.model("random-1l")
    compiled = cli.compile_source(registry, cli.resolve_spec(DEMO, registry), model="random-1l")
    run_ground_truth(toy, compiled.spec.distribution(None), "demo", folder / "gt.json", samples=512, shard_size=512)
    return folder


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_generated_flags_end_in_a_clean_error_or_a_valid_plan(name: str, registry: Registry, show_file: Path) -> None:
    tally = Tally()

    @settings(max_examples=8, derandomize=True, deadline=None, database=None)
    @given(flag_sets(COMMANDS[name]))
    def case(flags: dict[str, str]) -> None:
        run_flag_case(tally, name, flags, show_file)

    case()
    assert not tally.failures, "\n\n".join(tally.failures)


def test_generated_experiment_files_end_in_a_clean_error_or_a_valid_plan(registry: Registry, tmp_path: Path) -> None:
    tally = Tally()

    @settings(max_examples=24, derandomize=True, deadline=None, database=None)
    @given(st.sampled_from(EXAMPLES), st.lists(mutations(), max_size=2))
    def case(source: Path, changes: list[Mutation]) -> None:
        run_experiment_case(tally, source, changes, tmp_path)

    case()
    assert not tally.failures, "\n\n".join(tally.failures)
    assert os.listdir(tmp_path) == ["experiment.toml"]  # a dry run writes nothing


def test_the_judge_tells_outcomes_apart(registry: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fuzz verdicts can fail: an accepted invalid value, a rejected valid one, a bug and a hang."""
    import fuzz.hostile_inputs as hostile

    tally = Tally()
    sample = ["sample", DEMO, *RANDOM, "--seed"]
    assert tally.judge([*sample, "5"], True, "  ") == "valid plan"
    assert tally.judge([*sample, "-1"], False, "  ") == "clean error"
    assert tally.judge([*sample, "5"], False, "  ") == "silent acceptance"
    assert tally.judge([*sample, "-1"], True, "  ") == "false rejection"
    def broken() -> Registry:
        raise KeyError("boom")

    monkeypatch.setattr(cli, "_registry", broken)
    assert tally.judge([*sample, "5"], None, "  ") == "internal error"
    monkeypatch.setattr(hostile, "CASE_SECONDS", 0.0)
    assert tally.judge([*sample, "-1"], None, "  ") == "hang"
    assert len(tally.failures) == 4 and "silent acceptance" in tally.failures[0]


def test_a_closed_pipe_ends_quietly(monkeypatch: pytest.MonkeyPatch) -> None:
    def closed() -> Registry:
        raise BrokenPipeError

    monkeypatch.setattr(cli, "_registry", closed)
    code, output = invoke("sample", "hex")
    assert code == cli.EXIT_BROKEN_PIPE == 141 and output == ""


def test_merge_refuses_a_damaged_input_and_a_read_only_output(tmp_path: Path) -> None:
    toy = toy_problem(seed=2)
    good = tmp_path / "good.json"
    run_ground_truth(toy.model, toy.distribution, "toy", good, samples=64, shard_size=64)
    (tmp_path / "bad.json").write_text("[]")
    code, output = invoke("ground-truth", "merge", str(good), str(tmp_path / "bad.json"), "--output",
                          str(tmp_path / "m.json"))
    assert code == 1 and f"{tmp_path / 'bad.json'}: not a lowprob ground-truth file" in output
    readonly = tmp_path / "ro.json"
    readonly.write_text("{}")
    readonly.chmod(0o444)
    code, output = invoke("ground-truth", "merge", str(good), "--output", str(readonly))
    assert code == 1 and "is read-only" in output and readonly.read_text() == "{}"
