"""`lowprob compare`: estimators side by side on one problem, scored against the exact value of a planted one."""

from pathlib import Path

import pytest
from click.testing import CliRunner

from lowprob.cli import main
from lowprob.compare import known_answer
from lowprob.plugins import load_registry
from lowprob.results import read_results

PLANTED = ["planted-threshold-e3", "--model", "planted-threshold", "--target", "hit"]


def test_a_planted_problem_prints_its_exact_value_and_scores_each_estimate(tmp_path: Path) -> None:
    out = tmp_path / "cmp.jsonl"
    result = CliRunner().invoke(main, ["compare", *PLANTED, "--estimator", "naive", "--estimator", "itgis",
                                       "--budget-calls", "4096", "--seed", "3", "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert "exact        p = 1.001979e-03" in result.output
    lines = result.output.splitlines()
    header = next(line for line in lines if line.startswith("estimator"))
    assert "log10(p̂/p)" in header and "covers p" in header
    rows = read_results(out)
    assert [r.estimator for r in rows] == ["naive", "itgis"]
    assert all(r.seed == 3 and r.budget.model_calls == 4096 and r.estimate is not None for r in rows)
    naive = rows[0].estimate
    assert naive is not None and naive.samples == 4096
    assert f"{naive.hits}/4096" in next(line for line in lines if line.startswith("naive "))


def test_a_trained_model_problem_has_no_exact_value_column(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["compare", "caps", "--target", 'argmax == "CESS"', "--estimator", "naive",
                                       "--budget-calls", "512"])
    assert result.exit_code == 0, result.output
    assert "exact" not in result.output and "covers p" not in result.output


@pytest.mark.parametrize(("args", "message"), [
    (["--estimator", "naive", "--estimator", "naive"], "given twice"),
    (["--estimator", "no-such-estimator"], "no-such-estimator"),
    (["--estimator", "naive", "--paper-budget", "--budget-calls", "10"], "--paper-budget replaces"),
])
def test_bad_estimator_lists_are_refused_before_any_model_loads(args: list[str], message: str) -> None:
    result = CliRunner().invoke(main, ["compare", *PLANTED, *args])
    assert result.exit_code == 1
    assert message in result.output and "Traceback" not in result.output


def test_known_answers_are_found_by_model_spec_and_target() -> None:
    registry = load_registry()
    answer = known_answer(registry, "planted-needle", "planted-needle-e9", "hit")
    assert answer is not None and answer.family == "needle" and answer.exact_p == pytest.approx(1.0004e-9, rel=1e-4)
    assert known_answer(registry, "planted-needle", "planted-needle-e9", "other") is None
    assert known_answer(registry, "lowprob-1l", "planted-needle-e9", "hit") is None


def test_the_main_job_in_the_makefile_runs_and_prints_the_exact_value(tmp_path: Path) -> None:
    # `make run` (the README's main job) at a small budget instead of the paper's, so it stays fast.
    makefile = (Path(__file__).resolve().parents[1] / "Makefile").read_text()
    recipe = makefile.split("\nrun: $(STAMP)\n", 1)[1].split("\n\n", 1)[0].replace("\\\n", " ")
    args = recipe.split("lowprob compare", 1)[1].split()
    args = [a.strip("'") for a in args]
    args[args.index("--paper-budget")] = "--budget-calls=2048"
    args[args.index("--output") + 1] = str(tmp_path / "main.jsonl")
    result = CliRunner().invoke(main, ["compare", *args])
    assert result.exit_code == 0, result.output
    assert "exact        p = " in result.output
    assert len(read_results(tmp_path / "main.jsonl")) == args.count("--estimator") >= 2
