#!/bin/bash
# Held-out seeds of the missing-label comparison: LS and BayesAgg-MTL at label_fraction 0.3 on
# QM9 and UTKFace `quick`, seeds 3-5 (the campaign's tables are seeds 0-2), for the paired
# difference on seeds nobody looked at. Two workers share one job list through claims.
# Usage: labels_heldout_queue.sh WORKER_NAME
WT=/work/wt/heldout   # git worktree at 62dba5b (library code as landed)
ROOT=$(cd "$(dirname "$0")/../.." && pwd)  # the repository holding this script
cd $WT
export PYTHONPATH=$WT/src OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
PY=$ROOT/.venv/bin/python
CLAIMS=/work/wt/claims-heldout; mkdir -p $CLAIMS
OUT=$ROOT/results
SEL=results/qm9/quick/selection_references.json
BASE="nice -n 10 $PY -m bayesagg run --data-dir ../shared/data --no-progress --protocol quick --out results"
LF="--data-option label_fraction=0.3"
jobs=()
for s in 3 4 5; do
  for m in bayesagg ls; do jobs+=("$LF -b qm9 --method $m --seed $s --references $SEL"); done
done
for s in 3 4 5; do
  for m in bayesagg ls; do jobs+=("$LF -b utkface --method $m --seed $s"); done
done
for j in "${jobs[@]}"; do
  key=$(echo "$j" | tr ' /=' '___')
  mkdir "$CLAIMS/$key" 2>/dev/null || continue
  echo "$(date -u +%H:%M:%S) $1 start $j"
  (cd $ROOT && $BASE $j) || echo "$(date -u +%H:%M:%S) $1 FAILED $j"
  echo "$(date -u +%H:%M:%S) $1 done $j"
done
