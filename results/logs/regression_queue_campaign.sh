#!/bin/bash
# Regression fidelity, last part: (1) the campaign's `bayesagg` rows re-run under the new
# default (evidence prior and noise, eval-mode refits) on QM9 and UTKFace quick, seeds 0-2,
# into results/; (2) the remaining candidates on QM9 quick seeds 0-2 (validation), into
# results/ablation/: resetting the encoder's Adam state when the warm-up ends and a warm-up
# of a third of the budget (8 of 24 epochs instead of the paper's sixth), both on top of the
# new default; the noise variance on its own (0.25 instead of 1) on top of the previous default.
# Worktree of commit 116a56e; /work/wt/shared links to the data. One thread per process, two
# workers (mkdir claims). Usage: regression_queue_campaign.sh WORKER_NAME
WT=/work/wt/campaign
cd $WT
export PYTHONPATH=$WT/src OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
PY=/work/main/.venv/bin/python
CLAIMS=/work/wt/claims-campaign; mkdir -p $CLAIMS
SEL=results/qm9/quick/selection_references.json
R="nice -n 10 $PY -m bayesagg run --data-dir ../shared/data --no-progress --protocol quick --method bayesagg"
OLD="--hp regression_prior=fixed --hp regression_fit=epoch --hp regression_bias=false"
jobs=()
for s in 0 1 2; do
  jobs+=("--out results -b qm9 --seed $s --references $SEL")
  jobs+=("--out results -b utkface --seed $s")
done
for s in 0 1 2; do
  jobs+=("--out results/ablation -b qm9 --seed $s --references $SEL --hp reset_encoder_optimizer=true")
  jobs+=("--out results/ablation -b qm9 --seed $s --references $SEL --hp warmup_epochs=8")
  jobs+=("--out results/ablation -b qm9 --seed $s --references $SEL $OLD --hp noise_var=0.25")
done
for j in "${jobs[@]}"; do
  key=$(echo "$j" | sed 's|--references [^ ]*||' | tr ' /=' '___')
  mkdir "$CLAIMS/$key" 2>/dev/null || continue
  echo "$(date -u +%H:%M:%S) $1 start $j"
  $R $j || echo "$(date -u +%H:%M:%S) $1 FAILED $j"
  echo "$(date -u +%H:%M:%S) $1 done $j"
done
