"""The paper regime (`lowprob reproduce --regime paper`) and target screening: the shipped config plans unscaled
paper budgets and the paper's bands, scores test tokens against accepted references, and screening is
deterministic."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from lowprob.api import compile_source, resolve_spec
from lowprob.cli import main
from lowprob.core.budget import Budget
from lowprob.core.errors import LowprobError
from lowprob.engine import Engine
from lowprob.ground_truth import GroundTruth, load_shipped
from lowprob.plugins import load_registry
from lowprob.protocol import PAPER_BAND, PAPER_TUNING_BAND
from lowprob.references import EXPERIMENT, ReferenceMethod, TargetTruth, reference_seed
from lowprob.reproduce import plan, shipped_config, write_report
from lowprob.results import ResultRow, RowSpec
from lowprob.target_screening import ScreenRules, screen, screening_order, seen_in_band
from tests.made_estimates import made_estimate


def _reference_rows(gt: GroundTruth, token: int, values: dict[str, float]) -> list[ResultRow]:
    rows = []
    for estimator, value in values.items():
        target = f"argmax == #{token}"
        spec = RowSpec(experiment=EXPERIMENT, model=gt.model, distribution=gt.distribution,
                       distribution_hash=gt.distribution_hash, target=target, estimator=estimator, label=estimator,
                       budget=Budget(model_calls=1 << 16),
                       seed=reference_seed(gt.model, gt.distribution, target, estimator, 1 << 16, 0))
        estimate = made_estimate(value, model_calls=1 << 16).model_copy(update={"std_error": 0.05 * value})
        rows.append(ResultRow.of(spec, estimate=estimate))
    return rows


@pytest.fixture
def paper_config(tmp_path: Path) -> tuple[Path, dict[int, float]]:
    """The shipped paper config next to a reference file: token 5 accepted at 3e-7, token 6 rejected (the runs
    disagree), token 7 accepted but above the band."""
    gt = load_shipped("lowprob-1l", "hex")
    rows = (_reference_rows(gt, 5, {"tsmc": 3.0e-7, "itgis": 3.1e-7}) + _reference_rows(gt, 6, {"tsmc": 1e-7,
            "itgis": 4e-7}) + _reference_rows(gt, 7, {"tsmc": 2e-5, "itgis": 2e-5}))
    folder = tmp_path / "references" / "lowprob-1l"
    folder.mkdir(parents=True)
    (folder / "hex.jsonl").write_text("".join(json.dumps(r.model_dump(mode="json")) + "\n" for r in rows))
    config = tmp_path / "paper.toml"
    config.write_text(shipped_config(paper=True).read_text().replace('["hex", "camel", "colon", "if"]', '["hex"]'))
    return config, {5: 3.0e-7 * 0.5 + 3.1e-7 * 0.5}


def test_paper_regime_plans_unscaled_budgets_paper_bands_and_reference_targets(paper_config) -> None:
    config, truth = paper_config
    registry = load_registry()
    repro = plan(config, registry)
    (pair,) = repro.pairs
    assert (pair.test_band.low, pair.test_band.high) == PAPER_BAND
    assert (pair.tuning_band.low, pair.tuning_band.high) == PAPER_TUNING_BAND
    assert pair.scale == 1.0 and pair.skipped is None
    for method in pair.methods:  # no scaling: each estimator's own paper budget, options as configured
        assert method.budget == registry.estimator(method.estimator).paper_budget()
    assert {m.label: m.budget.model_calls for m in pair.methods}["mhis"] == 32 * (1 + 2**10 + 2**11)
    assert {m.label: m.budget.model_calls for m in pair.methods}["tsmc"] == 2**16
    assert pair.selection.test == (5,) and pair.selection.test_candidates == 1
    assert pair.p(5) == pytest.approx(next(iter(truth.values())), rel=0.01)
    gt = pair.ground_truth
    for token in pair.selection.tuning:  # tuning tokens still come from brute force, with the hit rule
        assert gt.hits(token) >= 12 and 1e-5 <= gt.probability(token) < 1e-3
    test_rows = [j for j in repro.jobs(pair) if j.spec.phase == "test"]
    assert test_rows and all(j.spec.protocol.p_true == pair.p(5) for j in test_rows)


def test_paper_regime_dry_run_shows_the_budgets(paper_config) -> None:
    config, _ = paper_config
    result = CliRunner().invoke(main, ["reproduce", "--config", str(config), "--dry-run",
                                       "--output", str(config.parent / "out")])
    assert result.exit_code == 0, result.output
    assert "[1e-09, 1e-05)" in result.output and "naive=65536" in result.output and "mhis=98336" in result.output
    shipped = CliRunner().invoke(main, ["reproduce", "--regime", "paper", "--dry-run", "--output",
                                        str(config.parent / "out2")])
    assert shipped.exit_code == 0, shipped.output
    assert "no accepted reference or fresh brute-force count" in shipped.output or "naive=65536" in shipped.output
    both = CliRunner().invoke(main, ["reproduce", "--regime", "paper", "--quick", "--dry-run"])
    assert both.exit_code == 1 and "--regime paper" in both.output


FRESH_SEEDS = tuple(range(1 << 20, (1 << 20) + 64))
"""Shards of a fresh count past the shipped ground truth's seeds: 64 × 2^16 = 2^22 samples."""


