"""lowprob bench coverage: the coverage table on hand-computed rows, the trained-target rule, a tiny run end to end."""

from __future__ import annotations

import json
import statistics
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from lowprob.cli import main
from lowprob.core.budget import Budget
from lowprob.core.errors import LowprobError
from lowprob.core.estimate import ConfidenceInterval, Estimate
from lowprob.core.stats import clopper_pearson
from lowprob.coverage_study import Target, prepare, summarize, trained_target
from lowprob.ground_truth import load_shipped
from lowprob.plugins import Registry, load_registry
from lowprob.results import ResultRow, RowSpec, read_results

TRUTH = 1e-6


def _row(seed: int, value: float | None, ci: tuple[float, float] | None, estimator: str = "x",
         distribution: str = "d") -> ResultRow:
    spec = RowSpec(model="m", distribution=distribution, distribution_hash="h", target="hit", estimator=estimator,
                   label=estimator, budget=Budget(model_calls=100), seed=seed)
    if value is None:
        return ResultRow.of(spec, error="BudgetError: too small")
    estimate = Estimate(value=value, log10_value=Estimate.log10(value), std_error=None,
                        ci=ConfidenceInterval(low=ci[0], high=ci[1], level=0.95, method="x") if ci else None,
                        hits=1, samples=2, forward_passes=2, backward_passes=0, model_calls=100, seconds=0.5,
                        model_seconds=0.0, stop_reason="model_calls", unbiased=True,
                        provenance={"estimator": estimator, "seed": seed, "model": "m", "distribution_hash": "h",
                                    "target": "hit"})
    return ResultRow.of(spec, estimate=estimate)


def test_coverage_line_equals_hand_computed_values() -> None:
    """Six runs of p = 1e-6: two covered (one a zero with its bound), two wholly below, one above, one without an
    interval; plus an error row."""
    rows = [_row(0, 1e-6, (5e-7, 2e-6)), _row(1, 0.0, (0.0, 3e-6)), _row(2, 1e-7, (5e-8, 2e-7)),
            _row(3, 2e-7, (1e-7, 4e-7)), _row(4, 5e-6, (2e-6, 8e-6)), _row(5, 3e-6, None), _row(6, None, None)]
    target = Target("m", "d", "hit", TRUTH, "exact")
    line, pooled = summarize(rows, {r.key: target for r in rows})
    assert (line.target, pooled.target) == ("d", None) and replace(pooled, target="d") == line
    assert (line.runs, line.errors, line.with_interval, line.covered) == (7, 1, 5, 2)
    assert line.coverage == pytest.approx(2 / 5)
    assert (line.coverage_low, line.coverage_high) == pytest.approx(clopper_pearson(2, 5))
    assert (line.low, line.high) == (pytest.approx(2 / 5), pytest.approx(1 / 5))
    ratios = [1, 0, 0.1, 0.2, 5, 3]
    assert line.mean_ratio == pytest.approx(statistics.fmean(ratios))
    assert line.median_ratio == pytest.approx(0.6)
    assert line.zeros == pytest.approx(1 / 6) and line.seconds == pytest.approx(0.5)
    assert line.flag == "coverage 0.400 outside 90%–98%" and line.first_error == "BudgetError: too small"


def test_lines_per_target_then_pooled_and_flags() -> None:
    """19 of 20 covered is inside 90–98 %; 20 of 20 is above; an estimator with no interval says so."""
    a, b = Target("m", "a", "hit", TRUTH, "exact"), Target("m", "b", "hit", TRUTH, "exact")
    rows = ([_row(s, 1e-6, (5e-7, 2e-6) if s else (1e-7, 2e-7), distribution="a") for s in range(20)]
            + [_row(s, 1e-6, (5e-7, 2e-6), distribution="b") for s in range(20)]
            + [_row(0, 1e-6, None, estimator="y", distribution="a")])
    target_of = {r.key: (a if r.distribution == "a" else b) for r in rows}
    lines = {(c.estimator, c.target): c for c in summarize(rows, target_of)}
    assert list(lines) == [("x", "a"), ("x", "b"), ("x", None), ("y", "a"), ("y", None)]
    assert lines[("x", "a")].coverage == pytest.approx(0.95) and lines[("x", "a")].flag is None
    assert lines[("x", "b")].flag == "coverage 1.000 outside 90%–98%"
    assert lines[("x", None)].covered == 39 and lines[("x", None)].with_interval == 40
    assert lines[("y", "a")].flag == "no intervals"


def test_trained_target_is_the_rarest_token_with_enough_hits() -> None:
    target = trained_target("lowprob-1l", "camel")
    counts = load_shipped("lowprob-1l", "camel").counts
    token = int(target.target.removeprefix("argmax == #"))
    assert target.hits == counts[token] >= 100 and target.truth == pytest.approx(counts[token] / target.samples)
    assert not np.any((counts >= 100) & (counts < counts[token]))
    assert not np.any(counts[:token] == counts[token])  # ties go to the lowest id
    assert target.name == f"lowprob-1l/camel #{token}"
    with pytest.raises(LowprobError, match="no token with"):
        trained_target("lowprob-1l", "camel", min_hits=10**9)


@pytest.fixture(scope="module")
def registry() -> Registry:
    return load_registry(entry_points=False)


def test_only_estimators_with_error_bars_run(registry: Registry) -> None:
    study = prepare(registry, ["planted-threshold-e6"], [], 2, 64,
                    estimators=["naive", "activation-extrapolation"])
    assert study.estimators == ["naive"] and study.skipped == {"activation-extrapolation": "reports no error bars"}
    assert len(study.jobs) == 2 and study.budgets["naive"] == Budget(model_calls=64, backward_weight=0.0)
    with pytest.raises(LowprobError, match="no planted problem"):
        prepare(registry, ["planted-nothing"], [], 2, 64)


def test_tiny_study_runs_end_to_end_and_resumes(tmp_path: Path) -> None:
    args = ["bench", "coverage", "--quick", "--estimator", "naive", "--runs", "2", "--planted",
            "planted-threshold-e6", "--trained", "lowprob-1l/camel", "--output", str(tmp_path)]
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0, first.output
    rows = read_results(tmp_path / "results.jsonl")
    assert len(rows) == 4 and {(r.model, r.distribution) for r in rows} == {
        ("planted-threshold", "planted-threshold-e6"), ("lowprob-1l", "camel")}
    payload = json.loads((tmp_path / "coverage.json").read_text())
    assert [(c["estimator"], c["runs"]) for c in payload["lines"]] == [("naive", 2), ("naive", 2), ("naive", 4)]
    assert "## Coverage of the 95 % interval" in (tmp_path / "coverage.md").read_text()
    assert (tmp_path / "coverage-study.png").stat().st_size > 0
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0 and "0 new runs" in again.output
    bad = CliRunner().invoke(main, ["bench", "coverage", "--trained", "camel", "--output", str(tmp_path)])
    assert bad.exit_code == 1 and "MODEL/DISTRIBUTION" in bad.output
