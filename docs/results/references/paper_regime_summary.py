"""The paper-regime page's per-method table (docs/results-paper-regime.md): for every method, over the test rows
of a `lowprob reproduce` results file, the mean |log10(p̂/p)| of the non-zero estimates, the zero estimates, how
often the 95 % interval holds the truth (with its Clopper–Pearson interval), and the seconds per estimate;
then every test estimate, target by target (a zero shows its 95 % upper bound).

Usage: python docs/results/references/paper_regime_summary.py RESULTS.jsonl [DISTRIBUTION...]
"""

from __future__ import annotations

import math
import statistics
import sys
from collections import defaultdict

from lowprob.core.stats import clopper_pearson
from lowprob.report import markdown_table
from lowprob.results import ResultRow, read_results


def tested(rows: list[ResultRow]) -> list[ResultRow]:
    """The test rows that have an estimate and a truth."""
    return [r for r in rows if r.phase == "test" and r.estimate is not None and r.protocol and r.protocol.p_true]


def summarise(rows: list[ResultRow]) -> str:
    """One Markdown line per method, in the results file's order."""
    by_method: dict[str, list[ResultRow]] = defaultdict(list)
    for row in tested(rows):
        by_method[row.label].append(row)
    lines = []
    for label, group in by_method.items():
        errors = [abs(math.log10(r.estimate.value / r.protocol.p_true)) for r in group if r.estimate.value > 0]
        with_ci = [r for r in group if r.estimate.ci is not None]
        held = sum(r.estimate.ci.low <= r.protocol.p_true <= r.estimate.ci.high for r in with_ci)
        low, high = clopper_pearson(held, len(with_ci)) if with_ci else (math.nan, math.nan)
        lines.append([label, str(len(group)), f"{statistics.fmean(errors):.2f}" if errors else "–",
                      f"{len(group) - len(errors)}/{len(group)}",
                      f"{held}/{len(with_ci)} [{low:.2f}, {high:.2f}]" if with_ci else "no intervals",
                      f"{statistics.fmean(r.estimate.seconds for r in group):.0f}"])
    return markdown_table(["method", "estimates", "mean abs log10 error (non-zero)", "zeros",
                           "95 % CI holds p (CP 95 %)", "s / estimate"], lines)


def estimates(rows: list[ResultRow]) -> str:
    """One Markdown line per (distribution, token): the truth, then each method's estimate."""
    methods = list(dict.fromkeys(r.label for r in tested(rows)))
    cells: dict[tuple[str, int], dict[str, str]] = defaultdict(dict)
    truth: dict[tuple[str, int], float] = {}
    for r in tested(rows):
        where = (r.distribution, r.protocol.token)
        truth[where] = r.protocol.p_true
        e = r.estimate
        cells[where][r.label] = f"{e.value:.1e}" if e.value > 0 else f"0 (<{e.ci.high:.0e})" if e.ci else "0"
    return markdown_table(["target", "truth"] + methods, [
        [f"{d} #{t}", f"{truth[d, t]:.2e}"] + [cells[d, t].get(m, "–") for m in methods] for d, t in cells])


if __name__ == "__main__":
    chosen = [r for r in read_results(sys.argv[1]) if len(sys.argv) < 3 or r.distribution in sys.argv[2:]]
    print(summarise(chosen))
    print()
    print(estimates(chosen))
