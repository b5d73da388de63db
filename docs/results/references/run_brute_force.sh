#!/bin/bash
# Fresh brute-force counts for the development split of lowprob-1l, disjoint from the shipped ground truth (whose
# first 2^20 samples chose the test tokens): shard seeds from 2^20 on, so the counts of the chosen tokens carry no
# selection bias. Resumable: rerunning continues at the next shard. Usage: run_brute_force.sh [SAMPLES [DISTS...]]
n=${1:-2^23}; shift; dists=${*:-hex camel colon if}
cd "$(dirname "$0")/../../.."  # the repository root
for d in $dists; do
  echo "== $d $n $(date -u +%T)"
  .venv/bin/lowprob ground-truth run "$d" --model lowprob-1l --samples "$n" --first-seed 1048576 \
    --executor processes --workers ${WORKERS:-2} --progress --output "docs/results/references/brute-force/lowprob-1l/$d.json"
done
echo "== done $(date -u +%T)"
