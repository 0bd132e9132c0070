"""The private random stream of the methods that draw at random (PCGrad's and GradVac's task
order, GradDrop's masks).

Each keeps its own ``torch.Generator``, seeded with its ``seed`` hyper-parameter, or, with
``seed=None``, with a draw from the global torch RNG, so a run seeded globally stays
reproducible while the method's draws do not disturb the global stream afterwards.
"""

from __future__ import annotations

import torch

__all__ = ["check_seed", "reseed"]


def check_seed(seed: int | None) -> int | None:
    """Return ``seed`` after checking that it is a non-negative integer or None."""
    if seed is not None and (int(seed) != seed or seed < 0):
        raise ValueError(f"seed must be a non-negative integer or None, got {seed}")
    return seed


def reseed(generator: torch.Generator, seed: int | None) -> None:
    """Seed ``generator`` with ``seed``, or with a draw from the global torch RNG if None."""
    generator.manual_seed(seed if seed is not None else int(torch.randint(2**62, ()).item()))
