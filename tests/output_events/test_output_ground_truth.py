"""Ground truth of an output event by brute-force generation: agrees with the exact value, resumes, merges."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from output_toys import toy_output_problem

from lowprob.core.errors import LowprobError
from lowprob.core.output_target import OutputTarget
from lowprob.output_ground_truth import OutputGroundTruth, count_output_shard, load_any, run_output_ground_truth
from lowprob.shards import merge_arrivals

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


def test_shards_arriving_out_of_order_or_twice_are_merged_in_seed_order_once(tmp_path: Path) -> None:
    """What the driver of an executor run does with shards as workers send them (a rerun task's shard twice)."""
    whole = _count(tmp_path / "whole.json", 2048)
    toy = toy_output_problem(EVENT)
    assert isinstance(toy.target, OutputTarget)
    shards = {s: count_output_shard(toy.model, toy.distribution, "toy", toy.target, s, 512, reservoir_size=4,
                                    batch_size=256) for s in range(4)}
    saved: list[tuple[int, ...]] = []

    def arrivals() -> Iterator[tuple[int, OutputGroundTruth]]:
        for seed in (2, 0, 2, 3, 1, 0):
            yield seed, shards[seed]
            saved.append(OutputGroundTruth.load(tmp_path / "out.json").seeds if (tmp_path / "out.json").exists()
                         else ())

    total = merge_arrivals(None, [0, 1, 2, 3], arrivals(), tmp_path / "out.json")
    assert saved == [(), (0,), (0,), (0,), (0, 1, 2, 3), (0, 1, 2, 3)]  # the file only ever holds a seed prefix
    assert total.to_json()["checksum"] == whole.to_json()["checksum"]
    assert OutputGroundTruth.load(tmp_path / "out.json").to_json()["checksum"] == whole.to_json()["checksum"]


def test_settings_are_checked_before_anything_is_counted(tmp_path: Path) -> None:
    with pytest.raises(LowprobError, match="reservoir size must be from 0 to 4096"):
        _count_with(tmp_path / "gt.json", reservoir_size=5000)
    with pytest.raises(LowprobError, match="first seed must be"):
        _count_with(tmp_path / "gt.json", first_seed=-1)
    assert not (tmp_path / "gt.json").exists()


def _count_with(path: Path, **settings: int) -> OutputGroundTruth:
    toy = toy_output_problem(EVENT)
    assert isinstance(toy.target, OutputTarget)
    return run_output_ground_truth(toy.model, toy.distribution, "toy", toy.target, path,
                                   **{"samples": 512, "shard_size": 512, **settings})
