"""PCGrad: project each task gradient onto the normal plane of the gradients it conflicts with."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from bayesagg.methods._seeding import check_seed, reseed
from bayesagg.methods.gramian import Gramian, GramianWeighting

__all__ = ["PCGrad"]


class PCGrad(GramianWeighting):
    """Projecting conflicting gradients (Yu et al. 2020, "Gradient Surgery", Algorithm 1).

    For each task i, ``g_i^PC = g_i``; for every other task j in a random order, if
    ``g_i^PC . g_j < 0`` then ``g_i^PC -= (g_i^PC . g_j) / |g_j|^2 g_j``. The direction is
    ``sum_i g_i^PC`` (the paper's ``Delta theta``; the official code and the nash-mtl code use
    the sum). Each ``g_i^PC`` is a combination of the rows, so the whole algorithm runs on the
    Gramian and returns weights; ``last_weights`` are those combination weights.

    The projection order is drawn with ``torch.randperm(K, generator=...)`` once per task i
    (a permutation of all K tasks, i skipped), from a private generator seeded with ``seed``
    (None: seeded from the global torch RNG at construction). The same draws as torchjd's
    ``PCGrad`` with the global RNG seeded identically, so the two agree exactly.
    """

    name = "pcgrad"
    space = "parameters"
    hyperparameters = ("seed",)
    state_fields = ("generator",)
    # not permutation-invariant: the projection order is random
    properties = frozenset({"scale_homogeneous"})

    def __init__(self, num_tasks: int, *, seed: int | None = None) -> None:
        super().__init__(num_tasks)
        self.seed = check_seed(seed)
        self.generator = torch.Generator()
        self.reset()

    def reset(self) -> None:
        """Re-seed the projection-order generator."""
        reseed(self.generator, self.seed)

    def weights(self, gramian: Gramian, losses: Tensor | None) -> np.ndarray:
        """Return the weights of ``sum_i g_i^PC`` (each ``g_i^PC`` a combination of rows)."""
        m = gramian.numpy()
        k = m.shape[0]
        weights = np.zeros(k)
        for i in range(k):
            c = np.zeros(k)  # g_i^PC = J^T c
            c[i] = 1.0
            for j in torch.randperm(k, generator=self.generator).tolist():
                if j == i:
                    continue
                dot = m[j] @ c
                if dot < 0.0:
                    c[j] -= dot / m[j, j]
            weights += c
        return weights