def _fresh_count(folder: Path, hits: dict[int, int], seeds: tuple[int, ...] = FRESH_SEEDS,
                 distribution_hash: str | None = None) -> GroundTruth:
    """A synthetic brute-force file ``folder/lowprob-1l/hex.json``: ``hits`` on the given tokens, the other
    inputs on the shipped ground truth's most frequent token."""
    shipped = load_shipped("lowprob-1l", "hex")
    counts = np.zeros(shipped.d_vocab, dtype=np.int64)
    counts[list(hits)] = list(hits.values())
    counts[int(np.argmax(shipped.counts))] += len(seeds) * shipped.shard_size - sum(hits.values())
    fresh = GroundTruth(shipped.model, shipped.distribution, distribution_hash or shipped.distribution_hash,
                        shipped.d_vocab, shipped.shard_size, seeds, counts)
    fresh.save(folder / "lowprob-1l" / "hex.json")
    return fresh


def test_fresh_brute_force_counts_with_enough_hits_are_test_truths_before_references(paper_config) -> None:
    config, _ = paper_config  # references: #5 accepted at 3.05e-7, #6 rejected, #7 accepted at 2e-5 (above band)
    samples = len(FRESH_SEEDS) << 16
    # #5: 20 hits, preferred to its reference; #6: 11 hits, too few (and its reference is rejected); #7: 30 hits,
    # in band, so brute force brings it in; #10: exactly 12 hits; #11: 100 hits, above the band (2.4e-5)
    _fresh_count(config.parent / "brute-force", {5: 20, 6: 11, 7: 30, 10: 12, 11: 100})
    repro = plan(config, load_registry())
    (pair,) = repro.pairs
    assert sorted(pair.selection.test) == [5, 7, 10] and pair.selection.test_candidates == 3
    truths = {t.token: t for t in pair.test_truths()}
    assert truths[5] == TargetTruth(5, "brute-force", 20 / samples, 20, samples, pytest.approx(3.05e-7, rel=0.01))
    assert truths[7].source == "brute-force" and truths[7].reference == pytest.approx(2e-5)
    assert truths[10] == TargetTruth(10, "brute-force", 12 / samples, 12, samples, None)
    assert pair.p(5) == 20 / samples and pair.p(10) == 12 / samples
    test_rows = [j for j in repro.jobs(pair) if j.spec.phase == "test"]
    assert {j.spec.protocol.p_true for j in test_rows} == {20 / samples, 30 / samples, 12 / samples}
    config.write_text(config.read_text().replace("n_test = 16", "n_test = 2"))
    assert plan(config, load_registry()).pairs[0].selection.test == pair.selection.test[:2]  # same permutation
    dry = CliRunner().invoke(main, ["reproduce", "--config", str(config), "--dry-run", "--output",
                                    str(config.parent / "out")])
    assert dry.exit_code == 0, dry.output
    assert f"brute force {config.parent / 'brute-force' / 'lowprob-1l' / 'hex.json'}: {samples} samples" in dry.output
    assert f"(brute-force; 20/{samples} fresh hits; reference 3.05e-07)" in dry.output


