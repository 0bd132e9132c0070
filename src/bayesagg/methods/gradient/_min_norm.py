"""The minimum-norm point of the convex hull of K gradients (Sener & Koltun 2018, Alg. 1 and 2).

Both solvers work on the K x K Gramian ``M = J J^T`` only, in float64 NumPy (from
:class:`bayesagg.methods.gramian.Gramian`): the per-task gradients never leave the device, and
the loop runs on a matrix of a few hundred numbers.
"""

from __future__ import annotations

import numpy as np

__all__ = ["frank_wolfe", "min_norm_2"]


def min_norm_2(v11: float, v12: float, v22: float) -> float:
    """Return gamma in [0, 1] minimising ``|gamma x1 + (1 - gamma) x2|^2`` (Alg. 1, exact).

    ``v11 = x1.x1``, ``v12 = x1.x2``, ``v22 = x2.x2``. The minimum is at an end point when one
    vector's projection on the other exceeds its own squared norm, else at the foot of the
    perpendicular from the origin. Deviation: the official code clips to 0.999 / 0.001 at the end
    points; this returns the exact 1 / 0.
    """
    if v12 >= v11:
        return 1.0
    if v12 >= v22:
        return 0.0
    return float((v22 - v12) / (v11 + v22 - 2.0 * v12))


def frank_wolfe(m: np.ndarray, *, max_iter: int = 250, tol: float = 1e-5) -> np.ndarray:
    """Return the weights alpha (on the simplex) of the min-norm point of ``conv{g_1..g_K}``.

    Sener & Koltun 2018, Algorithm 2 (FRANKWOLFESOLVER), on the Gramian ``m``: start at the
    uniform weights; at each step take the vertex ``t = argmin_r (M alpha)_r`` (the linear
    minimiser over the simplex; the slides' "argmax" is a typo) and the exact line search of
    Alg. 1 between ``J^T alpha`` and ``g_t``; stop when the step ``gamma < tol`` or after
    ``max_iter`` steps. For two tasks the first step lands on the exact solution.
    """
    k = m.shape[0]
    alpha = np.full(k, 1.0 / k)
    for _ in range(max_iter):
        m_alpha = m @ alpha
        t = int(np.argmin(m_alpha))
        gamma = min_norm_2(m[t, t], m_alpha[t], alpha @ m_alpha)
        if gamma < tol or alpha[t] == 1.0:  # converged, or already at the best vertex
            alpha *= 1.0 - gamma
            alpha[t] += gamma
            break
        alpha *= 1.0 - gamma
        alpha[t] += gamma
    return alpha
