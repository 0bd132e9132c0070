"""Training recipes shared by several benchmarks (docs/benchmarks.md, "Settings of the `paper`
protocols").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from bayesagg.bayes_agg import PAPER_BEHAVIOUR
from bayesagg.benchmarks.spec import Protocol

__all__ = [
    "UTKFACE_TRAINER_CLASSIFICATION",
    "authors_trainer",
    "paper_quick_smoke",
    "utkface_trainer",
]


def authors_trainer(
    *,
    epochs: int,
    batch_size: int,
    weight_decay: float,
    clip_heads: float,
    bayesagg: Mapping[str, Any],
    note: str = "",
    **changes: Any,
) -> Protocol:
    """Return the ``paper`` recipe of one of the BayesAgg-MTL authors' trainers (paper App. B).

    What their UTKFace, CIFAR-MTL and ChestX-ray14 trainers share: Adam 1e-3, the learning rate
    x0.1 at 60 % and 80 % of the epochs, the heads' gradient norm clipped to ``clip_heads`` at
    every step, and BayesAgg-MTL with the trainer's ``bayesagg`` settings and the paper's
    behaviour (``PAPER_BEHAVIOUR``). ``changes``: the trainer's other fields (``clip_shared``,
    ``drop_last``, ``groups``; docs/benchmarks.md, "Settings of the `paper` protocols").
    """
    return Protocol(
        name="paper",
        epochs=epochs,
        batch_size=batch_size,
        weight_decay=weight_decay,
        scheduler="multistep",
        milestones=(0.6, 0.8),
        clip_heads=clip_heads,
        method_settings={"bayesagg": {**bayesagg, **PAPER_BEHAVIOUR}},
        note=note,
        **changes,
    )


def utkface_trainer(
    *, batch_size: int, bayesagg: Mapping[str, Any], note: str = "", **changes: Any
) -> Protocol:
    """Return the authors' UTKFace trainer (:func:`authors_trainer`; paper App. B) at a batch.

    100 epochs, weight decay 1e-4, the heads' gradient norm clipped to 10 at every step and
    the shared parameters' to 5 after the warm-up; UTKFace's ``paper`` recipe and, with its
    classification settings, that of the classification benchmarks the paper has no recipe
    for (:data:`UTKFACE_TRAINER_CLASSIFICATION`).
    """
    return authors_trainer(
        epochs=100,
        batch_size=batch_size,
        weight_decay=1e-4,
        clip_heads=10.0,
        clip_shared=5.0,
        bayesagg=bayesagg,
        note=note,
        **changes,
    )


def paper_quick_smoke(
    paper: Protocol,
    *,
    quick: Mapping[str, Any],
    smoke: Mapping[str, Any],
    items: str = "training images",
    smoke_items: str | None = None,
) -> dict[str, Protocol]:
    """Return a benchmark's three recipes: ``paper``, and ``quick`` and ``smoke`` derived from it.

    ``quick`` is :meth:`Protocol.derive` with the budget ``quick`` (``epochs``, the example
    limits and any other change), ``smoke`` :meth:`Protocol.smoke` with the budget ``smoke``,
    so both keep the published recipe but for what their budget names (docs/benchmarks.md).
    A budget without a ``note`` (``what`` for ``smoke``) gets one spelt out from its numbers,
    so the note cannot drift from the budget: "10,000 training images (2,000 val/test), 10
    epochs (BayesAgg warm-up 1)" and "512 training images, 1 epoch, no warm-up", ``items``
    naming the training examples (``smoke_items`` in the smoke note, if they are called
    otherwise there).
    """
    budget = dict(quick)
    note = budget.pop("note", None)
    derived = paper.derive("quick", note="" if note is None else note, **budget)
    if note is None:
        warmup = derived.settings_of("bayesagg").get("warmup_epochs", 0)
        derived = replace(
            derived,
            note=f"{derived.train_limit:,} {items} ({derived.eval_limit:,} val/test), "
            f"{derived.epochs} epochs (BayesAgg warm-up {warmup})",
        )
    budget = dict(smoke)
    what = budget.pop("what", None)
    if what is None:
        what = f"{budget['train_limit']:,} {smoke_items or items}, 1 epoch, no warm-up"
    return {"paper": paper, "quick": derived, "smoke": paper.smoke(what=what, **budget)}


#: The ``paper`` recipe of a classification benchmark that is not in the BayesAgg-MTL paper
#: (MultiMNIST, CelebA): 100 epochs and batch 256 as Sener & Koltun 2018; everything else is
#: the authors' UTKFace trainer with its classification settings (this project's choice,
#: docs/benchmarks.md): Adam 1e-3, weight decay 1e-4, x0.1 at 60 % and 80 %, heads clipped to
#: 10 and shared parameters to 5 after the warm-up, 10 % LS warm-up, s 0.1, gamma 5e-3, 1024
#: Monte-Carlo samples. Each benchmark gives it its own ``note``.
UTKFACE_TRAINER_CLASSIFICATION = utkface_trainer(
    batch_size=256,
    bayesagg={"warmup_epochs": 10, "s_classification": 0.1, "gamma": 5e-3, "num_samples": 1024},
)
