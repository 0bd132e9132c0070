"""IMTL-G and IMTL-G-UB: the update whose projections on all unit task gradients are equal."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
from torch import Tensor

from bayesagg.methods.base import Space
from bayesagg.methods.gramian import Gramian, GramianWeighting

__all__ = ["IMTLG", "IMTLGUB"]


class IMTLG(GramianWeighting):
    """Impartial MTL, gradient part (Liu et al. 2021, ICLR, Sec. 3.2, closed form of Eq. 5).

    Finds ``d = sum_t alpha_t g_t`` with ``sum_t alpha_t = 1`` whose projections on the unit
    gradients ``u_t = g_t / |g_t|`` are all equal. The paper's closed form
    ``alpha_{2:K} = g_1 U^T (D U^T)^{-1}`` (``D``, ``U``: differences of the gradients and of the
    unit gradients to the first one) is the same as ``alpha = G^{-1} n / 1^T G^{-1} n`` with
    ``G = J J^T`` and ``n_t = |g_t|`` (then ``J alpha`` is proportional to ``n``), computed here
    on the K x K Gramian. For a singular ``G`` the inverse is the pseudo-inverse (torchjd's
    generalisation in Quinton & Rey 2024; the official code adds ``1e-8 I``); if
    ``1^T G^+ n = 0`` no such combination exists and the direction is zero. The Gramian is first
    divided by its mean diagonal, which leaves alpha unchanged and makes the zero test
    scale-free. Weights sum to 1, as in the official code and torchjd.
    """

    name = "imtl-g"
    space: ClassVar[Space] = "parameters"
    properties = frozenset({"permutation_invariant", "scale_homogeneous"})

    def weights(self, gramian: Gramian, losses: Tensor | None) -> np.ndarray:
        """Return the IMTL-G weights alpha (sum 1, or 0 when none exists)."""
        m = gramian.numpy()
        k = m.shape[0]
        scale = np.trace(m) / k
        alpha = np.zeros(k)
        if scale > 0:
            m = m / scale
            # pseudo-inverse with the rank cut of the Jacobian's precision (torch's pinv default)
            lam, vec = np.linalg.eigh(m)
            keep = lam > lam.max() * k * torch.finfo(gramian.dtype).eps
            norms = np.sqrt(np.clip(np.diag(m), 0.0, None))
            v = vec[:, keep] @ ((vec[:, keep].T @ norms) / lam[keep])
            total = v.sum()
            if abs(total) > 1e-12:
                alpha = v / total
        return alpha


class IMTLGUB(IMTLG):
    """IMTL-G on the gradients w.r.t. the shared representation h [B, D], flattened to B*D.

    As in the BayesAgg-MTL paper's "-UB" baselines (Sener & Koltun's upper-bound trick);
    LibMTL's ``rep_grad`` variant sums the per-example gradients over the batch instead.
    """

    name = "imtl-g-ub"
    space = "representation"
