"""Bidirectional log-Z brackets of output events against an output ground truth, by API and command line."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from click.testing import CliRunner
from output_toys import toy_output_problem

from lowprob.brackets import bracket_output, bracketing_estimator
from lowprob.cli import main
from lowprob.core.errors import LowprobError
from lowprob.output_ground_truth import OutputGroundTruth, run_output_ground_truth
from lowprob.plugins import load_registry

TOY_EVENT = 'sample(3) contains {"d"}'
DEMO = str(Path(__file__).resolve().parents[2] / "examples/specs/demo.lp")
EVENT = "sample(2) contains hex"


@pytest.mark.parametrize("reservoir", [8, 0])
def test_the_bracket_holds_the_exact_log_z_of_a_toy(tmp_path: Path, reservoir: int) -> None:
    """lower ≤ log Z ≤ upper with the exact log Z by enumeration, positives from the reservoir or by rejection."""
    toy = toy_output_problem(TOY_EVENT)
    gt = run_output_ground_truth(toy.model, toy.distribution, "toy", toy.target, tmp_path / "gt.json", samples=1024,
                                 shard_size=1024, reservoir_size=reservoir, progress=False)
    bracketing = bracketing_estimator(load_registry(), "output-tsmc")
    row = bracket_output(bracketing, toy.model, toy.distribution, toy.target, gt, runs=12, particles=16, seed=1,
                         rejection_draws=512)
    log_z = math.log(toy.exact)
    assert row.lower_se is not None and row.upper_se is not None
    assert row.lower <= log_z + 3 * row.lower_se and row.upper >= log_z - 3 * row.upper_se
    assert row.log_p_true == pytest.approx(math.log(gt.hits / 1024))
    assert row.kl_forward == pytest.approx(row.log_p_true - row.lower)
    assert row.zero_runs == 0 and row.runs == 12 and row.positives == 8
    assert row.source == "ground truth" if reservoir else row.source.startswith("rejection, ")


def test_no_hits_means_no_bracket() -> None:
    toy = toy_output_problem(TOY_EVENT)
    gt = OutputGroundTruth(toy.model.name, "toy", toy.distribution.content_hash, toy.target.describe(), 16, (0,), 0)
    with pytest.raises(LowprobError, match="no hits of .* so log p is unknown"):
        bracket_output(bracketing_estimator(load_registry(), "output-tsmc"), toy.model, toy.distribution, toy.target,
                       gt)


def test_brackets_command_on_an_output_ground_truth(tmp_path: Path) -> None:
    cli, out = CliRunner(), tmp_path / "gt.json"
    made = cli.invoke(main, ["ground-truth", "run", DEMO, "--model", "random-1l", "--target", EVENT, "--samples",
                             "512", "--shard-size", "512", "--output", str(out), "--no-progress"])
    assert made.exit_code == 0, made.output
    base = ["brackets", "random-1l", DEMO, "--ground-truth", str(out), "--runs", "4", "--particles", "16"]
    ok = cli.invoke(main, [*base, "--target", EVENT, "--estimator", "output-tsmc"])
    assert ok.exit_code == 0, ok.output
    row = next(line for line in ok.output.splitlines() if "sample(2) contains hex" in line)
    assert "(ground truth)" in row and "/4" in row
    refusals = {
        "naive": "need an estimator with bidirectional bounds",
        "tsmc": "estimator 'tsmc' judges the next token after the input and does not support output events",
    }
    for estimator, message in refusals.items():
        bad = cli.invoke(main, [*base, "--target", EVENT, "--estimator", estimator])
        assert bad.exit_code != 0 and message in bad.output and "Traceback" not in bad.output
    cases = [([], "name it with --target"),
             (["--target", "sample(3) contains hex", "--estimator", "output-tsmc"], "the output ground truth counts")]
    for extra, message in cases:
        bad = cli.invoke(main, [*base, *extra])
        assert bad.exit_code != 0 and message in bad.output, bad.output
    (tmp_path / "other.json").write_text('{"format": "something else"}')
    other = cli.invoke(main, ["brackets", "random-1l", DEMO, "--ground-truth", str(tmp_path / "other.json"),
                              "--target", EVENT, "--estimator", "output-tsmc"])
    assert other.exit_code != 0 and "not a lowprob ground-truth file" in other.output
    argmax = cli.invoke(main, ["brackets", "lowprob-1l", "hex", "--target", EVENT])
    assert argmax.exit_code != 0 and "needs an output-event --ground-truth file" in argmax.output
