"""UTKFace: age regression, gender and ethnicity classification (BayesAgg-MTL App. B).

ResNet-18 from scratch -> 256 + ELU; age MSE in standardised units, gender and ethnicity
accuracy; Delta_m against the paper's STL values; selection on validation Delta_m; ECE and
Brier score reported for the classification tasks (paper App. C.1).
"""

from __future__ import annotations

from bayesagg.benchmarks.registry import Benchmark, Protocol

_BAYESAGG = {
    "warmup_epochs": 10,
    "s_regression": 0.3,
    "s_classification": 0.1,
    "gamma": 5e-3,
    "num_samples": 1024,
}

SPEC = Benchmark(
    name="utkface",
    package="utkface",
    description="UTKFace: age (regression), gender (binary), ethnicity (5 classes), ResNet-18",
    protocols={
        "paper": Protocol(
            name="paper",
            epochs=100,
            batch_size=128,
            weight_decay=1e-4,
            scheduler="multistep",
            milestones=(0.6, 0.8),
            bayesagg=_BAYESAGG,
            note="published recipe",
        ),
        "quick": Protocol(
            name="quick",
            epochs=10,
            batch_size=128,
            weight_decay=1e-4,
            scheduler="multistep",
            milestones=(0.6, 0.8),
            train_limit=3_000,
            eval_limit=1_000,
            bayesagg={**_BAYESAGG, "warmup_epochs": 1},
            note=(
                "paper recipe on a CPU budget: 3,000 training faces (1,000 val/test), "
                "10 epochs (BayesAgg warm-up 1)"
            ),
        ),
        "smoke": Protocol(
            name="smoke",
            epochs=1,
            batch_size=32,
            train_limit=64,
            eval_limit=32,
            bayesagg={**_BAYESAGG, "warmup_epochs": 0, "num_samples": 64},
            data_options={"image_size": 64},
            note="pipeline check only: 64 faces at 64 px, 1 epoch, no warm-up, 64 MC samples",
        ),
    },
    selection="delta_m",
    regression_metric="mse",
    binary_metric="accuracy",
    calibration=True,
    published_stl=(0.1400, 0.9232, 0.8242),
    published_source="BayesAgg-MTL (Achituve et al. 2024) UTKFace STL test values (age MSE, gender and ethnicity accuracy)",
)
