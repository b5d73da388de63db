"""lowprob bench known-answer: the score arithmetic, the budgets and the temperature choice on hand-computed rows,
and tiny runs end to end."""

from __future__ import annotations

import json
import math
from fractions import Fraction
from pathlib import Path

import pytest
from click.testing import CliRunner

from lowprob.bench import (
    FLOP_FAIR,
    PAPER,
    SAME_RUN,
    Case,
    Selection,
    budget_for,
    choose_temperatures,
    collect,
    completeness,
    parse_temperatures,
    prepare,
    run,
    summarize,
)
from lowprob.cli import main
from lowprob.core.budget import Budget
from lowprob.core.errors import LowprobError
from lowprob.core.estimate import ConfidenceInterval, Estimate
from lowprob.core.exact import CountRule, ExactProbability, KnownAnswer, TokenClass
from lowprob.core.stats import clopper_pearson
from lowprob.plugins import Registry, load_registry
from lowprob.protocol import TuningScore
from lowprob.results import ResultRow, RowSpec, read_results

RULE = CountRule((TokenClass("S", frozenset({4})),), (1,), lambda c: c[0] >= 1, "one 'a'")


def _answer(exponent: int) -> KnownAnswer:
    return KnownAnswer("m", f"spec-e{exponent}", "hit", "threshold", 10.0**-exponent, "test",
                       ExactProbability(Fraction(1, 10**exponent)), RULE)


@pytest.fixture(scope="module")
def registry() -> Registry:
    return load_registry(entry_points=False)


def _row(estimator: str, spec: str, seed: int, value: float | None, std_error: float | None = None,
         ci: tuple[float, float] | None = None, seconds: float = 1.0, calls: float = 100,
         backward_weight: float = 0.0) -> ResultRow:
    row = RowSpec(model="m", distribution=spec, distribution_hash="h", target="hit", estimator=estimator,
                  label=estimator, budget=Budget(model_calls=100, backward_weight=backward_weight), seed=seed)
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
    cases = {r.key: Case(deep if r.distribution == deep.spec else shallow, PAPER) for r in rows}
    by = {(s.estimator, s.exponent): s for s in summarize(rows, cases)}
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
    assert x.budget == PAPER and x.family is None
    assert x.is_loss_fit is not None and math.isfinite(x.is_loss_fit)  # the zero gets a floor
    y = by[("x", -3)]
    assert y.is_loss == pytest.approx(((0.5 - math.log(0.5) - 1) + (2 - math.log(2) - 1)) / 2)
    assert y.coverage is None and y.zero_rate == 0


def test_per_family_lines_split_a_depth() -> None:
    deep = _answer(6)
    other = KnownAnswer("m2", "other-e6", "hit", "needle", 1e-6, "test", deep.exact, RULE)
    rows = [_row("x", deep.spec, 0, 1e-6), _row("x", other.spec, 0, 4e-6)]
    cases = {rows[0].key: Case(deep, PAPER), rows[1].key: Case(other, PAPER)}
    (pooled,) = summarize(rows, cases)
    assert pooled.rows == 2 and pooled.rel_rmse == pytest.approx(math.sqrt(9 / 2))
    split = summarize(rows, cases, by_family=True)
    assert [(s.family, s.rows, s.rel_rmse) for s in split] == [("needle", 1, pytest.approx(3.0)),
                                                                ("threshold", 1, 0.0)]


