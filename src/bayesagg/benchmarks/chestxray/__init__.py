"""ChestX-ray14: 14 binary findings, ResNet-34 -> 256 + ELU (BayesAgg-MTL App. B).

Metric: AUC-ROC per finding; selection on validation Delta_m when STL references are given
(``--references FILE`` of this project's own STL runs; none are published per task), else on
the mean validation AUC (said in the run's JSON). The data cannot be obtained on this project's
machines; the loader reads the NIH layout.
"""

from __future__ import annotations

from bayesagg.benchmarks.registry import Benchmark, Protocol

_BAYESAGG = {"warmup_epochs": 1, "s_classification": 5e-4, "gamma": 5e-3, "num_samples": 1024}

SPEC = Benchmark(
    name="chestxray",
    package="chestxray",
    description="ChestX-ray14: 14 binary findings, ResNet-34",
    protocols={
        "paper": Protocol(
            name="paper",
            epochs=100,
            batch_size=256,
            scheduler="multistep",
            milestones=(0.6, 0.8),
            bayesagg=_BAYESAGG,
            note=(
                "published recipe, except that the encoder starts from scratch unless "
                "--model-option weights=IMAGENET1K_V1 (the paper uses ImageNet weights)"
            ),
        ),
        "quick": Protocol(
            name="quick",
            epochs=5,
            batch_size=64,
            scheduler="multistep",
            milestones=(0.6, 0.8),
            train_limit=2_000,
            eval_limit=500,
            bayesagg=_BAYESAGG,
            note="2,000 training images (500 val/test), 5 epochs, batch 64, from scratch",
        ),
        "smoke": Protocol(
            name="smoke",
            epochs=1,
            batch_size=16,
            train_limit=32,
            eval_limit=16,
            bayesagg={**_BAYESAGG, "warmup_epochs": 0, "num_samples": 64},
            note="pipeline check only: 32 images, 1 epoch, no warm-up",
        ),
    },
    selection="delta_m",
    binary_metric="auc",
)
