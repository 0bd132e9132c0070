#!/bin/bash
# Regression-fidelity work, part 5: UTKFace quick, seeds 0-2 (validation), BayesAgg-MTL with
# the evidence and eval-mode refits (regression_prior=evidence, regression_fit=refit), the
# family that led QM9's seed 0 (validation Delta_m 38-43 right after the warm-up). Worktree of
# part 3 (commit 4662d0a).
# Seeds 1-2 were started at 08:56 and stopped at 09:30 for time: seed 0 only.
# Usage: regression_queue_utkface.sh WORKER_NAME
WT=/work/wt/refresh
cd $WT
export PYTHONPATH=$WT/src OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
PY=/work/main/.venv/bin/python
CLAIMS=/work/wt/claims-utkface; mkdir -p $CLAIMS
R="nice -n 10 $PY -m bayesagg run --data-dir ../shared/data --no-progress --protocol quick --out results/ablation --method bayesagg"
jobs=()
for s in 0 1 2; do
  jobs+=("-b utkface --seed $s --hp regression_prior=evidence --hp regression_fit=refit")
done
for j in "${jobs[@]}"; do
  key=$(echo "$j" | tr ' /=' '___')
  mkdir "$CLAIMS/$key" 2>/dev/null || continue
  echo "$(date -u +%H:%M:%S) $1 start $j"
  $R $j || echo "$(date -u +%H:%M:%S) $1 FAILED $j"
  echo "$(date -u +%H:%M:%S) $1 done $j"
done
