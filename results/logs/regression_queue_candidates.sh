#!/bin/bash
# Regression-fidelity work, part 2: BayesAgg-MTL's regression candidates on seeds 0-2
# (validation decides), from a worktree at commit af2a7f4 (regression_prior, regression_heads;
# the library default regression_bias=True, as the derived recipes now run it).
# Shared job queue as in regression_queue_base.sh (atomic mkdir claims; runs resume).
#   QM9 quick:     regression_prior=evidence | regression_heads=trained | both
#   UTKFace quick: regression_prior=evidence | both
# Usage: regression_queue_candidates.sh WORKER_NAME
WT=/work/wt/evidence
cd $WT
export PYTHONPATH=$WT/src OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
PY=/work/main/.venv/bin/python
CLAIMS=/work/wt/claims-candidates; mkdir -p $CLAIMS
SEL=/work/main/results/qm9/quick/selection_references.json
R="nice -n 10 $PY -m bayesagg run --data-dir ../shared/data --no-progress --protocol quick --out results/ablation --method bayesagg"
jobs=()
for s in 0 1 2; do
  jobs+=("-b qm9 --seed $s --references $SEL --hp regression_prior=evidence")
  jobs+=("-b qm9 --seed $s --references $SEL --hp regression_heads=trained")
  jobs+=("-b qm9 --seed $s --references $SEL --hp regression_prior=evidence --hp regression_heads=trained")
done
for s in 0 1 2; do
  jobs+=("-b utkface --seed $s --hp regression_prior=evidence")
  jobs+=("-b utkface --seed $s --hp regression_prior=evidence --hp regression_heads=trained")
done
for j in "${jobs[@]}"; do
  key=$(echo "$j" | sed 's|--references [^ ]*||' | tr ' /=' '___')
  mkdir "$CLAIMS/$key" 2>/dev/null || continue
  echo "$(date -u +%H:%M:%S) $1 start $j"
  $R $j || echo "$(date -u +%H:%M:%S) $1 FAILED $j"
  echo "$(date -u +%H:%M:%S) $1 done $j"
done
