#!/bin/bash
# The brute-force cross-check of the reference procedure (issue 15): on each distribution of the development
# split, the first N_TOKENS tokens (a seeded permutation) with >= 12 hits in the shipped ground truth and a value
# in [1e-5, 1e-4), the nearest such tokens to the test band. One method per process, as run_refs.sh; resumable.
# Usage: run_cross_check.sh METHOD [N_TOKENS [ROUND_CALLS [MAX_CALLS]]]   (itgis: ROUND_CALLS 2^17, past its
# warm-up; MAX_CALLS 2^19 on this 2-core CPU, where tsmc's 2^21 default would take ~40 min per token on camel)
m=$1; n=${2:-4}; rc=${3:-2^16}; mc=${4:-2^21}
cd "$(dirname "$0")/../../.."  # the repository root
mkdir -p docs/results/references/cross-check/lowprob-1l
for d in hex camel colon if; do
  echo "== $d $m $(date -u +%T)"
  .venv/bin/lowprob reference cross-check lowprob-1l $d --tokens $n --band 1e-5 1e-4 --method $m \
    --round-calls $rc --max-calls $mc --progress --output docs/results/references/cross-check/lowprob-1l/$d-$m.jsonl
done
echo "== done $(date -u +%T)"
