"""DualProj: the mean gradient projected onto the dual cone of the task gradients."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from bayesagg.methods.gradient._dual_cone import dual_cone_weights
from bayesagg.methods.gramian import Gramian, GramianWeighting

__all__ = ["DualProj"]


class DualProj(GramianWeighting):
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
    space = "parameters"
    properties = frozenset({"non_conflicting", "permutation_invariant", "scale_homogeneous"})

    def weights(self, gramian: Gramian, losses: Tensor | None) -> np.ndarray:
        """Return ``v = argmin_{v >= 1/K} v^T G v`` (on the normalised Gramian)."""
        m = gramian.numpy()
        k = m.shape[0]
        scale = np.trace(m) / k
        weights = np.full(k, 1.0 / k)
        if scale > 0:
            weights = dual_cone_weights(m / scale, weights, torch.finfo(gramian.dtype).eps)
        return weights
