"""Projection onto the dual cone of the task gradients, on the Gramian (Quinton & Rey 2024).

Used by UPGrad and DualProj: ``pi_J(J^T u) = J^T v`` with ``v = argmin_{v >= u} v^T G v``
(their Proposition 1), ``G = J J^T``.
"""

from __future__ import annotations

from abc import abstractmethod

import numpy as np
import torch
from torch import Tensor

from bayesagg.methods.gramian import Gramian, GramianWeighting

__all__ = ["DualConeWeighting", "dual_cone_weights", "gramian_factor", "project_weights"]


def gramian_factor(m: np.ndarray, eps: float = 0.0) -> np.ndarray:
    """Return A [K, K] with ``A^T A = m`` for a symmetric PSD ``m``.

    Eigenvalues up to ``K eps lambda_max`` are set to 0: with ``eps`` the precision of the
    gradients the Gramian came from, they are rounding (a Gramian computed in float32 from
    exactly rank-deficient gradients has them of order 1e-7 lambda_max), and keeping them
    turns an exactly zero projection into noise of about 1e-6 to 1e-5 of the gradients.
    (``eps = 0``: only the negative rounding is clipped.)
    """
    lam, vec = np.linalg.eigh(m)
    lam = np.where(lam > lam.max() * m.shape[0] * eps, lam, 0.0)
    return np.sqrt(lam)[:, None] * vec.T


def project_weights(factor: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Return ``v = argmin_{v >= u} v^T m v`` given a factor ``A^T A = m`` (:func:`gramian_factor`).

    With ``v = u + s`` this is the non-negative least-squares problem
    ``min_{s >= 0} |A s + A u|^2``, solved exactly by SciPy's Lawson-Hanson ``nnls``. The
    minimiser is unique in ``J^T v`` (not always in ``v`` when ``m`` is singular); the
    direction ``J^T v`` is what the callers use.
    """
    from scipy.optimize import nnls

    s, _ = nnls(factor, -factor @ u)
    return u + s


def dual_cone_weights(m: np.ndarray, u: np.ndarray, eps: float = 0.0) -> np.ndarray:
    """Return ``v = argmin_{v >= u} v^T m v`` for a PSD Gramian ``m`` [K, K] and ``u`` [K].

    ``m`` should be normalised (e.g. by its mean diagonal) by the caller: the projection is
    scale-free. ``eps``: the precision of the gradients (:func:`gramian_factor`).
    """
    return project_weights(gramian_factor(m, eps), u)


class DualConeWeighting(GramianWeighting):
    """A weighting by projection onto the dual cone ``{x : J x >= 0}`` (UPGrad, DualProj).

    The projection is scale-free, so both solve it on the Gramian divided by its mean diagonal,
    with the gradients' precision as ``eps`` (:func:`gramian_factor`); a zero Gramian (every
    gradient 0) gets the mean weights 1/K. Both guarantee that no task's loss increases to
    first order, and are permutation-invariant and scale-homogeneous (Quinton & Rey 2024).
    """

    space = "parameters"
    properties = frozenset({"non_conflicting", "permutation_invariant", "scale_homogeneous"})

    def weights(self, gramian: Gramian, losses: Tensor | None) -> np.ndarray:
        """Return :meth:`cone_weights` of the normalised Gramian (1/K each if it is 0)."""
        m = gramian.numpy()
        k = m.shape[0]
        scale = np.trace(m) / k
        if not scale > 0:
            return np.full(k, 1.0 / k)
        return self.cone_weights(m / scale, torch.finfo(gramian.dtype).eps)

    @abstractmethod
    def cone_weights(self, m: np.ndarray, eps: float) -> np.ndarray:
        """Return the K weights for the Gramian ``m`` normalised to mean diagonal 1."""
