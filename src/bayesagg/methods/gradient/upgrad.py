"""UPGrad: average of the task gradients, each projected onto the dual cone of all of them."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from bayesagg.methods.base import Aggregator
from bayesagg.methods.gradient._min_norm import gramian

__all__ = ["UPGrad"]


class UPGrad(Aggregator):
    """Unconflicting projection of gradients (Quinton & Rey 2024, "Jacobian descent", Eq. 5).

    ``d = 1/K sum_i pi_J(g_i)``, where ``pi_J`` projects onto the dual cone
    ``{x : J x >= 0}`` of the rows, so ``J d >= 0``: no task's loss increases to first order.
    By their Proposition 1, ``pi_J(J^T u) = J^T v`` with ``v = argmin_{v >= u} v^T G v``
    (``G = J J^T``). With ``v = e_i + s`` and a factor ``G = A^T A`` this is the non-negative
    least-squares problem ``min_{s >= 0} |A s + A e_i|^2``, solved exactly by SciPy's
    Lawson-Hanson ``nnls`` on the Gramian divided by its mean diagonal (the projection is
    scale-free). torchjd solves the same quadratic programme with quadprog after adding
    ``1e-4 I`` to the normalised Gramian, so it differs from the exact projection by O(1e-4).
    ``last_weights`` are ``1/K sum_i v_i``.
    """

    name = "upgrad"
    space = "parameters"

    def aggregate(self, jacobian: Tensor) -> Tensor:
        """Return the UPGrad direction [P] of a Jacobian [K, P]."""
        from scipy.optimize import nnls

        m = gramian(jacobian)
        k = m.shape[0]
        scale = np.trace(m) / k
        weights = np.full(k, 1.0 / k)
        if scale > 0:
            lam, vec = np.linalg.eigh(m / scale)
            factor = np.sqrt(np.clip(lam, 0.0, None))[:, None] * vec.T  # A with A^T A = G
            v = np.eye(k)
            for i in range(k):
                s, _ = nnls(factor, -factor[:, i])
                v[i] += s
            weights = v.mean(axis=0)
        w = torch.as_tensor(weights, dtype=jacobian.dtype, device=jacobian.device)
        self.last_weights = w.detach().cpu()
        return w @ jacobian