def test_budgets_are_separate_sections_with_their_own_naive_speed() -> None:
    """The same estimator under both budgets: two lines, the paper one first; speed is relative to naive under the
    same budget (naive at 100 calls/s on paper, 25 on flop-fair; x at 50 on both)."""
    deep = _answer(6)
    rows = [_row("x", deep.spec, 0, 1e-6, seconds=2.0), _row("x", deep.spec, 0, 4e-6, seconds=2.0, backward_weight=2),
            _row("naive", deep.spec, 0, 1e-6), _row("naive", deep.spec, 0, 1e-6, seconds=4.0, backward_weight=2)]
    cases = {r.key: Case(deep, PAPER if r.budget.backward_weight == 0 else FLOP_FAIR) for r in rows}
    lines = [s for s in summarize(rows, cases) if s.estimator == "x"]
    assert [(s.budget, s.rel_rmse) for s in lines] == [(PAPER, 0.0), (FLOP_FAIR, pytest.approx(3.0))]
    assert [s.calls_per_second_vs_naive for s in lines] == [pytest.approx(0.5), pytest.approx(2.0)]


def test_paper_and_flop_fair_budgets(registry: Registry) -> None:
    """Paper: each estimator's own paper budget (MHIS 98 336 calls), scaled; FLOP-fair: the same calls for every
    estimator with a backward pass at 2 forwards."""
    assert budget_for(registry, "naive", PAPER) == Budget(model_calls=65536, backward_weight=0.0)
    assert budget_for(registry, "mhis", PAPER) == Budget(model_calls=98336, backward_weight=0.0)
    assert budget_for(registry, "mhis", PAPER, 4096) == Budget(model_calls=6146, backward_weight=0.0)
    for name in ("naive", "itgis", "mhis"):
        assert budget_for(registry, name, FLOP_FAIR, 4096) == Budget(model_calls=4096, backward_weight=2.0)
    with pytest.raises(LowprobError, match="unknown budget"):
        budget_for(registry, "naive", "cheap")


def test_flop_fair_budget_holds_at_the_meter(registry: Registry) -> None:
    """ITGIS takes a backward pass per sample: on paper it gets all the forwards, FLOP-fair a third of them."""
    from lowprob.api import compile_problem, resolve_spec, run_problem

    problem = compile_problem(registry, resolve_spec("planted-threshold-e5", registry), model="planted-threshold",
                              target="hit")
    paper = run_problem(registry, problem, "itgis", {"batch_size": 64}, budget_for(registry, "itgis", PAPER, 768), 0)
    fair = run_problem(registry, problem, "itgis", {"batch_size": 64}, budget_for(registry, "itgis", FLOP_FAIR, 768),
                       0)
    assert paper.forward_passes == 768 and paper.backward_passes > 0
    assert fair.forward_passes + 2 * fair.backward_passes <= 768 and fair.forward_passes >= 768 // 3 - 64


def _tuning_row(job_spec: RowSpec, value: float | None) -> ResultRow:
    row = _row(job_spec.estimator, job_spec.distribution, job_spec.seed or 0, value)
    return ResultRow.of(job_spec, error="BudgetError: x") if value is None else ResultRow.of(
        job_spec, estimate=row.estimate)


