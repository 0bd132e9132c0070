"""MoDo: MGDA's weights followed by one projected stochastic-gradient step per update."""

from __future__ import annotations

import numpy as np
from torch import Tensor

from bayesagg.methods.gradient._simplex import project_onto_simplex
from bayesagg.methods.gramian import Gramian, GramianWeighting

__all__ = ["MoDo"]


class MoDo(GramianWeighting):
    """Multi-objective gradient with double sampling (Chen, Fernando, Ying & Chen 2023, NeurIPS).

    "Three-way trade-off in multi-objective learning", Algorithm 1 (Eq. 2.9): instead of
    solving MGDA's min-norm problem at every step, the weights ``lambda`` (on the simplex,
    start uniform) take one projected gradient step on ``1/2 |J^T lambda|^2 + rho/2
    |lambda|^2``:

        lambda <- Pi_simplex(lambda - gamma (J_1 J_2^T lambda + rho lambda)),   d = J^T lambda.

    Defaults as published in the authors' LibMTL code: ``gamma=1e-3``, ``rho=0.1``.

    Deviation: the paper estimates ``J_1 J_2^T`` from two independent mini-batches (and the
    update from a third) so that the weight update is unbiased; the project's training step
    has one batch, so here ``J_1 = J_2 = J`` (biased by the gradients' variance; torchjd
    warns about the same substitution). ``gamma`` acts on the raw Gramian, as published, so
    the weights' speed depends on the gradients' scale.

    Stateful: ``lambda`` (:meth:`reset`, :meth:`state_dict`). ``last_weights`` = ``lambda``.
    """

    name = "modo"
    space = "parameters"
    hyperparameters = ("gamma", "rho")
    state_fields = (("lambda", "lam"),)
    properties = frozenset({"permutation_invariant"})  # gamma acts on the raw Gramian

    def __init__(self, num_tasks: int, *, gamma: float = 1e-3, rho: float = 0.1) -> None:
        super().__init__(num_tasks)
        if not gamma > 0:
            raise ValueError(f"gamma must be positive, got {gamma}")
        if not rho >= 0:
            raise ValueError(f"rho must be non-negative, got {rho}")
        self.gamma = float(gamma)
        self.rho = float(rho)
        self.reset()

    def reset(self) -> None:
        """Restart from the uniform weights."""
        self.lam = np.full(self.num_tasks, 1.0 / self.num_tasks)

    def weights(self, gramian: Gramian, losses: Tensor | None) -> np.ndarray:
        """Take one step on lambda with this Gramian; return lambda."""
        m = gramian.numpy()
        step = self.lam - self.gamma * (m @ self.lam + self.rho * self.lam)
        if not np.all(np.isfinite(step)):
            raise FloatingPointError(f"MoDo: non-finite weight update {step} (Gramian {m})")
        self.lam = project_onto_simplex(step)
        return self.lam
