#!/bin/bash
# Held-out check of the coarser "qmc" node-count levels (src/bayesagg/moments.py QMC_LEVELS
# ((0.8, 1), (1.6, 4), (inf, 16)) instead of ((0.4, 1), (0.8, 2), (1.6, 4), (inf, 16))): the
# library's default BayesAgg-MTL on MultiMNIST quick (seeds 0-5) and UTKFace quick (seeds 3-5
# first, then 0-2), run from a worktree of ab66737 with only QMC_LEVELS changed.
# Usage: levels_queue.sh WORKER_NAME   (two workers, one thread each)
WT=/work/wt/levels
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd $WT
export PYTHONPATH=$WT/src OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
PY=$ROOT/.venv/bin/python
CLAIMS=/work/wt/claims-levels; mkdir -p $CLAIMS
OUT=/work/tmp/levels_runs
BASE="nice -n 10 $PY -m bayesagg run --data-dir $ROOT/../shared/data --no-progress --protocol quick --out $OUT"
jobs=()
for s in 3 4 5; do jobs+=("-b utkface --method bayesagg --seed $s"); done
for s in 3 4 5 0 1 2; do jobs+=("-b multimnist --method bayesagg --seed $s"); done
for s in 0 1 2; do jobs+=("-b utkface --method bayesagg --seed $s"); done
for j in "${jobs[@]}"; do
  key=$(echo "$j" | tr ' /=' '___')
  mkdir "$CLAIMS/$key" 2>/dev/null || continue
  echo "$(date -u +%H:%M:%S) $1 start $j"
  $BASE $j || echo "$(date -u +%H:%M:%S) $1 FAILED $j"
  echo "$(date -u +%H:%M:%S) $1 done $j"
done
# The MultiMNIST runs above wrote no Delta_m (their --out holds no STL references); they were run
# again with the campaign's own references, into the folder kept in results/ablation:
#   for s in 3 4 5 0 1 2; do (cd /work/wt/levels && PYTHONPATH=$PWD/src OMP_NUM_THREADS=1 nice -n 10 \
#     /work/main/.venv/bin/python -m bayesagg run --data-dir /work/shared/data --no-progress --protocol quick \
#     --out /work/tmp/levels_mm --references /work/main/results/multimnist/quick/references.json \
#     -b multimnist --method bayesagg --seed $s); done
