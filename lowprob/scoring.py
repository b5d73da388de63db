"""Scoring a reproduction from its typed rows: per (model, distribution, method) the losses of the test
estimates, the tuning score of each temperature, and the temperature tuning chooses (docs/protocol.md)."""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from lowprob.protocol import Scores, TuningScore, best_temperature, score, tuning_score
from lowprob.results import ResultRow

if TYPE_CHECKING:
    from lowprob.reproduce import MethodPlan, PairPlan, Reproduction


@dataclass
class Cell:
    """One method on one (model, distribution) in the report."""

    planned: int
    scores: Scores | None = None
    errors: int = 0
    unsupported: str | None = None
    temperature: float | None = None
    tuning: dict[float, TuningScore] = field(default_factory=dict)
    seconds: float | None = None
    truth: list[float] = field(default_factory=list)
    estimates: list[float] = field(default_factory=list)


def tuning_scores(repro: Reproduction, pair: PairPlan, method: MethodPlan,
                  rows: Mapping[str, ResultRow]) -> dict[float, TuningScore]:
    """The tuning score of each temperature from the method's tuning rows among ``rows`` (by key); a tuning
    run that is missing or ended in an error counts as a failure."""
    scores = {}
    jobs = [j for j in repro.jobs(pair) if j.spec.label == method.label and j.spec.phase == "tune"]
    for temp in repro.temperatures:
        mine = [j for j in jobs if j.spec.temperature == temp]
        ok = [(j.spec.token, row.estimate.value) for j in mine
              if (row := rows.get(j.key)) is not None and row.estimate is not None and j.spec.token is not None]
        scores[temp] = tuning_score([pair.p(t) for t, _ in ok], [v for _, v in ok], len(mine))
    return scores


def chosen_temperature(repro: Reproduction, pair: PairPlan, method: MethodPlan,
                       rows: Mapping[str, ResultRow]) -> float:
    """The grid's only value, or the one with the best tuning score."""
    if len(repro.temperatures) == 1:
        return repro.temperatures[0]
    return best_temperature(tuning_scores(repro, pair, method, rows))


def score_cells(repro: Reproduction, rows: Mapping[str, ResultRow]) -> dict[tuple[str, str, str], Cell]:
    """Score every (model, distribution, method) of the plan from its rows among ``rows`` (stale rows of an
    earlier plan have other keys and are ignored)."""
    cells = {}
    for pair in repro.pairs:
        jobs = repro.jobs(pair)
        for method in pair.methods:
            cell = Cell(planned=len(pair.selection.test))
            marker = rows.get(repro.marker(pair, method).digest())
            if marker is not None:
                cell.unsupported = marker.error
            mine = [j for j in jobs if j.spec.label == method.label]
            test = [row for j in mine if j.spec.phase == "test" and (row := rows.get(j.key)) is not None]
            ok = [(row.token, row.estimate) for row in test if row.estimate is not None and row.token is not None]
            cell.errors = len(test) - len(ok)
            if method.tuned and any(j.key in rows for j in mine if j.spec.phase == "tune"):
                cell.tuning = tuning_scores(repro, pair, method, rows)
            if ok:
                cell.temperature = test[0].temperature
                cell.truth = [pair.p(token) for token, _ in ok]
                cell.estimates = [estimate.value for _, estimate in ok]
                cell.scores = score(cell.truth, cell.estimates)
                cell.seconds = statistics.fmean(estimate.seconds for _, estimate in ok)
            cells[(pair.model, pair.distribution, method.label)] = cell
    return cells
