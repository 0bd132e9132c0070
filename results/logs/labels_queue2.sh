#!/bin/bash
# The rest of the missing-label campaign (results/logs/labels_queue.sh) with BayesAgg-MTL, which
# takes missing labels since this commit, and first the runs of the new multiclass default
# (multiclass_posterior="auto": factored posteriors for 3+ classes) on MultiMNIST and UTKFace
# quick, whose earlier dense runs are kept as bayesagg-dense. Same shared claims as
# labels_queue.sh, so a job either queue started is not run twice.
# Usage: labels_queue2.sh WORKER_NAME   (two workers, one thread each)
WT=/work/wt/labels2   # git worktree at c7216d6 (from 17:50 UTC; before, 4234f8a, whose training diagnostics refused missing labels)
ROOT=$(cd "$(dirname "$0")/../.." && pwd)  # the repository holding this script
cd $WT
export PYTHONPATH=$WT/src OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
PY=/work/main/.venv/bin/python
CLAIMS=/work/wt/claims-labels; mkdir -p $CLAIMS
OUT=$ROOT/results
SEL=$OUT/qm9/quick/selection_references.json
BASE="nice -n 10 $PY -m bayesagg run --data-dir ../shared/data --no-progress --protocol quick --out $OUT"
LF="--data-option label_fraction=0.3"
jobs=()
for s in 0 1 2 3 4 5; do jobs+=("-b multimnist --method bayesagg --seed $s"); done
for s in 0 1 2; do jobs+=("-b utkface --method bayesagg --seed $s"); done
for s in 0 1 2; do jobs+=("$LF -b utkface --method bayesagg --seed $s"); done
for s in 0 1 2; do
  for m in ls uw famo imtl-g-ub nash-mtl-ub; do jobs+=("$LF -b utkface --method $m --seed $s"); done
done
for s in 0 1 2; do jobs+=("$LF -b utkface --method stl --seed $s"); done
for s in 0 1 2; do jobs+=("$LF -b qm9 --method bayesagg --seed $s --references $SEL"); done
for s in 0 1 2; do
  for m in ls uw famo imtl-g-ub nash-mtl-ub; do jobs+=("$LF -b qm9 --method $m --seed $s --references $SEL"); done
done
for s in 0 1 2; do
  for t in mu alpha homo lumo r2 zpve u0_atom u_atom h_atom g_atom cv; do
    jobs+=("$LF -b qm9 --method stl --task $t --seed $s")
  done
done
for j in "${jobs[@]}"; do
  # the same claim names as labels_queue.sh for its jobs (the option stripped)
  key=$(echo "${j#$LF }" | cut -d' ' -f1-8 | tr ' /=' '___')
  case "$j" in "$LF"*) ;; *) key="full_$key" ;; esac
  mkdir "$CLAIMS/$key" 2>/dev/null || continue
  echo "$(date -u +%H:%M:%S) $1 start $j"
  $BASE $j || echo "$(date -u +%H:%M:%S) $1 FAILED $j"
  echo "$(date -u +%H:%M:%S) $1 done $j"
done
