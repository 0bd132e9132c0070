#!/bin/bash
# The comparison campaign, QM9 quick: a shared job queue; every worker claims the next job with an
# atomic mkdir, so two workers never train the same run. Restart: rm -rf $CLAIMS and run again
# (finished runs are reused, interrupted ones resume from checkpoint.pt).
# Model selection of the multi-task runs: validation Delta_m against this project's STL models
# of seed 0 (selection_references.json, written once the 11 seed-0 STL models exist), not the
# published full-data values, which at this budget are 3-220x below the errors reached (r2:
# 111 vs 0.50) and would make the criterion almost r2's error alone.
# Usage: q9b.sh WORKER_NAME [PID_TO_WAIT_FOR]
cd /work/wt/campaign-utk
export PYTHONPATH=/work/wt/campaign-utk/src OMP_NUM_THREADS=1
PY=/work/main/.venv/bin/python
CLAIMS=/work/wt/q9claims; mkdir -p $CLAIMS
Q=/work/main/results/qm9/quick
SEL=$Q/selection_references.json
TASKS="mu alpha homo lumo r2 zpve u0_atom u_atom h_atom g_atom cv"
if [ -n "$2" ]; then while kill -0 "$2" 2>/dev/null; do sleep 15; done; fi
R="nice -n 10 $PY -m bayesagg run -b qm9 --protocol quick --out results --data-dir ../shared/data --no-progress"
jobs=()
for s in 0 1 2; do
  for t in $TASKS; do jobs+=("--method stl --task $t --seed $s"); done
  if [ $s = 0 ]; then jobs+=("REFS"); fi
  for m in ls bayesagg bayesagg-paper si uw famo imtl-g-ub nash-mtl-ub; do jobs+=("--method $m --seed $s"); done
done
for j in "${jobs[@]}"; do
  key=$(echo "$j" | tr ' ' '_')
  mkdir "$CLAIMS/$key" 2>/dev/null || continue
  if [ "$j" = REFS ]; then
    for t in $TASKS; do while [ ! -f "$Q/stl/seed0/$t/result.json" ]; do sleep 20; done; done
    if [ ! -f "$SEL" ]; then cp "$Q/references.json" "$SEL.tmp" && mv "$SEL.tmp" "$SEL"; fi
    echo "$(date -u +%H:%M:%S) $1 wrote $SEL"; continue
  fi
  case "$j" in *stl*) extra="";; *) extra="--references $SEL"; while [ ! -f "$SEL" ]; do sleep 20; done;; esac
  echo "$(date -u +%H:%M:%S) $1 start $j $extra"
  $R $j $extra || echo "$(date -u +%H:%M:%S) $1 FAILED $j"
  echo "$(date -u +%H:%M:%S) $1 done $j"
done
