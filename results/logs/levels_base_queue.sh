#!/bin/bash
# The other side of the held-out check of the coarser qmc levels (levels_queue.sh): the same
# runs with the earlier levels, from a worktree of ab66737 (the commit before the change), on
# the same machine, so that the pair differs in QMC_LEVELS alone.
# Usage: levels_base_queue.sh WORKER_NAME   (two workers, one thread each)
WT=/work/wt/base
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd $WT
export PYTHONPATH=$WT/src OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
PY=$ROOT/.venv/bin/python
CLAIMS=/work/wt/claims-levels-base; mkdir -p $CLAIMS
OUT=/work/tmp/base_runs
BASE="nice -n 10 $PY -m bayesagg run --data-dir $ROOT/../shared/data --no-progress --protocol quick --out $OUT"
REF="--references $ROOT/results/multimnist/quick/references.json"
jobs=()
for s in 3 4; do jobs+=("-b utkface --method bayesagg --seed $s"); done
for s in 3 4 5 0 1 2; do jobs+=("$REF -b multimnist --method bayesagg --seed $s"); done
jobs+=("-b utkface --method bayesagg --seed 5")
for j in "${jobs[@]}"; do
  key=$(echo "${j#$REF }" | tr ' /=' '___')
  mkdir "$CLAIMS/$key" 2>/dev/null || continue
  echo "$(date -u +%H:%M:%S) $1 start $j"
  $BASE $j || echo "$(date -u +%H:%M:%S) $1 FAILED $j"
  echo "$(date -u +%H:%M:%S) $1 done $j"
done
