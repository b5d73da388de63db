"""Ground truth: exact counts, reservoirs of hitting inputs, resume after SIGKILL, merging, files, shipped data."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import lowprob.ground_truth as ground_truth
from lowprob.api import compile_source, resolve_spec
from lowprob.cli import main
from lowprob.core.counting import count_argmax
from lowprob.core.errors import LowprobError
from lowprob.ground_truth import (
    GroundTruth,
    checksum,
    compress_seeds,
    expand_seeds,
    load_shipped,
    run_ground_truth,
    shard_generator,
    shipped_pairs,
    shipped_root,
)
from lowprob.plugins import load_registry
from lowprob.plugins.testing import lookup_model, tiny_model, toy_problem

ROOT = Path(__file__).resolve().parents[1]
DEMO = str(ROOT / "examples/specs/demo.lp")


def test_counts_are_the_argmax_of_every_drawn_input() -> None:
    problem = toy_problem(seed=3)
    adapter, dist = problem.model, problem.distribution
    seen: list[torch.Tensor] = []

    def argmax(tokens: torch.Tensor) -> torch.Tensor:
        seen.append(tokens)
        return adapter.last_logits(tokens).argmax(dim=-1)

    tally = count_argmax(argmax, dist, 1000, torch.Generator().manual_seed(5), batch_size=96, reservoir_size=3)
    drawn = torch.cat(seen)
    expected = adapter.last_logits(drawn).argmax(-1)
    assert drawn.shape == (1000, 3) and tally.samples == 1000
    assert torch.equal(tally.counts, torch.bincount(expected, minlength=adapter.d_vocab))
    assert set(tally.hits) == set(expected.tolist())
    for token, rows in tally.hits.items():
        assert rows == [tuple(r) for r in drawn[expected == token][:3].tolist()]  # the first hits in draw order


def test_a_token_with_no_hits_has_zero_probability_and_infinite_relative_error(tmp_path: Path) -> None:
    problem = toy_problem(seed=1)
    gt = run_ground_truth(problem.model, problem.distribution, "toy", tmp_path / "gt.json", samples=512,
                          shard_size=256)
    missing = int(np.flatnonzero(gt.counts == 0)[0])
    assert gt.probability(missing) == 0.0 and gt.relative_error(missing) == float("inf")
    seen = int(gt.counts.argmax())
    p = gt.counts[seen] / 512
    assert gt.relative_error(seen) == pytest.approx(np.sqrt((1 - p) / gt.counts[seen]))


def test_merging_shards_equals_one_run(tmp_path: Path) -> None:
    problem = toy_problem(seed=2)
    adapter, dist = problem.model, problem.distribution
    whole = run_ground_truth(adapter, dist, "toy", tmp_path / "whole.json", samples=4 * 128, shard_size=128)
    low = run_ground_truth(adapter, dist, "toy", tmp_path / "low.json", samples=2 * 128, shard_size=128)
    high = run_ground_truth(adapter, dist, "toy", tmp_path / "high.json", samples=2 * 128, shard_size=128,
                            first_seed=2)
    for merged in (low.merge(high), high.merge(low)):
        assert merged.seeds == whole.seeds == (0, 1, 2, 3)
        assert np.array_equal(merged.counts, whole.counts)
        assert dict(merged.reservoir) == dict(whole.reservoir)
    with pytest.raises(LowprobError, match="share shard seeds"):
        whole.merge(low)
    other = run_ground_truth(lookup_model(d_vocab=6), dist, "toy", tmp_path / "other.json", samples=128, shard_size=128,
                             first_seed=9)
    with pytest.raises(LowprobError, match="different model"):
        whole.merge(other)


def test_rerunning_a_finished_file_counts_nothing_more_and_a_bigger_request_resumes(tmp_path: Path) -> None:
    problem = toy_problem(seed=4)
    adapter, dist = problem.model, problem.distribution
    out = tmp_path / "gt.json"
    first = run_ground_truth(adapter, dist, "toy", out, samples=256, shard_size=128)
    assert run_ground_truth(adapter, dist, "toy", out, samples=256, shard_size=128).seeds == first.seeds
    grown = run_ground_truth(adapter, dist, "toy", out, samples=512, shard_size=128)
    direct = run_ground_truth(adapter, dist, "toy", tmp_path / "direct.json", samples=512, shard_size=128)
    assert np.array_equal(grown.counts, direct.counts)
    with pytest.raises(LowprobError, match="different ground truth"):
        run_ground_truth(adapter, dist, "other-name", out, samples=512, shard_size=128)
    with pytest.raises(LowprobError, match="multiple of the shard size"):
        run_ground_truth(adapter, dist, "toy", out, samples=300, shard_size=128)


def test_ground_truth_files_round_trip_and_damage_is_reported(tmp_path: Path) -> None:
    problem = toy_problem(seed=5)
    gt = run_ground_truth(problem.model, problem.distribution, "toy", tmp_path / "gt.json", samples=256,
                          shard_size=128, reservoir_size=2, reservoir_max_p=1.0)
    loaded = GroundTruth.load(tmp_path / "gt.json")
    assert np.array_equal(loaded.counts, gt.counts) and loaded.seeds == gt.seeds
    assert dict(loaded.reservoir) == dict(gt.reservoir) and all(len(v) <= 2 for v in gt.reservoir.values())
    data = json.loads((tmp_path / "gt.json").read_text())
    data["samples"] += 1
    (tmp_path / "bad.json").write_text(json.dumps(data))
    with pytest.raises(LowprobError, match="bad.json: says"):
        GroundTruth.load(tmp_path / "bad.json")
    (tmp_path / "junk.json").write_text("{")
    with pytest.raises(LowprobError, match="not JSON"):
        GroundTruth.load(tmp_path / "junk.json")


@pytest.fixture
def written(tmp_path: Path) -> dict[str, Any]:
    """The JSON of a small ground truth with a reservoir, as written (with its checksum)."""
    problem = toy_problem(seed=5)
    run_ground_truth(problem.model, problem.distribution, "toy", tmp_path / "gt.json", samples=256, shard_size=128,
                     reservoir_size=2, reservoir_max_p=1.0)
    data: dict[str, Any] = json.loads((tmp_path / "gt.json").read_text())
    return data


def _moved(data: dict[str, Any]) -> None:
    first, second = list(data["counts"])[:2]
    data["counts"][first] += 1
    data["counts"][second] -= 1


def _negative(data: dict[str, Any]) -> None:
    first, second = list(data["counts"])[:2]
    data["counts"][first] += data["counts"][second] + 5
    data["counts"][second] = -5


def _token(data: dict[str, Any], key: str) -> None:
    first = next(iter(data["counts"]))
    data["counts"][key] = data["counts"].pop(first)


def _unhit(data: dict[str, Any]) -> None:
    token = next(t for t in range(data["d_vocab"]) if str(t) not in data["counts"])
    data["reservoir"][str(token)] = [[0, 0, 0]]


def _reservoir_id(data: dict[str, Any]) -> None:
    rows = next(iter(data["reservoir"].values()))
    rows[0][0] = data["d_vocab"]


DAMAGE: list[tuple[str, Callable[[dict[str, Any]], None], bool, str]] = [
    # (what, damage, drop the checksum (an older file), the message)
    ("counts moved between tokens", _moved, False, "checksum: does not match the file's contents"),
    ("a negative count offset", _negative, True, "counts.1: Input should be greater than or equal to 0"),
    ("token id -1", lambda d: _token(d, "-1"), True, "counts: key '-1': not a token id"),
    ("token id 08", lambda d: _token(d, "08"), True, "counts: key '08': not a token id"),
    ("token id = d_vocab", lambda d: _token(d, "6"), True, "counts.6: token id 6 is outside the vocabulary"),
    ("a reservoir id outside the vocabulary", _reservoir_id, True, "is not a list of 3 token ids below 6"),
    ("a reservoir token outside the vocabulary", lambda d: d["reservoir"].update({"7": [[0, 0, 0]]}), True,
     "reservoir.7: token id 7 is outside the vocabulary"),
    ("a stored input of a token with no hits", _unhit, True, "1 hitting inputs, more than the reservoir size 2 or "
                                                                 "the token's count 0"),
    ("a float count", lambda d: d["counts"].update({k: float(v) for k, v in d["counts"].items()}), True,
     "Input should be a valid integer"),
    ("a seed range of 2^62 shards", lambda d: d.update(seeds=[[0, 2**62]]), True, "more than the 1048576 a file"),
    ("overlapping seed ranges", lambda d: d.update(seeds=[[0, 1], [1, 1]]), True, "seeds.1: [1, 1] is not an "
                                                                                     "increasing range"),
    ("metadata seconds not a number", lambda d: d["metadata"].update(seconds="abc"), True,
     "metadata.seconds: Input should be a valid number"),
    ("a missing field", lambda d: d.pop("counts"), True, "counts: required"),
    ("an unknown field", lambda d: d.update(colour=1), True, "unknown key 'colour'"),
]


@pytest.mark.parametrize(("damage", "drop_checksum", "message"), [d[1:] for d in DAMAGE], ids=[d[0] for d in DAMAGE])
def test_a_damaged_ground_truth_file_is_refused_naming_file_and_field(
        written: dict[str, Any], tmp_path: Path, damage: Callable[[dict[str, Any]], None], drop_checksum: bool,
        message: str) -> None:
    if drop_checksum:  # files written before checksums are validated field by field
        del written["checksum"]
    damage(written)
    (tmp_path / "bad.json").write_text(json.dumps(written))
    with pytest.raises(LowprobError) as error:
        GroundTruth.load(tmp_path / "bad.json")
    assert str(error.value).startswith(f"{tmp_path / 'bad.json'}: damaged ground-truth file")
    assert message in str(error.value)


@pytest.mark.parametrize(("raw", "message"), [
    (b'{"format": "lowprob-ground-truth/1", "model": "\xff"}', "not a ground-truth file (not UTF-8 text: byte 47)"),
    (b"[]", "its JSON is an array, not an object"),
    (b"null", "its JSON is null, not an object"),
    (b"5", "its JSON is a number, not an object"),
    (b"[" * 100_000 + b"]" * 100_000, "JSON nested too deeply"),
])
def test_a_file_that_is_not_a_ground_truth_is_refused(tmp_path: Path, raw: bytes, message: str) -> None:
    (tmp_path / "x.json").write_bytes(raw)
    with pytest.raises(LowprobError, match=re.escape(message)):
        GroundTruth.load(tmp_path / "x.json")
    with pytest.raises(LowprobError, match="cannot read the ground-truth file"):
        GroundTruth.load(tmp_path)


def test_files_carry_a_checksum_and_older_files_without_one_still_load(written: dict[str, Any],
                                                                       tmp_path: Path) -> None:
    assert written["checksum"] == checksum(written) and written["checksum"].startswith("sha256:")
    del written["checksum"]
    (tmp_path / "old.json").write_text(json.dumps(written))
    old = GroundTruth.load(tmp_path / "old.json")
    assert old.to_json()["checksum"] == checksum(written)  # rewriting upgrades it
    shipped = shipped_root() / "lowprob-1l" / "hex.json"  # re-saved with its checksum: rewriting changes nothing
    assert json.dumps(load_shipped("lowprob-1l", "hex").to_json(), separators=(",", ":")) + "\n" == shipped.read_text()


def test_a_read_only_ground_truth_is_not_replaced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    problem = toy_problem(seed=4)
    out = tmp_path / "gt.json"
    run_ground_truth(problem.model, problem.distribution, "toy", out, samples=128, shard_size=128)
    out.chmod(0o444)
    before = out.read_bytes()
    monkeypatch.setattr(ground_truth, "count_shard", lambda *a, **k: pytest.fail("a shard was counted"))
    with pytest.raises(LowprobError, match="is read-only; make it writable"):
        run_ground_truth(problem.model, problem.distribution, "toy", out, samples=256, shard_size=128)
    assert out.read_bytes() == before and stat.S_IMODE(out.stat().st_mode) == 0o444


def test_limits_are_refused_before_anything_is_built(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    problem = toy_problem(seed=4)
    monkeypatch.setattr(ground_truth, "count_shard", lambda *a, **k: pytest.fail("a shard was counted"))
    cases: list[tuple[dict[str, Any], str]] = [
        ({"samples": 2**70, "shard_size": 2**16}, "a file holds at most 1048576 shards"),
        ({"samples": 128, "shard_size": 0}, "the shard size must be from 1"),
        ({"samples": 128, "shard_size": 128, "batch_size": 0}, "batch size must be at least 1"),
        ({"samples": 128, "shard_size": 128, "reservoir_size": -1}, "reservoir size must be"),
        ({"samples": 128, "shard_size": 128, "reservoir_max_p": math.nan}, "in [0, 1], got nan")]
    for kwargs, message in cases:
        with pytest.raises(LowprobError, match=re.escape(message)):
            run_ground_truth(problem.model, problem.distribution, "toy", tmp_path / "gt.json", **kwargs)
    assert not (tmp_path / "gt.json").exists()


def test_seed_ranges_compress_and_shard_generators_are_not_small_integer_seeds() -> None:
    assert compress_seeds([5, 0, 1, 2, 7, 6]) == [[0, 2], [5, 7]]
    assert expand_seeds([[0, 2], [5, 7]]) == (0, 1, 2, 5, 6, 7)
    assert shard_generator(0).initial_seed() not in range(2**20)
    assert torch.equal(torch.rand(3, generator=shard_generator(1)), torch.rand(3, generator=shard_generator(1)))


def test_reservoir_only_keeps_rare_tokens(tmp_path: Path) -> None:
    problem = toy_problem(seed=6)
    gt = run_ground_truth(problem.model, problem.distribution, "toy", tmp_path / "gt.json", samples=512,
                          shard_size=256, reservoir_size=4, reservoir_max_p=0.05)
    for token, rows in gt.reservoir.items():
        assert gt.probability(token) <= 0.05 and 0 < len(rows) <= 4
        logits = problem.model.last_logits(torch.tensor(rows))
        assert (logits.argmax(-1) == token).all()  # exact samples of D(x | M(x) = token)


def test_a_killed_run_resumes_to_bit_identical_counts(tmp_path: Path) -> None:
    """SIGKILL `lowprob ground-truth run` after its first shard, rerun it, compare with an uninterrupted run."""
    env = {**os.environ, "CI": "1"}
    args = ["ground-truth", "run", DEMO, "--model", "random-1l", "--samples", "2^14", "--shard-size", "2^10",
            "--batch-size", "512"]
    killed, clean = tmp_path / "killed.json", tmp_path / "clean.json"
    cmd = [sys.executable, "-m", "lowprob", *args, "--output", str(killed)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None and not killed.exists():
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = GroundTruth.load(killed)
    assert 1 <= len(partial.seeds) < 16, "the run should have been killed part-way"
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    subprocess.run([sys.executable, "-m", "lowprob", *args, "--output", str(clean)], env=env, check=True,
                   capture_output=True)
    resumed, whole = GroundTruth.load(killed), GroundTruth.load(clean)
    assert resumed.seeds == whole.seeds == tuple(range(16))
    assert np.array_equal(resumed.counts, whole.counts)
    assert dict(resumed.reservoir) == dict(whole.reservoir)


def test_cli_merge_and_show(tmp_path: Path) -> None:
    runner = CliRunner()
    for first, name in ((0, "a.json"), (2, "b.json")):
        result = runner.invoke(main, ["ground-truth", "run", DEMO, "--model", "random-1l", "--samples", "2048",
                                      "--shard-size", "1024", "--first-seed", str(first),
                                      "--output", str(tmp_path / name)])
        assert result.exit_code == 0, result.output
    result = runner.invoke(main, ["ground-truth", "merge", str(tmp_path / "a.json"), str(tmp_path / "b.json"),
                                  "--output", str(tmp_path / "ab.json")])
    assert result.exit_code == 0 and "4096 samples in 4 shards" in result.output
    result = runner.invoke(main, ["ground-truth", "show", str(tmp_path / "ab.json"), "--top", "3"])
    assert result.exit_code == 0 and result.output.count("p = ") == 3
    (tmp_path / "root" / "random-1l").mkdir(parents=True)
    (tmp_path / "root" / "random-1l" / "demo.json").write_text((tmp_path / "ab.json").read_text())
    result = runner.invoke(main, ["ground-truth", "list", "--root", str(tmp_path / "root")])
    assert result.exit_code == 0 and "| random-1l | demo | 2^12 |" in result.output
    result = runner.invoke(main, ["ground-truth", "merge", str(tmp_path / "a.json"), str(tmp_path / "ab.json"),
                                  "--output", str(tmp_path / "x.json")])
    assert result.exit_code == 1 and "share shard seeds" in result.output and not (tmp_path / "x.json").exists()


def test_fast_path_counts_equal_reference_counts(tmp_path: Path) -> None:
    """The first-layer-table fast path and the reference forward count exactly the same argmaxes."""
    from lowprob.core.model import ModelAdapter

    adapter = tiny_model(d_vocab=7, n_ctx=6, n_layers=1, seed=3)
    reference = ModelAdapter(adapter.model, adapter.vocab, adapter.name, fast=False)
    problem = toy_problem(seed=7, d_vocab=7)
    fast_gt = run_ground_truth(adapter, problem.distribution, "toy", tmp_path / "f.json", samples=1024,
                               shard_size=512)
    ref_gt = run_ground_truth(reference, problem.distribution, "toy", tmp_path / "r.json", samples=1024,
                              shard_size=512)
    assert fast_gt.metadata["forward"] == "fast+tables" and ref_gt.metadata["forward"] == "reference"
    assert np.array_equal(fast_gt.counts, ref_gt.counts)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_low_precision_counts_equal_float32_counts(tmp_path: Path, precision: str) -> None:
    """A certified low-precision unembedding changes speed, never counts; its shards merge with float32 ones."""
    adapter = tiny_model(d_vocab=40, n_ctx=6, n_layers=2, d_model=16, seed=4)
    dist = toy_problem(seed=2, d_vocab=40).distribution
    exact = run_ground_truth(adapter, dist, "toy", tmp_path / "exact.json", samples=2048, shard_size=512)
    cheap = run_ground_truth(adapter, dist, "toy", tmp_path / "cheap.json", samples=2048, shard_size=512,
                             precision=precision)
    assert np.array_equal(exact.counts, cheap.counts) and exact.reservoir == cheap.reservoir
    assert cheap.metadata["precision"] == precision and exact.metadata["precision"] == "fp32"
    assert int(cheap.metadata["rechecked"]) >= 0 and exact.metadata["rechecked"] == 0
    low = run_ground_truth(adapter, dist, "toy", tmp_path / "low.json", samples=1024, shard_size=512)
    high = run_ground_truth(adapter, dist, "toy", tmp_path / "high.json", samples=1024, shard_size=512,
                            first_seed=2, precision=precision)
    merged = low.merge(high)
    assert np.array_equal(merged.counts, exact.counts)
    assert merged.metadata["precision"] == "+".join(sorted(["fp32", precision]))


def test_low_precision_needs_the_fast_path(tmp_path: Path) -> None:
    from lowprob.core.model import ModelAdapter

    adapter = tiny_model(d_vocab=7, n_ctx=6, n_layers=1, seed=3)
    reference = ModelAdapter(adapter.model, adapter.vocab, adapter.name, fast=False)
    with pytest.raises(LowprobError, match="precision 'bf16' needs lowprob's fast forward"):
        run_ground_truth(reference, toy_problem(seed=7, d_vocab=7).distribution, "toy", tmp_path / "r.json",
                         samples=512, shard_size=512, precision="bf16")
    result = CliRunner().invoke(main, ["ground-truth", "run", DEMO, "--model", "random-1l", "--samples", "512",
                                       "--shard-size", "512", "--precision", "tf32", "--device", "cpu",
                                       "--output", str(tmp_path / "t.json")])
    assert result.exit_code != 0 and "'tf32' is a CUDA tensor-core mode" in result.output
    assert not (tmp_path / "t.json").exists()


def test_unknown_shipped_pair_lists_the_available_ones(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "d.json").write_text("{}")
    assert shipped_pairs(tmp_path) == [("m", "d")]
    with pytest.raises(LowprobError, match="available: m/d"):
        load_shipped("m", "other", tmp_path)


@pytest.mark.parametrize(("model", "distribution"), shipped_pairs() or [pytest.param("-", "-", marks=pytest.mark.skip(
    reason="no shipped ground truth yet"))])
def test_shipped_ground_truth_is_consistent(model: str, distribution: str) -> None:
    gt = load_shipped(model, distribution)
    assert (gt.model, gt.distribution) == (model, distribution)
    stored = json.loads((shipped_root() / model / f"{distribution}.json").read_text(encoding="utf-8"))
    assert stored["checksum"] == checksum(stored), "a shipped file carries its checksum (load verified it)"
    assert gt.samples >= 2**15 and gt.d_vocab == 8192  # the smallest shipped count (docs/ground-truth.md)
    registry = load_registry()
    compiled = compile_source(registry, resolve_spec(distribution, registry), model=model)
    assert gt.distribution_hash == compiled.spec.distribution(None).content_hash, "spec changed since counting"


def test_grow_script_extends_every_file_with_its_own_shard_size(tmp_path: Path) -> None:
    """scripts/grow_ground_truth.py grows files in place to what one direct run of that size counts."""
    import importlib.util

    loader = importlib.util.spec_from_file_location("grow_ground_truth", ROOT / "scripts" / "grow_ground_truth.py")
    assert loader is not None and loader.loader is not None
    script = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(script)
    root = tmp_path / "root"
    run = ["ground-truth", "run", "hex", "--model", "lowprob-1l", "--shard-size", "1024", "--no-progress"]
    for name, samples in (("hex", "1024"), ("direct", "3072")):
        path = (root if name == "hex" else tmp_path) / "lowprob-1l" / f"{name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        assert CliRunner().invoke(main, [*run, "--samples", samples, "--output", str(path)]).exit_code == 0
    assert script.main(["--samples", "3000", "--root", str(root)]) == 0  # rounded up to whole shards
    grown = GroundTruth.load(root / "lowprob-1l" / "hex.json")
    direct = GroundTruth.load(tmp_path / "lowprob-1l" / "direct.json")
    assert grown.samples == 3072 and grown.seeds == direct.seeds and np.array_equal(grown.counts, direct.counts)
    assert script.main(["--samples", "2^11", "--root", str(root)]) == 0  # already there: nothing to do
    assert GroundTruth.load(root / "lowprob-1l" / "hex.json").samples == 3072