def test_without_a_brute_force_file_the_references_decide(paper_config) -> None:
    config, truth = paper_config
    (pair,) = plan(config, load_registry()).pairs
    assert pair.test_truths() == [TargetTruth(5, "reference", pytest.approx(truth[5], rel=0.01), None, None,
                                              pytest.approx(truth[5], rel=0.01))]
    assert "no brute-force file at" in (pair.truth_sources or "")
    _fresh_count(config.parent / "brute-force", {5: 3})  # a count too small to decide keeps the reference
    (pair,) = plan(config, load_registry()).pairs
    assert pair.test_truths()[0].source == "reference" and pair.test_truths()[0].hits == 3


@pytest.mark.parametrize("change, message", [
    ({"seeds": (15, *FRESH_SEEDS[1:])}, "shares 1 shard seed(s) with the shipped ground truth (first 15)"),
    ({"distribution_hash": "0123456789abcdef"}, "brute-force file has distribution_hash '0123456789abcdef'"),
])
def test_a_brute_force_file_that_reuses_the_shipped_inputs_or_counts_another_distribution_is_refused(
        paper_config, change: dict, message: str) -> None:
    config, _ = paper_config
    _fresh_count(config.parent / "brute-force", {5: 20}, **change)
    with pytest.raises(LowprobError) as err:
        plan(config, load_registry())
    assert str(config.parent / "brute-force" / "lowprob-1l" / "hex.json") in str(err.value)
    assert message in str(err.value)
    result = CliRunner().invoke(main, ["reproduce", "--config", str(config), "--dry-run"])
    assert result.exit_code == 1 and message in result.output and "Traceback" not in result.output


def test_the_report_says_where_each_test_truth_comes_from(paper_config) -> None:
    config, truth = paper_config
    samples = len(FRESH_SEEDS) << 16
    _fresh_count(config.parent / "brute-force", {10: 14})
    repro = plan(config, load_registry(), output=config.parent / "out")
    write_report(repro)
    losses = json.loads((repro.output / "losses.json").read_text())
    assert sorted(losses["pairs"][0]["test_truths"], key=lambda t: t["token"]) == [
        {"token": 5, "source": "reference", "value": pytest.approx(truth[5], rel=0.01), "hits": 0, "samples": samples,
         "reference": pytest.approx(truth[5], rel=0.01)},
        {"token": 10, "source": "brute-force", "value": 14 / samples, "hits": 14, "samples": samples,
         "reference": None}]
    markdown = (repro.output / "losses.md").read_text()
    assert "### Test truths" in markdown and f"| hex | #10 | brute-force | {14 / samples:.3g} | 14 / {samples} | — |" \
        in markdown and "| hex | #5 | reference |" in markdown
    assert losses["deviations"] == [] and "Deviation from the paper" not in markdown


def test_the_untuned_variant_plans_paper_budgets_at_default_temperatures_and_no_tuning_rows(tmp_path: Path) -> None:
    config = tmp_path / "untuned.toml"  # the run config of this repository, its counts replaced by synthetic ones
    config.write_text((Path(__file__).parents[1] / "docs/results/references/reproduce-paper-untuned.toml")
                      .read_text().replace('["hex", "camel", "colon", "if"]', '["hex"]'))
    _fresh_count(tmp_path / "brute-force", {5: 20, 10: 12})
    registry = load_registry()
    repro = plan(config, registry, output=tmp_path / "out")
    (pair,) = repro.pairs
    assert sorted(pair.selection.test) == [5, 10] and {t.source for t in pair.test_truths()} == {"brute-force"}
    assert pair.scale == 1.0 and not any(m.tuned for m in pair.methods)
    for method in pair.methods:  # the paper's unscaled budgets (MHIS its own accounting), no temperature option
        assert method.budget == registry.estimator(method.estimator).paper_budget()
        assert "temperature" not in method.options or method.label == "tsmc-ctl"
    assert {m.label: m.budget.model_calls for m in pair.methods}["mhis"] == 98336
    jobs = repro.jobs(pair)
    assert {j.spec.phase for j in jobs} == {"test"} and len(jobs) == 2 * len(pair.methods)
    assert all(j.spec.protocol.tuning_grid is None for j in jobs)
    assert repro.deviations() and "temperatures not tuned" in repro.deviations()[0]
    dry = CliRunner().invoke(main, ["reproduce", "--config", str(config), "--dry-run", "--output",
                                    str(tmp_path / "out"), "--executor", "processes", "--workers", "2"])
    assert dry.exit_code == 0, dry.output
    assert "deviation from the paper: temperatures not tuned" in dry.output and "mhis=98336" in dry.output
    assert f"{2 * len(pair.methods)} estimates to run" in dry.output
    write_report(repro)
    assert "**Deviation from the paper:** temperatures not tuned" in (repro.output / "losses.md").read_text()


