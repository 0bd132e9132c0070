#!/bin/bash
# Regression-fidelity work, part 6: the held-out seeds 3-5 (test Delta_m decides nothing about
# the choice; it checks it) of QM9 and UTKFace quick for the evidence with eval-mode refits
# (regression_prior=evidence, regression_fit=refit), started while seeds 1-2 of the validation
# comparison were still running, so that the check fits in the session; no number from these
# runs was looked at before the choice was made on seeds 0-2. Worktree of part 3 (4662d0a).
# Seeds 4-5 (both benchmarks) were started at 09:07 by four more workers and stopped at 09:30
# for time (the machine ran 15 processes; seed 3 and the validation runs were let finish), then
# resumed from their checkpoints at 09:47 once the machine had room (claims removed by hand).
# Usage: regression_queue_heldout.sh WORKER_NAME
WT=/work/wt/refresh
cd $WT
export PYTHONPATH=$WT/src OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
PY=/work/main/.venv/bin/python
CLAIMS=/work/wt/claims-heldout; mkdir -p $CLAIMS
SEL=/work/main/results/qm9/quick/selection_references.json
R="nice -n 10 $PY -m bayesagg run --data-dir ../shared/data --no-progress --protocol quick --out results/ablation --method bayesagg --hp regression_prior=evidence --hp regression_fit=refit"
jobs=()
for s in 3 4 5; do
  jobs+=("-b qm9 --seed $s --references $SEL")
  jobs+=("-b utkface --seed $s")
done
for j in "${jobs[@]}"; do
  key=$(echo "$j" | sed 's|--references [^ ]*||' | tr ' /=' '___')
  mkdir "$CLAIMS/$key" 2>/dev/null || continue
  echo "$(date -u +%H:%M:%S) $1 start $j"
  $R $j || echo "$(date -u +%H:%M:%S) $1 FAILED $j"
  echo "$(date -u +%H:%M:%S) $1 done $j"
done
