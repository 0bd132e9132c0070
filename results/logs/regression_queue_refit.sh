#!/bin/bash
# Regression-fidelity work, part 4 (seeds 0-2, validation decides), from the worktree of part 3
# (commit 4662d0a). Seed 0 of parts 2-3 showed: trained regression heads stay stable but
# under-fit (validation Delta_m 68-87 after the warm-up); the evidence's heads predict well
# right after the warm-up (55 at epoch 4 against 70 for the fixed prior) but the fits on the
# epoch's train-mode features of a drifting encoder then fail (training losses 2-1469).
# Their other seeds were skipped (claims made by hand). Here the evidence with eval-mode refits
# before every evaluation (regression_fit=refit), with and without the per-step refresh.
# Seeds 1-2 of the refresh variant were skipped for time (claims made by hand): on seed 0 it
# tracked the plain refit variant epoch by epoch; the simpler one was carried on.
# Usage: regression_queue_refit.sh WORKER_NAME
WT=/work/wt/refresh
cd $WT
export PYTHONPATH=$WT/src OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
PY=/work/main/.venv/bin/python
CLAIMS=/work/wt/claims-refit; mkdir -p $CLAIMS
SEL=/work/main/results/qm9/quick/selection_references.json
R="nice -n 10 $PY -m bayesagg run --data-dir ../shared/data --no-progress --protocol quick --out results/ablation --method bayesagg"
jobs=()
for s in 0 1 2; do
  jobs+=("-b qm9 --seed $s --references $SEL --hp regression_prior=evidence --hp regression_fit=refit")
  jobs+=("-b qm9 --seed $s --references $SEL --hp regression_prior=evidence --hp regression_fit=refit --hp regression_refresh=1")
done
for j in "${jobs[@]}"; do
  key=$(echo "$j" | sed 's|--references [^ ]*||' | tr ' /=' '___')
  mkdir "$CLAIMS/$key" 2>/dev/null || continue
  echo "$(date -u +%H:%M:%S) $1 start $j"
  $R $j || echo "$(date -u +%H:%M:%S) $1 FAILED $j"
  echo "$(date -u +%H:%M:%S) $1 done $j"
done
