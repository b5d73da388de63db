"""Twisted-SMC log-Z brackets against ground truth: lower ≤ log p ≤ upper on a small real problem."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from lowprob.api import compile_source, resolve_spec
from lowprob.brackets import bracket_targets
from lowprob.core.errors import LowprobError
from lowprob.ground_truth import run_ground_truth
from lowprob.plugins import load_registry

SPEC = """tokens hex = /^[0-9a-f]+$/
dist main = BOS hex * 3
"""


def test_brackets_bound_the_ground_truth_log_probability(tmp_path: Path) -> None:
    spec = tmp_path / "small.lp"
    spec.write_text(SPEC)
    registry = load_registry()
    compiled = compile_source(registry, resolve_spec(str(spec), registry), model="random-1l")
    dist = compiled.spec.distribution(None)
    gt = run_ground_truth(compiled.model, dist, str(spec), tmp_path / "gt.json", samples=4096, shard_size=4096,
                          reservoir_size=8, reservoir_max_p=0.05)
    tokens = sorted((t for t in gt.reservoir if gt.counts[t] >= 40), key=lambda t: gt.counts[t])[:2]
    assert tokens, "the toy needs a token with hits"
    rows = bracket_targets(registry, gt, "tsmc", tokens, runs=6, particles=32)
    for token, row in zip(tokens, rows, strict=True):
        assert row.log_p_true == pytest.approx(math.log(gt.probability(token)))
        # stochastic bounds: means over runs, checked with a margin for the ground truth's own error (≤ 16 %)
        assert row.lower <= row.log_p_true + 0.3
        assert row.upper >= row.log_p_true - 0.3
        assert row.positives == len(gt.hitting_inputs(token)) and 0 <= row.zero_runs <= row.runs == 6
    with pytest.raises(LowprobError, match=r"bidirectional bounds \(.*tsmc, tsmc-ctl\), not 'naive'"):
        bracket_targets(registry, gt, "naive", tokens)
    with pytest.raises(LowprobError, match="no hitting inputs"):
        bracket_targets(registry, gt, "tsmc", [int(gt.counts.argmin())])