def _planted_ground_truth(source, hits: dict[int, int], samples: int) -> GroundTruth:
    counts = np.zeros(source.model.d_vocab, dtype=np.int64)
    for token, k in hits.items():
        counts[token] = k
    counts[3] = samples - sum(hits.values())  # MISS: every other input
    return GroundTruth(source.model.name, "planted-threshold-e3", source.spec.distribution(None).content_hash,
                       source.model.d_vocab, samples, (0,), counts)


def test_screening_is_deterministic_and_keeps_the_tokens_in_band(tmp_path: Path) -> None:
    registry = load_registry()
    source = compile_source(registry, resolve_spec("planted-threshold-e3", registry), model="planted-threshold")
    gt = _planted_ground_truth(source, {2: 3}, 1 << 12)  # HIT (p = 1e-3) seen 3 times: a few-hit candidate
    rules = ScreenRules(band=(1e-4, 1e-2), screen=30, pilot=ReferenceMethod(estimator="naive"), pilot_calls=8192)
    order = screening_order(gt, rules)
    assert order == screening_order(gt, rules) and sorted(order) == [t for t in range(30) if t not in (2, 3)]
    assert order != screening_order(gt, rules.model_copy(update={"seed": 1}))
    assert seen_in_band(gt, rules) == (2,)  # its Clopper-Pearson interval [1.5e-4, 2.1e-3] meets the band
    assert seen_in_band(gt, rules.model_copy(update={"band": (3e-3, 1e-2)})) == ()
    first = screen(registry, Engine(tmp_path / "a.jsonl"), source, gt, rules)
    assert first.kept == (2,) and first.by_ground_truth == (2,) and 2 not in first.pilots  # no pilot spent on it
    assert first.candidates == 29 and first.calls == 28 * 8192 and set(first.pilots.values()) == {0.0}
    again = screen(registry, Engine(tmp_path / "b.jsonl"), source, gt, rules)
    assert again.pilots == first.pilots and again.kept == first.kept
    before = (tmp_path / "a.jsonl").read_bytes()
    assert screen(registry, Engine(tmp_path / "a.jsonl"), source, gt, rules).pilots == first.pilots
    assert (tmp_path / "a.jsonl").read_bytes() == before  # resumed: no pilot ran twice
    assert first.choose(1, 0) == (2,) and screen(registry, Engine(tmp_path / "c.jsonl"), source, gt,
                                                 rules.model_copy(update={"screen": 3})).screened == order[:3]


def test_a_never_seen_token_is_kept_by_a_positive_pilot_in_band(tmp_path: Path) -> None:
    registry = load_registry()
    source = compile_source(registry, resolve_spec("planted-threshold-e3", registry), model="planted-threshold")
    gt = _planted_ground_truth(source, {}, 1 << 8)  # 256 samples never saw HIT (p = 1e-3)
    rules = ScreenRules(band=(1e-4, 1e-2), screen=40, pilot=ReferenceMethod(estimator="naive"), pilot_calls=1 << 13)
    result = screen(registry, Engine(tmp_path / "a.jsonl"), source, gt, rules)
    assert result.by_ground_truth == () and 2 in result.screened and result.kept == (2,)
    assert result.pilots[2] > 0 and all(v == 0 for t, v in result.pilots.items() if t != 2)
    missed = screen(registry, Engine(tmp_path / "b.jsonl"), source, gt, rules.model_copy(update={"band": (1e-9,
                                                                                                          1e-5)}))
    assert missed.kept == ()  # a pilot near 1e-3 is outside [1e-9, 1e-5)
