"""Output events from the command line: estimate, refusal, ground truth (on the fast random demo model)."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from lowprob.cli import main

DEMO = str(Path(__file__).resolve().parents[2] / "examples/specs/demo.lp")
RANDOM = ["--model", "random-1l"]
EVENT = "sample(2) contains hex"


def test_estimate_an_output_event_with_naive_and_conditional_exact() -> None:
    cli = CliRunner()
    for estimator, fixed in (("naive", EVENT), ("conditional-exact", 'greedy(3) contains hex')):
        result = cli.invoke(main, ["estimate", DEMO, *RANDOM, "--target", fixed, "--estimator", estimator,
                                   "--budget-calls", "512", "--seed", "1", "--no-progress"])
        assert result.exit_code == 0, result.output
        assert f"target       {fixed.replace('hex', 'hex (')}" in result.output
        assert "cost 512 fwd + 0 bwd passes" in result.output


def test_an_estimator_without_output_events_refuses_them() -> None:
    result = CliRunner().invoke(main, ["estimate", DEMO, *RANDOM, "--target", EVENT, "--estimator", "itgis",
                                       "--budget-calls", "512"])
    assert result.exit_code != 0
    assert "estimator 'itgis' judges the next token after the input and does not support output events" in \
        result.output


def test_ground_truth_of_an_output_event(tmp_path: Path) -> None:
    cli, out = CliRunner(), tmp_path / "gt.json"
    args = ["ground-truth", "run", DEMO, *RANDOM, "--target", EVENT, "--shard-size", "256", "--output", str(out),
            "--no-progress"]
    first = cli.invoke(main, [*args, "--samples", "256"])
    assert first.exit_code == 0, first.output
    resumed = cli.invoke(main, [*args, "--samples", "512"])
    assert resumed.exit_code == 0, resumed.output
    assert "in 512 samples (2 shards of 256)" in resumed.output
    shown = cli.invoke(main, ["ground-truth", "show", str(out)])
    assert shown.exit_code == 0 and "sample(2) contains hex" in shown.output
    argmax = cli.invoke(main, ["ground-truth", "run", DEMO, *RANDOM, "--target", 'argmax == "STOP"', "--samples",
                               "256", "--shard-size", "256", "--output", str(tmp_path / "x.json")])
    assert argmax.exit_code != 0 and "run without --target" in argmax.output
