"""GradVac: raise the cosine similarity of each pair of task gradients towards a running target."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from bayesagg.methods._seeding import check_seed, reseed
from bayesagg.methods.gramian import Gramian, GramianWeighting

__all__ = ["GradVac"]


class GradVac(GramianWeighting):
    """Gradient vaccine (Wang et al. 2021, ICLR, Sec. 3.3 and Algorithm 1).

    For each task i and every other task j in a random order, with ``phi = cos(g_i^PC, g_j)``
    and the running target ``phi_hat_ij`` (exponential moving average, start 0): if
    ``phi < phi_hat_ij``,

        g_i^PC += |g_i^PC| (phi_hat sqrt(1 - phi^2) - phi sqrt(1 - phi_hat^2))
                  / (|g_j| sqrt(1 - phi_hat^2)) g_j        (their Eq. 5),

    then ``phi_hat_ij <- (1 - beta) phi_hat_ij + beta phi``. The direction is ``sum_i g_i^PC``.
    Everything is done on the Gramian (``g_i^PC = J^T c_i``), as torchjd does.

    Stateful: ``phi_hat`` persists across steps (:meth:`reset` clears it). No official code was
    released; ``beta=0.5`` and ``eps=1e-8`` are the defaults of LibMTL and torchjd, the whole
    Jacobian is one group (LibMTL's "whole_model"; the paper also applies it per layer). The
    random order uses ``torch.randperm(K - 1, generator=...)`` per task, the same draws as
    torchjd's ``GradVac`` under the same seed. Deviation: the Gramian is divided by its mean
    diagonal first, so ``eps`` acts relative to the gradients' scale (torchjd's is absolute);
    the update itself is scale-free.
    """

    name = "gradvac"
    space = "parameters"
    hyperparameters = ("beta", "eps", "seed")
    state_fields = ("phi_hat", "generator")
    properties = frozenset({"scale_homogeneous"})  # random order: not permutation-invariant

    def __init__(
        self, num_tasks: int, *, beta: float = 0.5, eps: float = 1e-8, seed: int | None = None
    ) -> None:
        super().__init__(num_tasks)
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"beta must be in [0, 1], got {beta}")
        if not eps >= 0.0:
            raise ValueError(f"eps must be non-negative, got {eps}")
        check_seed(seed)
        self.beta = float(beta)
        self.eps = float(eps)
        self.seed = seed
        self.generator = torch.Generator()
        self.reset()

    def reset(self) -> None:
        """Clear the targets phi_hat and re-seed the order generator."""
        self.phi_hat = np.zeros((self.num_tasks, self.num_tasks))
        reseed(self.generator, self.seed)

    def weights(self, gramian: Gramian, losses: Tensor | None) -> np.ndarray:
        """Return the weights of ``sum_i g_i^PC``, updating phi_hat."""
        m = gramian.numpy()
        k = m.shape[0]
        scale = np.trace(m) / k
        if scale > 0:
            m = m / scale
        coef = np.eye(k)
        norms = np.sqrt(np.clip(np.diag(m), 0.0, None))
        for i in range(k):
            c = coef[i]
            c_m = c @ m  # g_i^PC . g_j for all j
            others = [j for j in range(k) if j != i]
            for idx in torch.randperm(k - 1, generator=self.generator).tolist():
                j = others[idx]
                norm_i = np.sqrt(max(c_m @ c, 0.0))
                # a cosine: rounding (rank-deficient rows in float32) can push the ratio past
                # +-1, and a target phi_hat past +-1 makes Eq. 5's denominator vanish
                phi = min(max(c_m[j] / (norm_i * norms[j] + self.eps), -1.0), 1.0)
                target = self.phi_hat[i, j]
                if phi < target:
                    root_target = np.sqrt(max(1.0 - target**2, 0.0))
                    w = (
                        norm_i
                        * (target * np.sqrt(max(1.0 - phi**2, 0.0)) - phi * root_target)
                        / (norms[j] * root_target + self.eps)
                    )
                    c[j] += w
                    c_m = c_m + w * m[j]
                self.phi_hat[i, j] = (1.0 - self.beta) * target + self.beta * phi
        return coef.sum(axis=0)
