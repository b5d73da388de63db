"""Reference values: pooling rounds, the acceptance rule, seeds, provenance, resuming and merging — on hand-made
rounds with known numbers and on a planted model with an exact answer."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from lowprob.api import compile_source, resolve_spec
from lowprob.bench import known_answers
from lowprob.cli import main
from lowprob.core.budget import Budget
from lowprob.core.errors import LowprobError
from lowprob.engine import Engine
from lowprob.ground_truth import GroundTruth
from lowprob.plugins import load_registry
from lowprob.references import (
    EXPERIMENT,
    SEED_BASE,
    SPREAD_MIN_ROUNDS,
    Pooled,
    ReferenceMethod,
    ReferenceProblem,
    ReferenceRules,
    ReferenceRunner,
    judge,
    load_references,
    merge_files,
    pool,
    read_rounds,
    reference_seed,
)
from lowprob.results import ResultRow, ResultsFile, RowSpec
from lowprob.target_screening import brute_force_tokens, cross_check
from tests.made_estimates import made_estimate

RULES = ReferenceRules()


def _round(value: float, se: float | None, calls: float = 100, seed: int = SEED_BASE, label: str = "a",
           estimator: str = "naive") -> ResultRow:
    estimate = made_estimate(value, model_calls=calls).model_copy(update={"std_error": se})
    spec = RowSpec(experiment=EXPERIMENT, model="m", distribution="d", distribution_hash="h", target="t",
                   estimator=estimator, label=label, budget=Budget(model_calls=int(calls)), seed=seed)
    return ResultRow.of(spec, estimate=estimate)


def _pooled(label: str, estimator: str, value: float, se: float | None, calls: float = RULES.max_calls) -> Pooled:
    """A pooled run; by default it has spent the call cap, so it is settled whatever its error."""
    return Pooled(label, estimator, {}, 1, calls, 1.0, value, se, largest_round=1 << 16)


def test_pool_is_the_calls_weighted_mean_with_combined_errors() -> None:
    pooled = pool([_round(1e-5, 4e-6, calls=100), _round(4e-5, 8e-6, calls=300)])
    assert pooled.value == pytest.approx(0.25 * 1e-5 + 0.75 * 4e-5)
    assert pooled.std_error == pytest.approx(math.hypot(0.25 * 4e-6, 0.75 * 8e-6))
    assert pooled.calls == 400 and pooled.rounds == 2


def test_pool_takes_the_spread_between_rounds_when_it_exceeds_their_own_errors() -> None:
    values = [1e-6, 9e-6, 2e-6, 8e-6][:SPREAD_MIN_ROUNDS]
    pooled = pool([_round(v, 1e-9) for v in values])  # over-confident rounds
    n, mean = len(values), sum(values) / len(values)
    spread = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n)
    assert pooled.std_error == pytest.approx(spread)
    assert pool([_round(v, 1e-9) for v in values[:3]]).std_error == pytest.approx(math.sqrt(3) * 1e-9 / 3)


def test_agreeing_runs_are_accepted_with_the_inverse_variance_mean() -> None:
    a, b = _pooled("tsmc", "tsmc", 1.0e-6, 1e-7), _pooled("itgis", "itgis", 1.2e-6, 2e-7)
    ref = judge("m", "d", "h", "t", [a, b], RULES)
    assert ref.status == "accepted" and ref.accepted
    w_a, w_b = 1 / 1e-7**2, 1 / 2e-7**2
    assert ref.value == pytest.approx((1.0e-6 * w_a + 1.2e-6 * w_b) / (w_a + w_b))
    assert ref.std_error == pytest.approx((w_a + w_b) ** -0.5)
    assert ref.discrepancy == pytest.approx(0.2e-6 / math.hypot(1e-7, 2e-7))
    assert ref.ci is not None and ref.ci[0] < ref.value < ref.ci[1]
    assert math.log(ref.ci[1] / ref.value) == pytest.approx(1.959964 * ref.std_error / ref.value, rel=1e-5)


def test_disagreeing_runs_are_stored_not_averaged() -> None:
    a, b = _pooled("tsmc", "tsmc", 1.0e-6, 1e-7), _pooled("itgis", "itgis", 2.0e-6, 2e-7)
    ref = judge("m", "d", "h", "t", [a, b], RULES)  # 1e-6 apart, 4.5 combined s.e.
    assert ref.status == "disagree" and not ref.accepted
    assert ref.value is None and ref.ci is None and ref.discrepancy == pytest.approx(1e-6 / math.hypot(1e-7, 2e-7))
    assert judge("m", "d", "h", "t", [a, b], RULES.model_copy(update={"sigmas": 5.0})).accepted


def test_other_verdicts() -> None:
    good = _pooled("tsmc", "tsmc", 1e-6, 1e-7)
    assert judge("m", "d", "h", "t", [good, _pooled("itgis", "itgis", 0.0, 0.0)], RULES).status == "no-estimate"
    assert judge("m", "d", "h", "t", [good, _pooled("t2", "tsmc", 1e-6, 1e-7)], RULES).status == "single"
    loose = [_pooled("tsmc", "tsmc", 1e-6, 6e-7), _pooled("itgis", "itgis", 1e-6, 6e-7)]
    assert judge("m", "d", "h", "t", loose, RULES).status == "imprecise"  # combined rel. error 0.42 > 0.3


def test_no_verdict_while_a_run_has_met_neither_its_error_target_nor_its_cap() -> None:
    settled = _pooled("tsmc", "tsmc", 1.0e-6, 0.9e-7)  # 9 % relative error: at its target, after few calls
    unfinished = _pooled("itgis", "itgis", 1.1e-6, 2e-7, calls=1 << 18)  # 18 %, 2^18 of 2^21 calls
    assert settled.settled(RULES) and not unfinished.settled(RULES)
    assert judge("m", "d", "h", "t", [settled, unfinished], RULES).status == "running"
    capped = _pooled("itgis", "itgis", 1.1e-6, 2e-7, calls=RULES.max_calls - (1 << 15))  # one more round passes it
    assert judge("m", "d", "h", "t", [settled, capped], RULES).status == "accepted"
    failed = Pooled("itgis", "itgis", {}, 1, 100.0, 1.0, 0.0, None, ("boom",), 100.0)
    assert judge("m", "d", "h", "t", [settled, failed], RULES).status == "no-estimate"


def test_seeds_are_deterministic_distinct_and_disjoint_from_test_seeds() -> None:
    seeds = {reference_seed("m", "d", "t", method, 1 << 16, i) for method in ("tsmc", "itgis") for i in range(50)}
    assert len(seeds) == 100
    assert all(SEED_BASE <= s < 2 * SEED_BASE for s in seeds)
    assert reference_seed("m", "d", "t", "tsmc", 1 << 16, 3) == reference_seed("m", "d", "t", "tsmc", 1 << 16, 3)


@pytest.fixture(scope="module")
def planted() -> tuple[object, ReferenceProblem, float]:
    registry = load_registry()
    answer = next(a for a in known_answers(registry, ("calibration",)) if a.spec == "planted-threshold-e3")
    return registry, ReferenceProblem.compile(registry, answer.model, answer.spec, answer.target), answer.exact_p


PLANTED_RULES = ReferenceRules(round_calls=2048, max_calls=1 << 15, target_rel_error=0.25)
METHODS = [ReferenceMethod(estimator="naive"), ReferenceMethod(estimator="itgis")]


def test_planted_reference_is_accepted_and_matches_the_exact_value(planted, tmp_path: Path) -> None:
    registry, problem, exact = planted
    ref = ReferenceRunner(registry, Engine(tmp_path / "r.jsonl"), METHODS, PLANTED_RULES).run(problem)
    assert ref.status == "accepted", ref
    assert abs(ref.value - exact) <= 4 * ref.std_error  # tolerance from the reference's own standard error
    for run in ref.runs:
        assert run.rel_error <= 0.25 or run.calls + 2048 > 1 << 15
    rows = read_rounds(tmp_path / "r.jsonl")
    assert {r.label for r in rows} == {"naive", "itgis"}
    for row in rows:  # provenance: estimator, options, seed and version travel with every round
        assert row.estimate is not None and row.estimate.provenance.lowprob_version
        assert row.estimate.provenance.seed == row.seed and row.seed >= SEED_BASE
        assert row.estimate.provenance.estimator == row.estimator and row.experiment == EXPERIMENT


def test_a_stopped_run_resumes_to_the_rows_of_an_uninterrupted_one(planted, tmp_path: Path) -> None:
    registry, problem, _ = planted
    whole = tmp_path / "whole.jsonl"
    ReferenceRunner(registry, Engine(whole), METHODS[:1], PLANTED_RULES).run(problem)
    pieces = tmp_path / "pieces.jsonl"
    short = PLANTED_RULES.model_copy(update={"max_calls": 2 * 2048})
    ReferenceRunner(registry, Engine(pieces), METHODS[:1], short).run(problem)
    assert len(ResultsFile(pieces).rows()) == 2
    with pieces.open("ab") as fh:  # a run killed in the middle of writing a round
        fh.write(b'{"format_version": 1, "key": "abc", "mod')
    ReferenceRunner(registry, Engine(pieces), METHODS[:1], PLANTED_RULES).run(problem)
    assert len(_outcomes(whole)) >= 3 and _outcomes(pieces) == _outcomes(whole)
    before = pieces.read_bytes()
    ReferenceRunner(registry, Engine(pieces), METHODS[:1], PLANTED_RULES).run(problem)  # finished: nothing new
    assert pieces.read_bytes() == before


def _outcomes(path: Path) -> list[tuple[str, float, float | None, float]]:
    return [(r.key, r.estimate.value, r.estimate.std_error, r.estimate.model_calls)
            for r in ResultsFile(path).rows() if r.estimate is not None]


def test_files_of_disjoint_rounds_merge(planted, tmp_path: Path) -> None:
    registry, problem, _ = planted
    rules = PLANTED_RULES.model_copy(update={"max_calls": 2 * 2048})
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    ReferenceRunner(registry, Engine(a), METHODS[:1], rules).run(problem)
    ReferenceRunner(registry, Engine(b), METHODS[:1], rules, first_round=2).run(problem)
    assert merge_files([a, b, a], tmp_path / "m.jsonl") == 4  # a repeated file adds nothing
    merged = load_references([tmp_path / "m.jsonl"])
    assert merged == load_references([a, b]) and merged[0].runs[0].rounds == 4


def test_biased_estimators_are_refused(planted, tmp_path: Path) -> None:
    registry, _, _ = planted
    with pytest.raises(LowprobError, match="not unbiased"):
        ReferenceRunner(registry, Engine(tmp_path / "r.jsonl"), [ReferenceMethod(estimator="qld")])


def test_reading_refuses_foreign_rows_with_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    good = _round(1e-5, 1e-6)
    foreign = _round(1e-5, 1e-6, seed=7)
    path.write_text("".join(json.dumps(r.model_dump(mode="json")) + "\n" for r in (good, foreign)))
    with pytest.raises(LowprobError, match=rf"{path}:2: seed 7 is outside the reference range"):
        read_rounds(path)
    path.write_text(json.dumps(good.model_dump(mode="json")) + "\nnot json\n")
    with pytest.raises(LowprobError, match=rf"{path}:2: not a JSON line"):
        read_rounds(path)


def test_cross_check_reports_agreement_and_coverage_against_brute_force(planted, tmp_path: Path) -> None:
    registry, _, exact = planted
    source = compile_source(registry, resolve_spec("planted-threshold-e3", registry), model="planted-threshold")
    runner = ReferenceRunner(registry, Engine(tmp_path / "r.jsonl"), METHODS, PLANTED_RULES)

    def truth(p: float) -> GroundTruth:  # a brute force of 2^20 inputs that saw HIT (id 2) at rate p
        counts = np.zeros(source.model.d_vocab, dtype=np.int64)
        counts[2] = round(p * (1 << 20))
        counts[3] = (1 << 20) - counts[2]
        return GroundTruth("planted-threshold", "planted-threshold-e3", source.spec.distribution(None).content_hash,
                           source.model.d_vocab, 1 << 20, (0,), counts)

    right = cross_check(runner, source, truth(exact), [2])
    assert right.accepted == 1 and right.agreement_rate == 1.0 and right.coverage == 1.0
    wrong = cross_check(runner, source, truth(10 * exact), [2])  # the same rounds, a ground truth 10x off
    assert wrong.accepted == 1 and wrong.agreement_rate == 0.0 and wrong.coverage == 0.0
    assert sorted(brute_force_tokens(truth(exact), 5, 0)) == [2, 3]  # both have at least 12 hits


def test_cross_check_tokens_extend_as_their_number_grows() -> None:
    counts = np.zeros(64, dtype=np.int64)
    counts[:40] = 100  # 40 tokens with enough hits, the rest of the 2^20 inputs on token 63
    counts[63] = (1 << 20) - 4000
    gt = GroundTruth("m", "d", "h", 64, 1 << 20, (0,), counts)
    two, eight = brute_force_tokens(gt, 2, 0), brute_force_tokens(gt, 8, 0)
    assert len(set(eight)) == 8 and eight[:2] == two
    assert brute_force_tokens(gt, 8, 1) != eight  # the seed still chooses


def test_cli_runs_shows_and_refuses(tmp_path: Path) -> None:
    out = tmp_path / "r.jsonl"
    args = ["reference", "run", "planted-threshold", "planted-threshold-e3", "--target", "hit", "--method", "naive",
            "--method", "itgis", "--round-calls", "2048", "--max-calls", "2^15", "--target-rel-error", "0.25",
            "--output", str(out)]
    ran = CliRunner().invoke(main, args)
    assert ran.exit_code == 0, ran.output
    assert "accepted" in ran.output and "naive" in ran.output
    unfinished = CliRunner().invoke(main, ["reference", "show", str(out)])  # under the default 10 %, 2^21 rules
    assert unfinished.exit_code == 0 and "1 running" in unfinished.output and "0 accepted" in unfinished.output
    shown = CliRunner().invoke(main, ["reference", "show", str(out), "--max-calls", "2^15", "--target-rel-error",
                                      "0.25", "--json", str(tmp_path / "v.json")])
    assert shown.exit_code == 0 and "1 accepted" in shown.output
    (verdict,) = json.loads((tmp_path / "v.json").read_text())
    assert verdict["status"] == "accepted" and {r["label"] for r in verdict["runs"]} == {"naive", "itgis"}
    biased = CliRunner().invoke(main, [*args[:7], "qld", *args[8:]])
    assert biased.exit_code == 1 and "not unbiased" in biased.output
    bad_option = CliRunner().invoke(main, [*args, "-o", "tsmc.particles=3"])
    assert bad_option.exit_code == 1 and "METHOD.key=value" in bad_option.output
    nothing = CliRunner().invoke(main, args[:4] + ["--output", str(out)])
    assert nothing.exit_code == 1 and "--token or --target" in nothing.output
