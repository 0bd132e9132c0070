"""Training recipes shared by several benchmarks (docs/benchmarks.md, "Settings of the `paper`
protocols").
"""

from __future__ import annotations

from bayesagg.bayes_agg import PAPER_BEHAVIOUR
from bayesagg.benchmarks.spec import Protocol

__all__ = ["UTKFACE_TRAINER_CLASSIFICATION"]

#: The ``paper`` recipe of a classification benchmark that is not in the BayesAgg-MTL paper
#: (MultiMNIST, CelebA): 100 epochs and batch 256 as Sener & Koltun 2018; everything else is
#: the authors' UTKFace trainer with its classification settings (this project's choice,
#: docs/benchmarks.md): Adam 1e-3, weight decay 1e-4, x0.1 at 60 % and 80 %, heads clipped to
#: 10 and shared parameters to 5 after the warm-up, 10 % LS warm-up, s 0.1, gamma 5e-3, 1024
#: Monte-Carlo samples. Each benchmark gives it its own ``note``.
UTKFACE_TRAINER_CLASSIFICATION = Protocol(
    name="paper",
    epochs=100,
    batch_size=256,
    weight_decay=1e-4,
    scheduler="multistep",
    milestones=(0.6, 0.8),
    clip_heads=10.0,
    clip_shared=5.0,
    method_settings={
        "bayesagg": {
            "warmup_epochs": 10,
            "s_classification": 0.1,
            "gamma": 5e-3,
            "num_samples": 1024,
            **PAPER_BEHAVIOUR,
        }
    },
)
