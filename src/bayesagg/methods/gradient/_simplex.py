"""Euclidean projection onto the probability simplex (Duchi et al. 2008, ICML, Fig. 1)."""

from __future__ import annotations

import numpy as np

__all__ = ["project_onto_simplex"]


def project_onto_simplex(v: np.ndarray) -> np.ndarray:
    """Return ``argmin_{w >= 0, sum w = 1} |w - v|`` for a finite vector ``v``.

    Sort-based algorithm: with ``u`` sorted decreasingly, ``rho`` the largest index with
    ``u_rho - (sum_{i<=rho} u_i - 1) / rho > 0`` and ``theta = (sum_{i<=rho} u_i - 1) / rho``,
    the projection is ``max(v - theta, 0)``.
    """
    v = np.asarray(v, dtype=np.float64)
    if v.ndim != 1 or v.size == 0 or not np.all(np.isfinite(v)):
        raise ValueError(f"expected a finite non-empty vector, got {v!r}")
    # Pi(v + c 1) = Pi(v): shifting by the maximum keeps the first test exactly 1 > 0, so
    # huge or tiny inputs cannot round every test to <= 0
    v = v - v.max()
    u = np.sort(v)[::-1]
    cumulative = np.cumsum(u) - 1.0
    index = np.arange(1, v.size + 1)
    rho = int(np.nonzero(u - cumulative / index > 0)[0][-1])
    theta = cumulative[rho] / (rho + 1)
    return np.maximum(v - theta, 0.0)
