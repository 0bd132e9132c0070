#!/bin/bash
# Regression-fidelity work, part 1: the runs that need no new code, made from a worktree of the
# commit this script names (so edits in progress never reach a running job). Shared job queue:
# every worker claims the next job with an atomic mkdir. Restart: rm -rf $CLAIMS and run again
# (finished runs are reused, interrupted ones resume from checkpoint.pt).
#   - LS on the held-out seeds 3-5 of QM9 and UTKFace `quick` (test Delta_m of the decision);
#   - QM9 `quick`, seeds 0-2 (validation): BayesAgg-MTL with the encoder's Adam state reset when
#     the warm-up ends, and with the noise variance alone lowered to 0.25.
# The two BayesAgg-MTL ablations were skipped for time in the end (claims made by hand, mkdir in
# $CLAIMS): first seeds 1-2, then seed 0, so that the held-out check of part 6 could finish.
# Usage: regression_queue_base.sh WORKER_NAME
WT=/work/wt/base   # git worktree at 8684398 (the commit before this script)
cd $WT
export PYTHONPATH=$WT/src OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
PY=/work/main/.venv/bin/python
CLAIMS=/work/wt/claims-base; mkdir -p $CLAIMS
SEL=/work/main/results/qm9/quick/selection_references.json
R="nice -n 10 $PY -m bayesagg run --data-dir ../shared/data --no-progress --protocol quick"
jobs=()
for s in 3 4 5; do
  jobs+=("-b qm9 --method ls --seed $s --references $SEL --out results")
  jobs+=("-b utkface --method ls --seed $s --out results")
done
for s in 0 1 2; do
  jobs+=("-b qm9 --method bayesagg --hp reset_encoder_optimizer=true --seed $s --references $SEL --out results/ablation")
  jobs+=("-b qm9 --method bayesagg --hp noise_var=0.25 --seed $s --references $SEL --out results/ablation")
done
for j in "${jobs[@]}"; do
  key=$(echo "$j" | cut -d' ' -f1-8 | tr ' /=' '___')
  mkdir "$CLAIMS/$key" 2>/dev/null || continue
  echo "$(date -u +%H:%M:%S) $1 start $j"
  $R $j || echo "$(date -u +%H:%M:%S) $1 FAILED $j"
  echo "$(date -u +%H:%M:%S) $1 done $j"
done