def test_temperature_is_chosen_by_the_protocol_rule_on_tuning_rows(registry: Registry) -> None:
    """threshold: 0.5 has a zero (1 failure), 1 is 2× off on both (loss 0.5 + ln 2 - 1 each), 2 is exact → 2;
    needle: no rows (every run a failure) → the tie goes to 1; two-modes: 0.5 and 2 exact, 1 an error → the tie
    between 0.5 and 2 (equally far from 1) goes to the lower."""
    selection = Selection(replicates=1, modes=(PAPER,), temperatures=(0.5, 1.0, 2.0), tuning_replicates=1,
                          estimators=("itgis", "naive"), exponents=(-5,))
    bench = prepare(registry, selection)
    assert bench.tuned == ["itgis"] and len(bench.tuning_jobs) == 3 * 2 * 3  # families × tuning problems × grid
    assert {bench.tuning_cases[j.key].answer.role for j in bench.tuning_jobs} == {"tuning"}
    rows = {}
    for job in bench.tuning_jobs:
        answer, temp = bench.tuning_cases[job.key].answer, job.spec.options["temperature"]
        if answer.family == "threshold":
            value = 2 * answer.exact_p if temp == 1.0 else (0.0 if temp == 0.5 and answer.depth < 1e-8
                                                               else answer.exact_p)
        elif answer.family == "two-modes":
            value = None if temp == 1.0 else answer.exact_p
        else:
            continue
        rows[job.key] = _tuning_row(job.spec, value)
    choices = choose_temperatures(bench, rows)
    half = 0.5 + math.log(2) - 1
    threshold = choices[("itgis", "threshold", PAPER)]
    assert threshold.temperature == 2.0 and threshold.runs == 2
    assert threshold.scores == {0.5: TuningScore(1, 0.0), 1.0: TuningScore(0, pytest.approx(half)),
                                2.0: TuningScore(0, 0.0)}
    assert choices[("itgis", "needle", PAPER)].temperature == 1.0
    assert choices[("itgis", "two-modes", PAPER)].temperature == 0.5
    tests = [job for job, _ in bench.test_jobs(choices).values()]
    by = {(j.spec.estimator, j.spec.distribution): j.spec for j in tests}
    itgis = by[("itgis", "planted-threshold-e5")]
    assert itgis.options == {"temperature": 2.0} and itgis.protocol is not None
    assert (itgis.protocol.phase, itgis.protocol.tuning_grid) == ("test", (0.5, 1.0, 2.0))
    assert by[("itgis", "planted-needle-e5")].options == {"temperature": 1.0}
    naive = by[("naive", "planted-needle-e5")]
    assert naive.options == {} and naive.protocol is None  # untuned rows keep the keys they had before tuning
    assert {j.spec.distribution for j in tests} == {"planted-threshold-e5", "planted-two-modes-e5",
                                                    "planted-needle-e5"}


def test_temperature_grid_parsing() -> None:
    assert parse_temperatures("0.5,1,2") == (0.5, 1.0, 2.0) and parse_temperatures(None) == ()
    for bad in ("0.5,x", "1,-2", "inf"):
        with pytest.raises(LowprobError, match="--temperatures"):
            parse_temperatures(bad)


def test_rows_of_other_runs_are_ignored() -> None:
    row = _row("x", "elsewhere", 0, 1e-3)
    assert summarize([row], {}) == []


def test_tiny_bench_runs_end_to_end_and_resumes(tmp_path: Path) -> None:
    args = ["bench", "known-answer", "--quick", "--estimator", "naive", "--replicates", "1", "--budget-calls",
            "256", "--depth", "5", "--budget", "paper", "--output", str(tmp_path)]
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0, first.output
    assert "naive" in first.output and "1e-5" in first.output
    rows = read_results(tmp_path / "results.jsonl")
    assert len(rows) == 3 and {r.distribution for r in rows} == {"planted-threshold-e5", "planted-two-modes-e5",
                                                                   "planted-needle-e5"}
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [(s["estimator"], s["budget"], s["family"]) for s in summary["summaries"]] == [
        ("naive", "paper", None), ("naive", "paper", "needle"), ("naive", "paper", "threshold"),
        ("naive", "paper", "two-modes")]
    assert summary["temperatures"] == []
    assert "### Scores per estimator and depth" in (tmp_path / "summary.md").read_text()
    assert (tmp_path / "estimates-paper-needle.png").stat().st_size > 0
    assert (tmp_path / "coverage-paper.svg").is_file()
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0 and "0 new estimates" in again.output
    assert len(read_results(tmp_path / "results.jsonl")) == 3


