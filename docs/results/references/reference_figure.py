"""The paper-regime page's reference figures (docs/results-paper-regime.md): every reference in the given files
against a brute-force truth — each method's pooled rounds (± 2 s.e.), the combined value of an accepted
reference (its 95 % interval), the diagonal — and a Markdown table of verdicts, agreement and coverage.

The truth of a token is its shipped ground truth (``--truth shipped``: the cross-check's tokens, ≥ 12 hits) or a
fresh count (``--truth brute-force/``: ``<folder>/<model>/<distribution>.json``), with its Clopper–Pearson
interval. Agreement and coverage: `lowprob.target_screening.against_brute_force`, the rule of
`lowprob reference cross-check`.

A target that only one method ran (rounds left from a longer run) is not a reference and is listed apart.

Usage: python docs/results/references/reference_figure.py FILES... --truth shipped|FOLDER --figure STEM
       [--max-calls 2^19]   (the cap the runs were judged at; default the procedure's 2^21)
"""

from __future__ import annotations

import argparse
import functools
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from lowprob.core.stats import clopper_pearson  # noqa: E402
from lowprob.figures import save_figure  # noqa: E402
from lowprob.ground_truth import GroundTruth, load_shipped  # noqa: E402
from lowprob.references import ReferenceRules, fresh_count, load_references  # noqa: E402
from lowprob.report import markdown_table  # noqa: E402
from lowprob.target_screening import against_brute_force  # noqa: E402

COLOURS = {"tsmc": "tab:blue", "itgis": "tab:orange"}


@functools.cache
def truth_of(model: str, distribution: str, source: str) -> GroundTruth:
    shipped = load_shipped(model, distribution)
    if source == "shipped":
        return shipped
    return fresh_count(Path(source) / model / f"{distribution}.json", shipped)


def count(text: str) -> int:
    """``2^19`` or ``524288``."""
    base, _, power = text.partition("^")
    return int(base) ** int(power) if power else int(base)


def g(x: float | None) -> str:
    return "–" if x is None else f"{x:.3g}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--truth", default="shipped")
    parser.add_argument("--figure", type=Path, required=True, help="output stem (writes .png and .svg)")
    parser.add_argument("--title", default="References against brute force")
    parser.add_argument("--max-calls", type=count, default=ReferenceRules().max_calls)
    args = parser.parse_args()
    rules = ReferenceRules(max_calls=args.max_calls)
    judged = [r for r in load_references(args.files, rules)
              if r.token is not None]
    refs = [r for r in judged if r.status != "single"]
    rows, agree, cover, accepted = [], 0, 0, 0
    figure, ax = plt.subplots(figsize=(6.4, 5.2))
    for i, ref in enumerate(refs):
        gt = truth_of(ref.model, ref.distribution, args.truth)
        token = ref.token
        assert token is not None
        hits, n = int(gt.counts[token]), gt.samples
        p = hits / n
        low, high = clopper_pearson(hits, n)
        ax.errorbar([p], [p], xerr=[[p - low], [high - p]], fmt="none", ecolor="0.7", lw=1)
        for j, run in enumerate(ref.runs):
            if run.value > 0 and run.std_error is not None:
                shift = 1 + 0.04 * (j - 0.5)
                ax.errorbar([p * shift], [run.value], yerr=[[min(2 * run.std_error, run.value * 0.999)],
                                                            [2 * run.std_error]],
                            fmt="o", ms=3, color=COLOURS.get(run.label or run.estimator, "tab:green"), alpha=0.7,
                            label=(run.label or run.estimator) if i == 0 else None)
        verdict = against_brute_force(ref, gt, rules.sigmas)
        agrees, covers = verdict if verdict is not None else (None, None)
        if verdict is not None and ref.value is not None and ref.ci is not None:
            accepted += 1
            agree += bool(agrees)
            cover += bool(covers)
            ax.errorbar([p], [ref.value], yerr=[[ref.value - ref.ci[0]], [ref.ci[1] - ref.value]], fmt="s",
                        ms=5, mfc="none", color="black",
                        label="accepted reference (95 % CI)" if accepted == 1 else None)
        runs = {r.label or r.estimator: r for r in ref.runs}
        rows.append([ref.distribution, f"#{token}", f"{g(p)} ({hits}/{n})"] + [
            f"{g(runs[m].value)} ± {100 * runs[m].std_error / runs[m].value:.0f} % ({runs[m].rounds} r, "
            f"{runs[m].calls:.3g} calls)" if m in runs and runs[m].std_error and runs[m].value > 0 else
            (f"no error bar ({runs[m].rounds} r)" if m in runs else "–") for m in ("tsmc", "itgis")] + [
            ref.status, g(ref.discrepancy), g(ref.value),
            "–" if agrees is None else ("yes" if agrees else "**no**"),
            "–" if covers is None else ("yes" if covers else "**no**")])
    lims = ax.get_xlim()[0], ax.get_xlim()[1]
    ax.plot(lims, lims, color="0.5", lw=0.8, ls="--")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("brute-force value (Clopper–Pearson 95 %)")
    ax.set_ylabel("pooled estimate (± 2 s.e.)")
    ax.set_title(f"{args.title}: {accepted}/{len(refs)} accepted, {agree}/{accepted} agree, {cover}/{accepted} "
                 "cover", fontsize=9)
    ax.legend(fontsize=8, loc="upper left")
    figure.tight_layout()
    for path in save_figure(figure, args.figure):
        print(f"wrote {path}")
    print(markdown_table(["distribution", "token", "brute force (hits/samples)", "tsmc", "itgis", "verdict",
                          "|a−b|/se", "reference", "agrees (3 s.e.)", "CI covers"], rows))
    print(f"\n{accepted}/{len(refs)} accepted; {agree}/{accepted} agree with brute force; {cover}/{accepted} "
          "intervals cover it")
    for ref in judged:
        if ref.status == "single":
            print(f"not a reference (one method's rounds only): {ref.distribution} {ref.target}")


if __name__ == "__main__":
    main()
