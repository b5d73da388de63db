#!/bin/bash
# References for the chosen test tokens of the development split, one method per process (issue 15, helper F).
# Resumable: rerunning continues every method at its next round.
# Usage: run_refs.sh METHOD [N_TOKENS [ROUND_CALLS]]   (itgis: ROUND_CALLS 2^18, so a round outlasts its warm-up)
m=$1; n=${2:-4}; rc=${3:-2^16}
cd "$(dirname "$0")/../../.."  # the repository root
for d in hex camel colon if; do
  toks=$(.venv/bin/python -c "import json; print(' '.join('--token %d' % t for t in json.load(open('docs/results/references/screen/lowprob-1l/$d.json'))['chosen'][:$n]))")
  echo "== $d $m $toks $(date -u +%T)"
  .venv/bin/lowprob reference run lowprob-1l $d $toks --method $m --round-calls $rc --progress \
    --output lowprob/data/references/lowprob-1l/$d-$m.jsonl
done
echo "== done $(date -u +%T)"
