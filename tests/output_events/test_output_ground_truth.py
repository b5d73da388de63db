"""Ground truth of an output event by brute-force generation: agrees with the exact value, resumes, merges."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from output_toys import toy_output_problem

from lowprob.core.errors import LowprobError
from lowprob.core.output_target import OutputTarget
from lowprob.output_ground_truth import OutputGroundTruth, load_any, run_output_ground_truth

EVENT = 'sample(2) contains "b"'


def _count(path: Path, samples: int, first_seed: int = 0) -> OutputGroundTruth:
    toy = toy_output_problem(EVENT)
    assert isinstance(toy.target, OutputTarget)
    return run_output_ground_truth(toy.model, toy.distribution, "toy", toy.target, path, samples=samples,
                                   shard_size=512, first_seed=first_seed, reservoir_size=4, batch_size=256,
                                   progress=False)


def test_counts_agree_with_the_exact_probability(tmp_path: Path) -> None:
    toy = toy_output_problem(EVENT)
    gt = _count(tmp_path / "gt.json", 8192)
    sd = math.sqrt(toy.exact * (1 - toy.exact) * gt.samples)
    assert abs(gt.hits - toy.exact * gt.samples) <= 4 * sd, (gt.hits, toy.exact * gt.samples, sd)
    assert isinstance(toy.target, OutputTarget) and len(gt.reservoir) == 4
    rows = torch.tensor(gt.reservoir)
    assert bool(toy.target.hits(rows[:, -2:], toy.model.vocab).all())  # stored rows are hitting input+continuation


def test_resumed_and_merged_counts_equal_one_run(tmp_path: Path) -> None:
    whole = _count(tmp_path / "whole.json", 2048)
    _count(tmp_path / "resumed.json", 1024)
    resumed = _count(tmp_path / "resumed.json", 2048)
    first, second = _count(tmp_path / "a.json", 1024), _count(tmp_path / "b.json", 1024, first_seed=2)
    merged = first.merge(second)
    for other in (resumed, merged):
        assert (other.hits, other.seeds, other.reservoir) == (whole.hits, whole.seeds, whole.reservoir)
    with pytest.raises(LowprobError, match="share shard seeds"):
        merged.merge(first)


def test_files_round_trip_and_refuse_damage(tmp_path: Path) -> None:
    path = tmp_path / "gt.json"
    gt = _count(path, 512)
    loaded = load_any(path)
    assert isinstance(loaded, OutputGroundTruth) and loaded.hits == gt.hits and loaded.target == EVENT.replace(
        '"b"', "'b'")
    data = json.loads(path.read_text())
    data["hits"] += 1
    path.write_text(json.dumps(data))
    with pytest.raises(LowprobError, match="checksum"):
        OutputGroundTruth.load(path)


def test_another_event_does_not_resume_a_file(tmp_path: Path) -> None:
    path = tmp_path / "gt.json"
    _count(path, 512)
    toy = toy_output_problem('sample(2) contains "c"')
    assert isinstance(toy.target, OutputTarget)
    with pytest.raises(LowprobError, match="holds a different output ground truth"):
        run_output_ground_truth(toy.model, toy.distribution, "toy", toy.target, path, samples=1024, shard_size=512)
