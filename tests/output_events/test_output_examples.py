"""The issue's five example output events on lowprob-1l's `english` inputs, through `lowprob estimate`, with every
registered estimator that supports output events: each run gives a result in [0, 1] (a zero with its upper bound)
or refuses the event in one clear line naming the estimator and the event, never a traceback.

The matrix of what works is in docs/output-events.md. All 30 runs take about 21 s on the 2-core machine.
"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from lowprob.cli import main
from lowprob.plugins import load_registry

TARGETS = {
    "a": 'greedy(4) startswith " the end"',
    "b": 'sample(8) contains " Berlin"',
    "c": 'sample(16, temperature=0.7, top_k=50) contains {" fire", " attack"}',
    "d": "sample(12) matches / (?i)password /",
    "e": 'sample(2) == " of the"',
}
BUDGET = "64"
SMALL = {
    "output-tsmc": ["particles=16"],
    "joint-tsmc": ["particles=16"],
    "output-tsmc-ctl": ["particles=16", "train_particles=8", "rounds=1", "train_steps=2"],
    "output-gams": ["replicas=16", "kill=2"],
}
"""Options that fit a run into the small budget (estimators not listed run with their defaults)."""

ESTIMATORS = sorted(e.name for e in load_registry().entries("estimators") if e.obj.capabilities.output_events)


def _estimate(estimator: str, target: str, *extra: str) -> tuple[int, str, str]:
    options = [arg for option in SMALL.get(estimator, []) for arg in ("-o", option)]
    result = CliRunner().invoke(main, ["estimate", "english", "--model", "lowprob-1l", "--target", target,
                                       "--estimator", estimator, "--budget-calls", BUDGET, "--seed", "1",
                                       "--no-progress", *options, *extra])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result.exit_code, result.stdout, result.output


@pytest.mark.parametrize("key", TARGETS)
@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_an_example_event_is_estimated_or_refused_clearly(estimator: str, key: str) -> None:
    code, stdout, output = _estimate(estimator, TARGETS[key], "--json")
    assert "Traceback" not in output
    if code == 0:
        result = json.loads(stdout)
        assert result["provenance"]["estimator"] == estimator and result["model_calls"] <= int(BUDGET)
        assert 0.0 <= result["value"] <= 1.0
        assert result["ci"]["low"] <= result["value"] <= result["ci"]["high"] <= 1.0
        if result["value"] == 0.0:
            assert result["ci"]["high"] > 0.0, "a zero estimate must carry its upper bound"
        return
    # a refusal: one line naming the estimator and the event as the CLI describes it
    _, _, shown = _estimate(estimator, TARGETS[key], "--dry-run")
    described = next(line.split(None, 1)[1] for line in shown.splitlines() if line.startswith("target"))
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, output
    assert estimator in errors[0] and described.split(" (")[0] in errors[0], (errors[0], described)
