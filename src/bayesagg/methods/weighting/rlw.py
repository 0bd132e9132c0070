"""Random loss weighting: fresh random task weights at every step."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from bayesagg.methods.weighting.loss_weighting import LossWeighting

__all__ = ["RandomLossWeighting"]


class RandomLossWeighting(LossWeighting):
    """Random loss weighting (RLW): gradient of ``sum_k lambda_k L_k``, ``lambda = softmax(z)``.

    Lin et al. 2022, "Reasonable Effectiveness of Random Weighting: A Litmus Test for Multi-Task
    Learning" (TMLR), Sec. 3, with the standard-normal choice ``z ~ N(0, I_K)`` drawn anew
    at every step. The weights sum to 1 (as in the paper and LibMTL). ``sum_to_num_tasks=True``
    multiplies them by K, as the Nash-MTL / IGB / BayesAgg-MTL code bases do; under Adam the two
    differ only through Adam's epsilon.

    ``seed``: an own ``torch.Generator`` (CPU) is used, so the weight sequence is reproducible and
    independent of the model's random draws; its state is part of :meth:`state_dict`. With
    ``seed=None`` the global torch RNG is used (as in the official code).
    """

    name = "rlw"
    hyperparameters = ("seed", "sum_to_num_tasks")

    def __init__(
        self, num_tasks: int, *, seed: int | None = None, sum_to_num_tasks: bool = False
    ) -> None:
        super().__init__(num_tasks)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"rlw: seed must be an int or None, got {seed!r}")
        self.seed = seed
        self.sum_to_num_tasks = bool(sum_to_num_tasks)
        self._generator: torch.Generator | None = None
        self.reset()

    def reset(self) -> None:
        """Restart the random stream from ``seed``."""
        if self.seed is not None:
            self._generator = torch.Generator().manual_seed(self.seed)
        self.last_weights = None

    def sample_weights(self) -> Tensor:
        """Return fresh weights ``softmax(z)``, ``z ~ N(0, I)`` (float64, CPU), times K if asked."""
        z = torch.randn(self.num_tasks, generator=self._generator, dtype=torch.float64)
        w = torch.softmax(z, dim=0)
        return w * self.num_tasks if self.sum_to_num_tasks else w

    def objective(self, losses: Tensor) -> Tensor:
        """Return ``sum_k lambda_k L_k`` with fresh random ``lambda``."""
        w = self.sample_weights().to(device=losses.device, dtype=losses.dtype)
        self.last_weights = w
        return (w * losses).sum()

    def state_dict(self) -> dict[str, Any]:
        """Return the base state plus the generator state (when seeded)."""
        rng = None if self._generator is None else self._generator.get_state()
        return {**super().state_dict(), "seed": self.seed, "rng_state": rng}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the state, including the position in the random stream."""
        super().load_state_dict(state)
        if state.get("rng_state") is not None:
            if self._generator is None:
                self._generator = torch.Generator()
            self._generator.set_state(state["rng_state"])
