#!/bin/bash
# Issue 9 campaign, QM9 quick: a shared job queue; every worker claims the next job with an
# atomic mkdir, so two workers never train the same run. Restart: rm -rf $CLAIMS and run again
# (finished runs are reused, interrupted ones resume from checkpoint.pt).
# Usage: q9.sh WORKER_NAME [WAIT_FOR_PATTERN]
cd /work/wt/campaign-utk
export PYTHONPATH=/work/wt/campaign-utk/src OMP_NUM_THREADS=1
PY=/work/main/.venv/bin/python
CLAIMS=/work/wt/q9claims; mkdir -p $CLAIMS
if [ -n "$2" ]; then while pgrep -f "$2" > /dev/null; do sleep 30; done; fi
R="nice -n 10 $PY -m bayesagg run -b qm9 --protocol quick --out /work/main/results --data-dir /work/shared/data --no-progress"
jobs=()
for s in 0 1 2; do
  for t in mu alpha homo lumo r2 zpve u0_atom u_atom h_atom g_atom cv; do jobs+=("--method stl --task $t --seed $s"); done
  for m in ls bayesagg bayesagg-paper si uw famo imtl-g-ub nash-mtl-ub; do jobs+=("--method $m --seed $s"); done
done
for j in "${jobs[@]}"; do
  key=$(echo "$j" | tr ' ' '_')
  mkdir "$CLAIMS/$key" 2>/dev/null || continue
  echo "$(date -u +%H:%M:%S) $1 start $j"
  $R $j || echo "$(date -u +%H:%M:%S) $1 FAILED $j"
  echo "$(date -u +%H:%M:%S) $1 done $j"
done
