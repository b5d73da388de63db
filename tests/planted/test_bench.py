"""lowprob bench known-answer: the score arithmetic on hand-computed rows, and a tiny run end to end."""

from __future__ import annotations

import json
import math
from fractions import Fraction
from pathlib import Path

import pytest
from click.testing import CliRunner

from lowprob.bench import summarize
from lowprob.cli import main
from lowprob.core.budget import Budget
from lowprob.core.estimate import ConfidenceInterval, Estimate
from lowprob.core.exact import CountRule, ExactProbability, KnownAnswer, TokenClass
from lowprob.core.stats import clopper_pearson
from lowprob.results import ResultRow, RowSpec, read_results

RULE = CountRule((TokenClass("S", frozenset({4})),), (1,), lambda c: c[0] >= 1, "one 'a'")


def _answer(exponent: int) -> KnownAnswer:
    return KnownAnswer("m", f"spec-e{exponent}", "hit", "threshold", 10.0**-exponent, "test",
                       ExactProbability(Fraction(1, 10**exponent)), RULE)


def _row(estimator: str, spec: str, seed: int, value: float | None, std_error: float | None = None,
         ci: tuple[float, float] | None = None, seconds: float = 1.0, calls: float = 100) -> ResultRow:
    row = RowSpec(model="m", distribution=spec, distribution_hash="h", target="hit", estimator=estimator,
                  label=estimator, budget=Budget(model_calls=100), seed=seed)
    if value is None:
        return ResultRow.of(row, error="BudgetError: too small")
    estimate = Estimate(value=value, log10_value=Estimate.log10(value), std_error=std_error,
                        ci=ConfidenceInterval(low=ci[0], high=ci[1], level=0.95, method="x") if ci else None,
                        hits=1, samples=2, forward_passes=2, backward_passes=0, model_calls=calls, seconds=seconds,
                        model_seconds=0.0, stop_reason="model_calls", unbiased=True,
                        provenance={"estimator": estimator, "seed": seed, "model": "m", "distribution_hash": "h",
                                    "target": "hit"})
    return ResultRow.of(row, estimate=estimate)


def test_scores_equal_hand_computed_values() -> None:
    """Three estimates of p = 1e-6 (2p covered, p/2 missed, 0 covered) plus an error row; naive at half the speed."""
    deep, shallow = _answer(6), _answer(3)
    rows = [_row("x", deep.spec, 0, 2e-6, 1e-6, (1e-6, 3e-6)), _row("x", deep.spec, 1, 5e-7, 2e-7, (1e-7, 9e-7)),
            _row("x", deep.spec, 2, 0.0, None, (0.0, 3e-6), seconds=2.0), _row("x", deep.spec, 3, None),
            _row("x", shallow.spec, 0, 2e-3), _row("x", shallow.spec, 1, 5e-4),
            _row("naive", deep.spec, 0, 1e-6, seconds=1.0, calls=50)]
    answers = {r.key: (deep if r.distribution == deep.spec else shallow) for r in rows}
    by = {(s.estimator, s.exponent): s for s in summarize(rows, answers)}
    x = by[("x", -6)]
    assert (x.rows, x.errors, x.with_interval) == (4, 1, 3)
    assert x.is_loss == math.inf
    assert x.log10_error == pytest.approx(math.log10(2))
    assert x.rel_rmse == pytest.approx(math.sqrt((1 + 0.25 + 1) / 3))
    assert x.coverage == pytest.approx(2 / 3)
    assert (x.coverage_low, x.coverage_high) == pytest.approx(clopper_pearson(2, 3))
    assert x.zero_rate == pytest.approx(1 / 3)
    assert x.reported_rel_se == pytest.approx(math.sqrt((1 + 0.04) / 2))
    assert x.seconds == pytest.approx(4 / 3) and x.model_calls == pytest.approx(100)
    assert x.calls_per_second_vs_naive == pytest.approx((300 / 4) / 50)
    assert x.first_error == "BudgetError: too small"
    assert x.family is None and x.is_loss_fit is not None and math.isfinite(x.is_loss_fit)  # the zero gets a floor
    y = by[("x", -3)]
    assert y.is_loss == pytest.approx(((0.5 - math.log(0.5) - 1) + (2 - math.log(2) - 1)) / 2)
    assert y.coverage is None and y.zero_rate == 0


def test_per_family_lines_split_a_depth() -> None:
    deep = _answer(6)
    other = KnownAnswer("m2", "other-e6", "hit", "needle", 1e-6, "test", deep.exact, RULE)
    rows = [_row("x", deep.spec, 0, 1e-6), _row("x", other.spec, 0, 4e-6)]
    answers = {rows[0].key: deep, rows[1].key: other}
    (pooled,) = summarize(rows, answers)
    assert pooled.rows == 2 and pooled.rel_rmse == pytest.approx(math.sqrt(9 / 2))
    split = summarize(rows, answers, by_family=True)
    assert [(s.family, s.rows, s.rel_rmse) for s in split] == [("needle", 1, pytest.approx(3.0)),
                                                                ("threshold", 1, 0.0)]


def test_rows_of_other_runs_are_ignored() -> None:
    row = _row("x", "elsewhere", 0, 1e-3)
    assert summarize([row], {}) == []


def test_tiny_bench_runs_end_to_end_and_resumes(tmp_path: Path) -> None:
    args = ["bench", "known-answer", "--quick", "--estimator", "naive", "--replicates", "1", "--budget-calls",
            "256", "--depth", "5", "--output", str(tmp_path)]
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0, first.output
    assert "naive" in first.output and "1e-5" in first.output
    rows = read_results(tmp_path / "results.jsonl")
    assert len(rows) == 3 and {r.distribution for r in rows} == {"planted-threshold-e5", "planted-two-modes-e5",
                                                                   "planted-needle-e5"}
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [(s["estimator"], s["family"]) for s in summary["summaries"]] == [
        ("naive", None), ("naive", "needle"), ("naive", "threshold"), ("naive", "two-modes")]
    assert "## Scores per estimator and depth" in (tmp_path / "summary.md").read_text()
    assert (tmp_path / "estimates-needle.png").stat().st_size > 0 and (tmp_path / "coverage.svg").is_file()
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0 and "0 new estimates" in again.output
    assert len(read_results(tmp_path / "results.jsonl")) == 3


def test_list_shows_every_problem_with_its_exact_value() -> None:
    out = CliRunner().invoke(main, ["bench", "known-answer", "--list"])
    assert out.exit_code == 0, out.output
    assert "planted-threshold-e12" in out.output and "9.996447517472e-13" in out.output
    assert "planted-needle-e10" in out.output and "tuning" in out.output
