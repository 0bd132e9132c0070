#!/bin/bash
# The Kronecker-factored multiclass posterior in training: BayesAgg-MTL with
# multiclass_posterior=kron on MultiMNIST and UTKFace quick, seeds 0-2 (validation) and 3-5
# (test), and the dense default's MultiMNIST seeds 3-5 for the paired test comparison
# (UTKFace's dense seeds 3-5 are in results/ablation/utkface/quick/
# bayesagg_regression_fit=refit_regression_prior=evidence, the same settings as today's default).
# Worktree of commit 532b500; /work/wt/shared links to the data. One thread per process, two
# workers (mkdir claims). Usage: kron_queue.sh WORKER_NAME
WT=/work/wt/kron
cd $WT
export PYTHONPATH=$WT/src OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
PY=/work/main/.venv/bin/python
CLAIMS=/work/wt/claims-kron; mkdir -p $CLAIMS
C="nice -n 10 $PY -m bayesagg compare --protocol quick --methods bayesagg --out results --data-dir ../shared/data --no-progress"
jobs=()
for s in 0 1 2 3 4 5; do jobs+=("-b multimnist --hp multiclass_posterior=kron --seeds $s"); done
for s in 3 4 5; do jobs+=("-b multimnist --seeds $s"); done
for s in 0 1 2 3 4 5; do jobs+=("-b utkface --hp multiclass_posterior=kron --seeds $s"); done
for j in "${jobs[@]}"; do
  key=$(echo "$j" | tr ' /=' '___')
  mkdir "$CLAIMS/$key" 2>/dev/null || continue
  echo "$(date -u +%H:%M:%S) $1 start $j"
  $C $j || echo "$(date -u +%H:%M:%S) $1 FAILED $j"
  echo "$(date -u +%H:%M:%S) $1 done $j"
done
