"""Results files are append-only and survive interruption; experiments validate up front and resume."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from made_estimates import made_estimate

from lowprob import experiments, read_results
from lowprob.core import Budget, LowprobError
from lowprob.core.estimate import Estimate
from lowprob.plugins import hookimpl, load_registry
from lowprob.plugins.testing import tiny_model
from lowprob.results import ResultRow, ResultsFile, RowSpec, write_atomic

ROOT = Path(__file__).resolve().parents[1]


class TinyModels:
    """A test plugin: a 6-token model over the letters a–f, marked default."""

    @hookimpl
    def register_models(self, registrar) -> None:  # type: ignore[no-untyped-def]
        registrar.add_model("tiny", lambda: tiny_model(d_vocab=6, seed=3), default=True,
                            description="test model")


@pytest.fixture(scope="module")
def registry():  # type: ignore[no-untyped-def]
    return load_registry(entry_points=False, extra_plugins=[TinyModels()])


def _write_experiment(tmp: Path, seeds: int = 3, extra: str = "") -> Path:
    path = tmp / "exp.toml"
    path.write_text(f"""
name = "t"
output = "out/results.jsonl"
seeds = {list(range(seeds))}
{extra}
[[distributions]]
name = "letters"
text = '''
tokens letters = /^[a-f]$/
dist main = letters * 3
target c = argmax == "c"
'''
targets = ["c", 'argmax in {{"a", "b"}}']

[[estimators]]
name = "naive"
options = {{ batch_size = 100 }}

[[budgets]]
model_calls = 300
""")
    return path


def _row(name: str, value: float = 0.5) -> ResultRow:
    """A hand-made row whose estimate is ``value`` (each name a distinct key)."""
    spec = RowSpec(model="tiny", distribution=name, distribution_hash="h", target="t", estimator="naive",
                   label="naive", budget=Budget(model_calls=10), seed=0)
    return ResultRow.of(spec, estimate=made_estimate(value))


def test_results_file_appends_complete_lines_and_trims_a_partial_tail(tmp_path: Path) -> None:
    results = ResultsFile(tmp_path / "r.jsonl")
    results.append(_row("a"))
    first = results.path.read_text()
    with results.path.open("ab") as fh:  # a write killed halfway
        fh.write(b'{"key": "b", "v"')
    assert [r.distribution for r in results.rows()] == ["a"]
    results.append(_row("c"))
    assert [r.distribution for r in read_results(results.path)] == ["a", "c"]
    assert results.path.read_text().startswith(first) and results.path.read_text().count("\n") == 2


def test_rows_read_back_typed_with_their_estimate(tmp_path: Path) -> None:
    results = ResultsFile(tmp_path / "r.jsonl")
    results.append(_row("a", 0.25))
    (row,) = read_results(results.path)
    assert isinstance(row.estimate, Estimate) and row.estimate.value == 0.25 and row.format_version == 1
    assert row == _row("a", 0.25) and row.key == row.digest()


def test_damaged_results_file_is_reported_not_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_text('not json\n{"key": "a"}\n')
    with pytest.raises(LowprobError, match="r.jsonl:1: not a JSON line"):
        ResultsFile(path).keys()
    assert path.read_text() == 'not json\n{"key": "a"}\n'


def test_write_atomic_replaces_whole_file(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "summary.txt"
    write_atomic(path, "one")
    write_atomic(path, "two")
    assert path.read_text() == "two"
    assert [p.name for p in path.parent.iterdir()] == ["summary.txt"]


def test_nan_rows_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        ResultsFile(tmp_path / "r.jsonl").append(_row("a", float("nan")))


def test_experiment_plan_and_resume_without_duplicates(tmp_path: Path, registry) -> None:  # type: ignore[no-untyped-def]
    exp = experiments.plan(_write_experiment(tmp_path), registry)
    assert len(exp.jobs) == 2 * 3  # two targets × three seeds
    first = []
    for row in experiments.run(exp, registry):  # interrupted after two rows
        first.append(row)
        if len(first) == 2:
            break
    with exp.output.open("ab") as fh:  # and a third row half-written when it was killed
        fh.write(b'{"key": "partial')
    assert len(experiments.open_results(exp).pending(exp.jobs)) == 4
    rest = list(experiments.run(experiments.plan(tmp_path / "exp.toml", registry), registry))
    rows = read_results(exp.output)
    assert len(rest) == 4 and len(rows) == 6
    assert len({r.key for r in rows}) == 6
    assert rows[:2] == first
    assert {r.target for r in rows} == {"c", 'argmax in {"a", "b"}'}
    assert all(r.estimate is not None and r.estimate.forward_passes == 300 for r in rows)
    assert experiments.open_results(exp).pending(exp.jobs) == []


def test_same_experiment_same_numbers(tmp_path: Path, registry) -> None:  # type: ignore[no-untyped-def]
    values = []
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        exp = experiments.plan(_write_experiment(tmp_path / sub, seeds=2), registry)
        values.append([r.estimate.value for r in experiments.run(exp, registry) if r.estimate is not None])
    assert values[0] == values[1]


@pytest.mark.parametrize(("extra", "message"), [
    ("colour = 'red'", "colour: unknown key 'colour'"),
    ("level = 2", "level: Input should be less than 1"),
])
def test_bad_experiment_keys_name_file_and_key(tmp_path: Path, registry, extra: str, message: str) -> None:  # type: ignore[no-untyped-def]
    path = _write_experiment(tmp_path, extra=extra)
    with pytest.raises(LowprobError) as err:
        experiments.plan(path, registry)
    assert str(path) in str(err.value) and message in str(err.value)


def test_bad_options_and_specs_fail_before_anything_runs(tmp_path: Path, registry) -> None:  # type: ignore[no-untyped-def]
    path = _write_experiment(tmp_path)
    path.write_text(path.read_text().replace("batch_size = 100", "batch_sise = 100"))
    with pytest.raises(LowprobError, match="batch_sise"):
        experiments.plan(path, registry)
    path = _write_experiment(tmp_path)
    path.write_text(path.read_text().replace('argmax == "c"', 'argmax == "zz"'))
    with pytest.raises(LowprobError, match="letters"):
        experiments.plan(path, registry)
    assert not (tmp_path / "out").exists()


def test_a_killed_run_resumes_without_losing_or_duplicating_rows(tmp_path: Path) -> None:
    """Kill `lowprob run` with SIGKILL after its first rows, rerun it, and check every row once."""
    exp = tmp_path / "exp.toml"
    exp.write_text(f"""
