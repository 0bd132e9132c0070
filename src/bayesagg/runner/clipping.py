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

__all__ = ["GradientClipping"]


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