def test_tiny_tuned_bench_under_both_budgets_resumes(tmp_path: Path) -> None:
    """ITGIS tunes two temperatures on the threshold family's two tuning problems under both budgets, then runs
    the test problem at its choices; a rerun computes nothing."""
    args = ["bench", "known-answer", "--quick", "--estimator", "itgis", "--replicates", "1", "--budget-calls", "128",
            "--depth", "5", "--family", "threshold", "--temperatures", "0.5,2", "--output", str(tmp_path)]
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0, first.output
    assert "Paper budget:" in first.output and "FLOP-fair budget:" in first.output
    rows = read_results(tmp_path / "results.jsonl")
    tune = [r for r in rows if r.phase == "tune"]
    test = [r for r in rows if r.phase == "test"]
    assert len(tune) == 2 * 2 * 2 and len(test) == 1 * 2
    assert {r.distribution for r in tune} == {"planted-threshold-e6", "planted-threshold-e10"}
    assert {r.distribution for r in tune}.isdisjoint(r.distribution for r in test)
    assert {r.budget.backward_weight for r in test} == {0.0, 2.0}
    summary = json.loads((tmp_path / "summary.json").read_text())
    chosen = {(c["budget"], c["family"]): c["temperature"] for c in summary["temperatures"]}
    assert len(chosen) == 2 and set(chosen.values()) <= {0.5, 2.0}
    for row in test:
        family = row.distribution.removeprefix("planted-").removesuffix("-e5")
        mode = "paper" if row.budget.backward_weight == 0 else "flop-fair"
        assert row.options == {"temperature": chosen[(mode, family)]}
    assert "## Temperatures chosen on the tuning problems" in (tmp_path / "summary.md").read_text()
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0 and "0 new estimates" in again.output


def test_a_flop_fair_row_without_backward_passes_is_its_paper_run(tmp_path: Path, registry: Registry) -> None:
    """naive makes no backward pass: its FLOP-fair row is the paper run (marked with the twin's key), not a second
    one; ITGIS (gradients) and gams (declares none but its twist score's pilot takes backward passes) run twice."""
    selection = Selection(replicates=1, calls=1024, temperatures=(1.0,), estimators=("naive", "itgis", "gams"),
                          exponents=(-5,), families=("threshold",))
    outcome = run(prepare(registry, selection), registry, tmp_path / "results.jsonl")
    assert outcome.new_rows == 6
    rows = {(r.estimator, r.budget.backward_weight): r for r in read_results(tmp_path / "results.jsonl")}
    paper, fair = rows[("naive", 0.0)], rows[("naive", 2.0)]
    assert paper.estimate is not None and fair.estimate is not None
    assert fair.estimate.diagnostics[SAME_RUN] == paper.key and fair.key != paper.key
    assert fair.estimate.model_dump(exclude={"diagnostics"}) == paper.estimate.model_dump(exclude={"diagnostics"})
    for name in ("itgis", "gams"):
        row, twin = rows[(name, 2.0)], rows[(name, 0.0)]
        assert row.estimate is not None and twin.estimate is not None, name
        assert SAME_RUN not in row.estimate.diagnostics and twin.estimate.backward_passes > 0, name
    assert run(prepare(registry, selection), registry, tmp_path / "results.jsonl").new_rows == 0


def test_report_writes_the_tables_of_the_rows_there_and_runs_nothing(tmp_path: Path, registry: Registry) -> None:
    """``--report`` on a stopped run: the summary of the rows present, saying how many of the planned are."""
    selection = Selection(replicates=2, calls=256, temperatures=(1.0,), estimators=("naive",), exponents=(-5,),
                          modes=(PAPER,))
    bench = prepare(registry, selection)
    done = run(bench, registry, tmp_path / "results.jsonl")
    lines = (tmp_path / "results.jsonl").read_text().splitlines(keepends=True)
    (tmp_path / "results.jsonl").write_text("".join(lines[:4]))
    partial = collect(bench, tmp_path / "results.jsonl")
    assert partial.new_rows == 0 and partial.cases == done.cases and len(partial.rows) == 4
    assert completeness(bench, partial) == "4 of 6 test rows and 0 of 0 tuning rows are in the results"
    assert [s.rows for s in summarize(partial.rows.values(), partial.cases)] == [4]
    args = ["bench", "known-answer", "--report", "--estimator", "naive", "--replicates", "2", "--budget-calls", "256",
            "--depth", "5", "--budget", "paper", "--temperatures", "1"]
    out = CliRunner().invoke(main, [*args, "--output", str(tmp_path)])
    assert out.exit_code == 0, out.output
    assert "0 new estimates (4 of 6 test rows" in out.output and len(read_results(tmp_path / "results.jsonl")) == 4
    assert "4 of 6 test rows" in (tmp_path / "summary.md").read_text()
    missing = CliRunner().invoke(main, [*args, "--output", str(tmp_path / "none")])
    assert missing.exit_code == 1 and "--report: no results at" in missing.output and "Traceback" not in missing.output


