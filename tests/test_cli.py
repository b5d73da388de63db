"""The command line: each command works, explains itself, and reports bad input clearly."""

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from lowprob.cli import main

ROOT = Path(__file__).resolve().parents[1]
DEMO = str(ROOT / "examples/specs/demo.lp")
RANDOM = ["--model", "random-1l"]
"""The demo spec is written for the small random demo model's vocabulary."""


@pytest.fixture
def cli() -> CliRunner:
    return CliRunner()


@pytest.mark.parametrize("command", ["estimate", "compare", "run", "sample", "check", "plugins", "estimators",
                                     "models", "distributions"])
def test_every_command_has_help_with_an_example(cli: CliRunner, command: str) -> None:
    result = cli.invoke(main, [command, "--help"])
    assert result.exit_code == 0
    assert "Example" in result.output


def test_check_reports_a_malformed_spec_with_a_caret(cli: CliRunner, tmp_path: Path) -> None:
    bad = tmp_path / "bad.lp"
    bad.write_text('tokens hex = /^[0-9a-f]+$/\ndist main = BOS hex * \n')
    result = cli.invoke(main, ["check", str(bad)])
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert lines[0].startswith(f"{bad}:2:") and "error:" in lines[0]
    caret_line = next(i for i, line in enumerate(lines) if line.strip() == "^")
    assert "dist main = BOS hex *" in lines[caret_line - 1]
    assert "Traceback" not in result.output


def test_check_accepts_the_demo(cli: CliRunner) -> None:
    result = cli.invoke(main, ["check", DEMO, *RANDOM])
    assert result.exit_code == 0, result.output
    assert "dist main: 16 independent positions" in result.output
    assert "target stop: argmax == 'STOP'" in result.output


def test_estimate_prints_samples_estimate_and_cost(cli: CliRunner, tmp_path: Path) -> None:
    out = tmp_path / "r.jsonl"
    result = cli.invoke(main, ["estimate", DEMO, *RANDOM, "--target", 'argmax in /^[a-z ]+$/', "--budget-calls",
                               "3000", "--seed", "4", "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert result.output.count("  sample     '<|BOS|>") == 3
    assert "95% CI [" in result.output and "cost 3000 fwd + 0 bwd passes" in result.output
    row = json.loads(out.read_text())
    assert row["estimate"]["forward_passes"] == 3000 and row["seed"] == 4
    assert row["estimate"]["provenance"]["plugin"] == "lowprob.naive"


def test_estimate_json_is_the_full_result(cli: CliRunner) -> None:
    result = cli.invoke(main, ["estimate", DEMO, *RANDOM, "--budget-calls", "1000", "--json", "-o", "batch_size=250"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["samples"] == 1000 and len(data["trace"]) == 4
    assert data["provenance"]["options"]["batch_size"] == 250


@pytest.mark.parametrize(("args", "message"), [
    (["estimate", DEMO, *RANDOM, "--estimator", "nope"], "unknown estimator 'nope'; known estimators: "),
    (["estimate", DEMO, "--model", "gpt-9", "--samples", "0"], "unknown model 'gpt-9'; known models: "),
    (["estimate", DEMO, *RANDOM, "--budget-calls", "0"], "model_calls must be at least 1"),
    (["estimate", DEMO, *RANDOM, "-o", "colour=red"], "invalid options for estimator 'naive': colour"),
    (["estimate", DEMO, *RANDOM, "-o", "oops"], "option 'oops' is not of the form key=value"),
    (["estimate", DEMO, *RANDOM, "--paper-budget", "--budget-calls", "5"], "--paper-budget replaces the other budget"),
    (["estimate", "missing.lp"], "spec file 'missing.lp' does not exist"),
    (["estimate", "no-such-dist"], "unknown distribution 'no-such-dist'; known distributions:"),
    (["run", "missing.toml"], "experiment file missing.toml does not exist"),
])
def test_bad_input_is_one_clear_error(cli: CliRunner, args: list[str], message: str) -> None:
    result = cli.invoke(main, args)
    assert result.exit_code == 1
    assert message in result.output
    assert "Traceback" not in result.output


def test_sample_is_seeded(cli: CliRunner) -> None:
    a = cli.invoke(main, ["sample", DEMO, *RANDOM, "-n", "4", "--seed", "9"])
    b = cli.invoke(main, ["sample", DEMO, *RANDOM, "-n", "4", "--seed", "9"])
    assert a.exit_code == 0 and a.output == b.output and len(a.output.splitlines()) == 4


def test_listings(cli: CliRunner) -> None:
    plugins = json.loads(cli.invoke(main, ["plugins", "--json"]).output)
    naive = next(p for p in plugins if p["name"] == "lowprob.naive")
    assert naive["provides"] == {"estimators": ["naive"]} and naive["version"]
    estimators = cli.invoke(main, ["estimators", "--options"]).output
    assert "naive" in estimators and "batch_size" in estimators and "clopper-pearson" in estimators
    assert "lowprob-1l (default)" in cli.invoke(main, ["models"]).output
    assert "hex-demo" in cli.invoke(main, ["distributions"]).output


def test_run_an_experiment_prints_a_summary(cli: CliRunner, tmp_path: Path) -> None:
    exp = tmp_path / "e.toml"
    exp.write_text(f"""
name = "cli"
output = "r.jsonl"
models = ["random-1l"]
seeds = [0, 1]
[[distributions]]
spec = "{DEMO}"
targets = ['argmax in /^[a-z ]+$/']
[[estimators]]
name = "naive"
[[budgets]]
model_calls = 1000
""")
    result = cli.invoke(main, ["run", str(exp)])
    assert result.exit_code == 0, result.output
    assert "2 estimates planned, 0 already" in result.output
    assert "calls/run" in result.output and "1000" in result.output
    again = cli.invoke(main, ["run", str(exp)])
    assert "2 already in" in again.output and "0 to run" in again.output
