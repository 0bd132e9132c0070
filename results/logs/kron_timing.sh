#!/bin/bash
# Timing of the Kronecker-factored multiclass posterior on a quiet machine (the training queue
# finished or stopped; nothing else running), torch's default threads, from the repository root.
set -e
PY=.venv/bin/python
$PY scripts/timing/overhead.py --data-dir ../shared/data --benchmarks multimnist --methods bayesagg --rounds 7 > results/kron/overhead_multimnist_dense.md
$PY scripts/timing/overhead.py --data-dir ../shared/data --benchmarks multimnist --methods bayesagg --hp multiclass_posterior=kron --rounds 7 > results/kron/overhead_multimnist_kron.md
$PY scripts/timing/overhead.py --data-dir ../shared/data --benchmarks utkface --methods bayesagg --hp multiclass_posterior=kron --steps 1 --warmup 1 --rounds 5 > results/kron/overhead_utkface_kron.md
$PY scripts/timing/cost_model.py --encoder --json results/kron/cost_model.json --plot results/kron/cost_model.png > results/kron/cost_model.md
