"""Projection onto the dual cone of the task gradients, on the Gramian (Quinton & Rey 2024).

Used by DualProj (and the same construction as UPGrad's): ``pi_J(J^T u) = J^T v`` with
``v = argmin_{v >= u} v^T G v`` (their Proposition 1), ``G = J J^T``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["dual_cone_weights"]


def dual_cone_weights(m: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Return ``v = argmin_{v >= u} v^T m v`` for a PSD Gramian ``m`` [K, K] and ``u`` [K].

    With ``v = u + s`` and a factor ``m = A^T A`` this is the non-negative least-squares
    problem ``min_{s >= 0} |A s + A u|^2``, solved exactly by SciPy's Lawson-Hanson ``nnls``.
    The minimiser is unique in ``J^T v`` (not always in ``v`` when ``m`` is singular); the
    direction ``J^T v`` is what the callers use. ``m`` should be normalised (e.g. by its mean
    diagonal) by the caller: the projection is scale-free.
    """
    from scipy.optimize import nnls

    lam, vec = np.linalg.eigh(m)
    factor = np.sqrt(np.clip(lam, 0.0, None))[:, None] * vec.T  # A with A^T A = m
    s, _ = nnls(factor, -factor @ u)
    return u + s
