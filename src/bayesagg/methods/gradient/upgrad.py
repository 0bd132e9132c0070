"""UPGrad: average of the task gradients, each projected onto the dual cone of all of them."""

from __future__ import annotations

import numpy as np

from bayesagg.methods.gradient._dual_cone import (
    DualConeWeighting,
    gramian_factor,
    project_weights,
)

__all__ = ["UPGrad"]


class UPGrad(DualConeWeighting):
    """Unconflicting projection of gradients (Quinton & Rey 2024, "Jacobian descent", Eq. 5).

    ``d = 1/K sum_i pi_J(g_i)``, where ``pi_J`` projects onto the dual cone
    ``{x : J x >= 0}`` of the rows, so ``J d >= 0``: no task's loss increases to first order.
    By their Proposition 1, ``pi_J(J^T u) = J^T v`` with ``v = argmin_{v >= u} v^T G v``
    (``G = J J^T``). With ``v = e_i + s`` and a factor ``G = A^T A`` this is the non-negative
    least-squares problem ``min_{s >= 0} |A s + A e_i|^2``, solved exactly by SciPy's
    Lawson-Hanson ``nnls`` on the Gramian divided by its mean diagonal (the projection is
    scale-free; :mod:`~bayesagg.methods.gradient._dual_cone`). torchjd solves the same
    quadratic programme with quadprog after adding ``1e-4 I`` to the normalised Gramian: a
    regularisation, not a rounding, so its answer differs from the exact projection by a
    relative O(1e-4) on well-conditioned Jacobians but by O(1) of the gradients where the exact
    answer is 0 (e.g. two opposite gradients). ``last_weights`` are ``1/K sum_i v_i``.
    """

    name = "upgrad"

    def cone_weights(self, m: np.ndarray, eps: float) -> np.ndarray:
        """Return ``1/K sum_i v_i``, ``v_i`` the dual-cone weights of the unit vector ``e_i``."""
        factor = gramian_factor(m, eps)
        return np.stack([project_weights(factor, e) for e in np.eye(m.shape[0])]).mean(axis=0)
