"""Extend ground-truth files in place, every ``<model>/<distribution>.json`` under a root (default: the shipped
ones in ``lowprob/data/ground_truth``), each with its own shard size, resumable like ``lowprob ground-truth run``.

    python scripts/grow_ground_truth.py --samples 2^24 --device cuda --precision fp16
    python scripts/grow_ground_truth.py --samples 2^22 --models lowprob-1l --distributions hex caps

Afterwards ``lowprob ground-truth list`` prints the table for docs/ground-truth.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import click

from lowprob.cli import main as lowprob_main
from lowprob.cli_params import parse_count
from lowprob.ground_truth import GroundTruth, shipped_pairs, shipped_root


def grow(root: Path, samples: int, models: list[str] | None, distributions: list[str] | None,
         extra: list[str]) -> int:
    """Run ``lowprob ground-truth run`` for every selected file below ``samples``; the number of files grown."""
    grown = 0
    for model, distribution in shipped_pairs(root):
        if (models and model not in models) or (distributions and distribution not in distributions):
            continue
        path = root / model / f"{distribution}.json"
        current = GroundTruth.load(path)
        if current.samples >= samples:
            print(f"{model}/{distribution}: already {current.samples} samples")
            continue
        wanted = -(-samples // current.shard_size) * current.shard_size  # whole shards
        print(f"{model}/{distribution}: {current.samples} -> {wanted} samples", flush=True)
        lowprob_main(["ground-truth", "run", distribution, "--model", model, "--samples", str(wanted),
                      "--shard-size", str(current.shard_size), "--output", str(path), *extra],
                     standalone_mode=False)
        grown += 1
    return grown


def _count(value: str) -> int:
    """``--samples`` as ``lowprob ground-truth run`` reads it (an integer or 2^k), refused by argparse if bad."""
    try:
        n = parse_count(value)
    except click.BadParameter as exc:
        raise argparse.ArgumentTypeError(exc.message) from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"{value!r}: must be at least 1")
    return n


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", required=True, type=_count, help="target samples per file, an integer or 2^k")
    parser.add_argument("--root", type=Path, default=None, help="folder of <model>/<distribution>.json files")
    parser.add_argument("--models", nargs="*", default=None)
    parser.add_argument("--distributions", nargs="*", default=None)
    parser.add_argument("--device", default=None)
    parser.add_argument("--precision", default="fp32")
    args = parser.parse_args(argv)
    extra = ["--precision", args.precision] + (["--device", args.device] if args.device else [])
    grown = grow(args.root or shipped_root(), args.samples, args.models, args.distributions, extra)
    print(f"{grown} files grown")
    return 0


if __name__ == "__main__":
    sys.exit(main())
