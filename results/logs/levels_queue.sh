#!/bin/bash
# Held-out check of the coarser "qmc" node-count levels (results/kron/README.md): BayesAgg-MTL's
# defaults on MultiMNIST quick (seeds 3-5, then 0-2) and UTKFace quick (seeds 3-5), with
#   coarser: QMC_LEVELS = ((0.8, 1), (1.6, 4), (inf, 16)), the change (f1b3a2f's src);
#   earlier: ((0.4, 1), (0.8, 2), (1.6, 4), (inf, 16)), the commit before it (ab66737),
# each from a git worktree beside this repository, one thread per process, all paths relative
# to the repository root; the runs land in results/kron/levels/<benchmark>/<side>/seed<N>.
# Usage (from the repository root): bash results/logs/levels_queue.sh SIDE WORKER_NAME
#   (two workers per side share the jobs through claim folders under runs/).
# The committed runs were made by an earlier form of this script that wrote to scratch folders
# outside the repository and were then copied in (so their result.json commands carry that
# machine's paths); the MultiMNIST runs pass the campaign's own STL references for Delta_m.
set -u
SIDE=$1
case "$SIDE" in coarser) REV=f1b3a2f ;; earlier) REV=ab66737 ;; *) echo "SIDE: coarser or earlier"; exit 2 ;; esac
WT=../wt-levels-$SIDE
[ -d "$WT" ] || git worktree add -q "$WT" "$REV"
export PYTHONPATH=$WT/src OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
CLAIMS=runs/levels-claims-$SIDE; mkdir -p "$CLAIMS"
OUT=runs/levels-$SIDE
BASE="nice -n 10 .venv/bin/python -m bayesagg run --data-dir ../shared/data --no-progress --protocol quick --out $OUT"
REF="--references results/multimnist/quick/references.json"
jobs=()
for s in 3 4 5; do jobs+=("-b utkface --method bayesagg --seed $s"); done
for s in 3 4 5 0 1 2; do jobs+=("$REF -b multimnist --method bayesagg --seed $s"); done
for j in "${jobs[@]}"; do
  key=$(echo "${j#"$REF "}" | tr ' /=' '___')
  mkdir "$CLAIMS/$key" 2>/dev/null || continue
  echo "$(date -u +%H:%M:%S) $2 start $j"
  $BASE $j || { echo "$(date -u +%H:%M:%S) $2 FAILED $j"; continue; }
  read -r bench seed <<< "$(echo "$j" | sed -E 's/.*-b ([a-z-]+) .*--seed ([0-9]+).*/\1 \2/')"
  mkdir -p "results/kron/levels/$bench/$SIDE/seed$seed"
  cp "$OUT/$bench/quick/bayesagg/seed$seed/"{result.json,epochs.csv} "results/kron/levels/$bench/$SIDE/seed$seed/"
  echo "$(date -u +%H:%M:%S) $2 done $j"
done
