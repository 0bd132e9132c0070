"""DualProj: the mean gradient projected onto the dual cone of the task gradients."""

from __future__ import annotations

import numpy as np

from bayesagg.methods.gradient._dual_cone import DualConeWeighting, dual_cone_weights

__all__ = ["DualProj"]


class DualProj(DualConeWeighting):
    """Projection of the mean gradient onto the dual cone (Quinton & Rey 2024, "Jacobian descent").

    ``d = pi_J(1/K sum_i g_i)``, where ``pi_J`` projects onto ``{x : J x >= 0}``: the closest
    update to the mean gradient that increases no task's loss to first order. This is the
    projection of GEM (Lopez-Paz & Ranzato 2017, NeurIPS, Eq. 10-11) with the tasks' gradients
    as the constraints; Quinton & Rey name it DualProj and compare it with UPGrad (which
    projects each gradient, then averages). By their Proposition 1, ``pi_J(J^T u) = J^T v``
    with ``v = argmin_{v >= u} v^T G v``, here solved exactly by non-negative least squares on
    the Gramian divided by its mean diagonal (as :class:`~bayesagg.methods.gradient.upgrad.UPGrad`;
    torchjd solves the same programme with quadprog after adding ``1e-4 I``, a regularisation
    that moves its answer by O(1) of the gradients where the exact answer is 0). Mean scale,
    as UPGrad and torchjd. ``last_weights`` = ``v``.
    """

    name = "dualproj"

    def cone_weights(self, m: np.ndarray, eps: float) -> np.ndarray:
        """Return ``v = argmin_{v >= 1/K} v^T G v`` (on the normalised Gramian)."""
        k = m.shape[0]
        return dual_cone_weights(m, np.full(k, 1.0 / k), eps)
