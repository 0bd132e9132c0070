#!/bin/bash
# Missing labels: QM9 and UTKFace `quick` with 30 % of the training labels kept
# (`--data-option label_fraction=0.3`), seeds 0-2, made from a worktree of the commit this script
# names (so edits in progress never reach a running job). Shared job queue: every worker claims
# the next job with an atomic mkdir. Restart: rm -rf $CLAIMS and run again (finished runs are
# reused, interrupted ones resume from checkpoint.pt).
# Usage: labels_queue.sh WORKER_NAME   (two workers, one thread each)
# (The first two jobs ran under an earlier order of this list that interleaved the benchmarks.)
WT=/work/wt/labels   # git worktree at 9304168 (label_fraction on QM9 and UTKFace)
ROOT=$(cd "$(dirname "$0")/../.." && pwd)  # the repository holding this script
cd $WT
export PYTHONPATH=$WT/src OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
PY=/work/main/.venv/bin/python
CLAIMS=/work/wt/claims-labels; mkdir -p $CLAIMS
OUT=$ROOT/results
SEL=$OUT/qm9/quick/selection_references.json
R="nice -n 10 $PY -m bayesagg run --data-dir ../shared/data --no-progress --protocol quick --data-option label_fraction=0.3 --out $OUT"
# UTKFace first (cheaper, so one benchmark completes early), then QM9.
jobs=()
for s in 0 1 2; do
  for m in ls uw famo imtl-g-ub nash-mtl-ub; do jobs+=("-b utkface --method $m --seed $s"); done
done
for s in 0 1 2; do jobs+=("-b utkface --method stl --seed $s"); done
for s in 0 1 2; do
  for m in ls uw famo imtl-g-ub nash-mtl-ub; do jobs+=("-b qm9 --method $m --seed $s --references $SEL"); done
done
for s in 0 1 2; do
  for t in mu alpha homo lumo r2 zpve u0_atom u_atom h_atom g_atom cv; do
    jobs+=("-b qm9 --method stl --task $t --seed $s")
  done
done
for j in "${jobs[@]}"; do
  key=$(echo "$j" | cut -d' ' -f1-8 | tr ' /=' '___')
  mkdir "$CLAIMS/$key" 2>/dev/null || continue
  echo "$(date -u +%H:%M:%S) $1 start $j"
  $R $j || echo "$(date -u +%H:%M:%S) $1 FAILED $j"
  echo "$(date -u +%H:%M:%S) $1 done $j"
done
