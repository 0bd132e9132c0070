"""ChestX-ray14: 14 binary findings, ResNet-34 -> 256 + ELU (BayesAgg-MTL App. B).

Metric: AUC-ROC per finding; selection on validation Delta_m when STL references are given
(``--references FILE`` of this project's own STL runs; none are published per task), else on
the mean validation AUC (said in the run's JSON). The data cannot be obtained on this project's
machines; the loader reads the NIH layout.
"""

from __future__ import annotations

from bayesagg.benchmarks.recipes import authors_trainer, paper_quick_smoke
from bayesagg.benchmarks.spec import Benchmark

# The authors' ChestX-ray14 trainer (docs/benchmarks.md, "Settings of the `paper` protocols";
# paper App. B): Adam 1e-3, no weight decay,
# x0.1 at 60 % and 80 %, heads' gradient norm clipped to 50 at every step (the shared clip is
# commented out there), no drop_last; 1 LS epoch, s 5e-4, gamma 5e-3, 1024 Monte-Carlo samples.
_PAPER = authors_trainer(
    epochs=100,
    batch_size=256,
    weight_decay=0.0,
    clip_heads=50.0,
    bayesagg={"warmup_epochs": 1, "s_classification": 5e-4, "gamma": 5e-3, "num_samples": 1024},
    note=(
        "published recipe, except that the encoder starts from scratch unless "
        "--model-option weights=IMAGENET1K_V1 (the paper uses ImageNet weights)"
    ),
)

SPEC = Benchmark(
    name="chestxray",
    package="chestxray",
    description="ChestX-ray14: 14 binary findings, ResNet-34",
    protocols=paper_quick_smoke(
        _PAPER,
        quick={
            "epochs": 5,
            "batch_size": 64,
            "train_limit": 2_000,
            "eval_limit": 500,
            # Scaled to 5 epochs the one LS epoch would round to none; the paper's one is kept.
            "method_settings": {"bayesagg": {"warmup_epochs": 1}},
            "note": "2,000 training images (500 val/test), 5 epochs, batch 64, from scratch",
        },
        smoke={"batch_size": 16, "train_limit": 32, "eval_limit": 16},
        items="images",
    ),
    selection="delta_m",
    binary_metric="auc",
)
