"""Gradient-norm clipping of a protocol, as the authors' trainers clip.

docs/benchmarks.md, "Settings of the `paper` protocols, with their sources", lists each
trainer's values.

Their UTKFace trainer clips the heads' gradient norm to 10 at every step and the shared
parameters' to 5 once the linear-scalarisation warm-up is over; their CIFAR-MTL and
ChestX-ray14 trainers clip the heads to 50 (the shared clip is commented out). Both clips use
``torch.nn.utils.clip_grad_norm_`` on the whole parameter list (one joint norm), after the
method's backward and before ``optimizer.step()``. A protocol's clipping applies to every
method trained under it, so the methods are compared under one recipe.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["GradientClipping", "reset_optimizer_state", "warmup_epochs"]


def warmup_epochs(method: object, protocol_warmup: int) -> int:
    """Return the epochs before the shared clip starts: the method's warm-up, else the protocol's.

    BayesAgg-MTL's own ``warmup_epochs`` (a ``--hp`` may change it) decides for BayesAgg-MTL;
    every other method uses the protocol's BayesAgg-MTL warm-up, so all methods of a protocol
    clip from the same epoch.
    """
    aggregator = getattr(method, "aggregator", None)
    return int(getattr(aggregator, "warmup_epochs", protocol_warmup) or 0)


@dataclass(frozen=True)
class GradientClipping:
    """Max norms of the heads' gradient (every step) and the shared one (from ``shared_from``)."""

    heads: float | None = None
    shared: float | None = None
    #: First epoch (0-based) whose steps clip the shared parameters' gradient.
    shared_from: int = 0

    def __post_init__(self) -> None:
        for name, value in (("clip_heads", self.heads), ("clip_shared", self.shared)):
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be positive or None, got {value!r}")

    def for_epoch(self, epoch: int) -> Callable[[nn.Module], None] | None:
        """Return the clip of epoch ``epoch``'s steps (a function of the model), or None."""
        shared = self.shared if epoch >= self.shared_from else None
        if self.heads is None and shared is None:
            return None

        def clip(model: nn.Module) -> None:
            if self.heads is not None:
                torch.nn.utils.clip_grad_norm_(list(model.heads.parameters()), self.heads)
            if shared is not None:
                torch.nn.utils.clip_grad_norm_(list(model.encoder.parameters()), shared)

        return clip


def reset_optimizer_state(optimizer: torch.optim.Optimizer, params: list[nn.Parameter]) -> int:
    """Forget the optimiser's state (Adam's moments and step) of ``params``; return how many.

    Used when BayesAgg-MTL's warm-up ends with ``reset_encoder_optimizer=True``: the encoder's
    Adam moments were accumulated on linear-scalarisation gradients, about K times larger than
    BayesAgg-MTL's (an option beyond the paper, from the ablation in
    docs/bayesagg-in-training.md).
    """
    count = 0
    for p in params:
        if p in optimizer.state:
            del optimizer.state[p]
            count += 1
    return count