name = "kill"
output = "r.jsonl"
models = ["random-1l"]
seeds = {list(range(12))}
[[distributions]]
spec = "{ROOT / 'examples/specs/demo.lp'}"
[[estimators]]
name = "naive"
options = {{ batch_size = 500 }}
[[budgets]]
model_calls = 1500
""")
    env = {**os.environ, "CI": "1"}
    cmd = [sys.executable, "-m", "lowprob", "run", str(exp)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    results = tmp_path / "r.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if results.exists() and results.read_text().count("\n") >= 2:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = results.read_text().splitlines()
    assert 2 <= len(before) < 12, "the run should have been killed part-way"
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    after = [json.loads(line) for line in results.read_text().splitlines()]
    assert len(after) == 12 and len({r["key"] for r in after}) == 12 and len(read_results(results)) == 12
    assert [json.dumps(r, sort_keys=True) for r in after[:len(before)]] == before
    assert sorted(r["seed"] for r in after) == list(range(12))


def test_paper_budget_preset_resolves_per_estimator(tmp_path: Path, registry) -> None:  # type: ignore[no-untyped-def]
    path = _write_experiment(tmp_path, seeds=1)
    path.write_text(path.read_text().replace("[[budgets]]\nmodel_calls = 300", '[[budgets]]\npreset = "paper"'))
    exp = experiments.plan(path, registry)
    assert {job.spec.budget.model_calls for job in exp.jobs} == {2**16}
    assert {job.spec.budget.backward_weight for job in exp.jobs} == {0.0}
    row = next(experiments.run(exp, registry))
    assert row.estimate is not None and row.estimate.forward_passes == 2**16


@pytest.mark.parametrize(("old", "new", "duplicate"), [
    ("seeds = [0]", "seeds = [0, 0]", "seeds lists 0 twice"),
    ('output = "out/results.jsonl"', 'output = "out/results.jsonl"\nmodels = ["tiny", "tiny"]', "models lists 'tiny'"),
    ('targets = ["c", ', 'targets = ["c", "c", ', "targets lists 'c' twice"),
    ("[[budgets]]\nmodel_calls = 300", "[[budgets]]\nmodel_calls = 300\n[[budgets]]\nmodel_calls = 300",
     "budgets lists .*300.* twice"),
    ("[[estimators]]", "[[distributions]]\nname = 'letters'\ntext = 'dist main = \"a\"'\ntargets = ['argmax == \"a\"']"
     "\n[[estimators]]", "distributions \\(by name\\) lists 'letters' twice"),
])
def test_duplicate_plan_entries_are_rejected_by_name(tmp_path: Path, registry, old: str, new: str,  # type: ignore[no-untyped-def]
                                                    duplicate: str) -> None:
    """Issue 12 defect 10: `seeds = [0, 0]` (or a repeated model, target, budget, distribution) wrote two rows
    under one key and the summary reported `runs 2`."""
    path = _write_experiment(tmp_path, seeds=1)
    assert old in path.read_text()
    path.write_text(path.read_text().replace(old, new, 1))
    with pytest.raises(LowprobError, match=f"{path}: {duplicate}"):
        experiments.plan(path, registry)


@pytest.mark.parametrize(("output", "message"), [
    ('""', "is a folder"), ('"."', "is a folder"), ('"out"', "is a folder"),
    ('"/proc/lowprob.jsonl"', "cannot write results file"),
])
def test_unwritable_experiment_outputs_fail_in_the_dry_run(tmp_path: Path, registry, output: str,  # type: ignore[no-untyped-def]
                                                           message: str) -> None:
    """Issue 12 defect 9: `output = ""` or `"."` crashed even in --dry-run; /proc passed it and failed later."""
    (tmp_path / "out").mkdir()
    path = _write_experiment(tmp_path)
    path.write_text(path.read_text().replace('output = "out/results.jsonl"', f"output = {output}"))
    with pytest.raises(LowprobError, match=f"{path}: output: .*{message}"):
        experiments.open_results(experiments.plan(path, registry))
    with pytest.raises(LowprobError, match="is a folder; name a TOML file"):
        experiments.plan(tmp_path, registry)


def test_a_complete_last_row_without_newline_is_not_lost_on_resume(tmp_path: Path, registry) -> None:  # type: ignore[no-untyped-def]
    """Issue 12 defect 13: with rows pending, a complete last row lacking its newline was counted as done, then
    deleted by the partial-tail trim: the run exited 0 with a row missing."""
    exp = experiments.plan(_write_experiment(tmp_path), registry)
    for count, _ in enumerate(experiments.run(exp, registry), start=1):
        if count == 3:
            break
    exp.output.write_bytes(exp.output.read_bytes().rstrip(b"\n"))
    assert len(list(experiments.run(exp, registry))) == 3
    rows = read_results(exp.output)
    assert len(rows) == 6 and {r.key for r in rows} == {job.key for job in exp.jobs}