def test_only_estimators_whose_temperature_acts_are_tuned(registry: Registry) -> None:
    """ams and subset-simulation have a temperature only with gradient proposals (not their default): tuning them
    would run the grid for identical estimates."""
    bench = prepare(registry, Selection(replicates=1, calls=1024, temperatures=(0.5, 2.0), exponents=(-5,),
                                        estimators=("naive", "itgis", "ams", "subset-simulation", "tsmc")))
    assert bench.tuned == ["itgis", "tsmc"]
    assert {job.spec.estimator for job in bench.tuning_jobs} == {"itgis", "tsmc"}


def test_without_backward_passes_both_budgets_give_the_same_run(registry: Registry) -> None:
    """Why a FLOP-fair row may reuse the paper run: every built-in estimator that declares no gradients and makes
    no backward pass returns the very same estimate under either price of a backward pass."""
    from lowprob.api import compile_problem, resolve_spec, run_problem

    problem = compile_problem(registry, resolve_spec("planted-threshold-e3", registry), model="planted-threshold",
                              target="hit")
    checked = []
    for entry in registry.entries("estimators"):
        if entry.obj.capabilities.needs_gradients or entry.name == "optimal-constant":
            continue
        outcomes = []
        for weight in (0.0, 2.0):
            try:
                estimate = run_problem(registry, problem, entry.name, {}, Budget(model_calls=2048,
                                                                                 backward_weight=weight), 3)
            except LowprobError as exc:
                outcomes.append(str(exc))
                continue
            outcomes.append(estimate.model_dump(exclude={"seconds", "model_seconds", "provenance", "trace"}))
        if isinstance(outcomes[0], dict) and outcomes[0]["backward_passes"] == 0:
            checked.append(entry.name)
            assert outcomes[1] == outcomes[0], entry.name
    assert {"naive", "ams", "subset-simulation", "qld", "gld"} <= set(checked)


def test_list_shows_every_problem_with_its_exact_value() -> None:
    out = CliRunner().invoke(main, ["bench", "known-answer", "--list"])
    assert out.exit_code == 0, out.output
    assert "planted-threshold-e12" in out.output and "9.996447517472e-13" in out.output
    assert "planted-needle-e10" in out.output and "tuning" in out.output


def test_an_estimator_bug_becomes_an_error_row(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               registry: Registry) -> None:
    """A long bench must not stop at one estimator's bug: it is quoted in an error row (and the next job runs)."""
    import lowprob.bench as bench
    from lowprob.engine import Engine, Job

    def broken(*args: object, **kwargs: object) -> None:
        raise OverflowError("math range error")

    monkeypatch.setattr(bench, "run_problem", broken)
    jobs = [Job(RowSpec(model="m", distribution="d", distribution_hash="h", target="hit", estimator="x", label="x",
                        budget=Budget(model_calls=100), seed=seed)) for seed in (0, 1)]
    rows = list(bench.run_jobs({("m", "d", "hit"): None}, registry, Engine(tmp_path / "r.jsonl"),  # type: ignore[dict-item]
                               jobs))
    assert [r.error for r in rows] == ["internal error (a bug in the estimator): OverflowError: math range error"] * 2
