"""ConFIG: the conflict-free direction with equal cosine similarity to every task gradient."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from bayesagg.methods.gramian import Gramian, GramianWeighting

__all__ = ["ConFIG"]


class ConFIG(GramianWeighting):
    """Conflict-free inverse gradients (Liu, Chu & Thuerey 2025, ICLR, Sec. 3, Eq. 2).

    With the unit task gradients ``u_i = g_i / |g_i|`` as the rows of ``U``:

        g_v = U^+ 1 / |U^+ 1|            (equal, positive cosine to every g_i)
        d   = (sum_i g_i . g_v) g_v      (the length: the sum of the projections)

    ``U^+`` is the Moore-Penrose pseudo-inverse (``torch.linalg.pinv``, its default rank cut),
    so rank-deficient Jacobians are handled as in the paper's least-squares form. A zero task
    gradient gives a zero row of ``U`` (no constraint), as the official code's ``nan_to_num``;
    a zero Jacobian gives a zero direction. The direction is on the scale of the sum of the
    losses (their length model), as the official code and torchjd. ``last_weights`` are the
    coefficients ``c`` with ``d = J^T c`` (at any rank: ``U^T (U^+)^T U^+ 1 = U^+ 1``).

    When ``1`` has no component in the row space of ``U`` (e.g. two opposite gradients, or
    rows all along one line with signs that cancel) ``U^+ 1 = 0`` exactly and no direction has
    a positive cosine to every gradient: the direction is zero. In floating point ``U^+ 1`` is
    then rounding noise, and normalising it would return an arbitrary direction of the size of
    the gradients, so a ``|U^+ 1|`` within the rounding of ``U^+ @ 1`` counts as zero. Where
    U has full row rank ``|U^+ 1| >= 1`` (``U x = 1`` with ``|U| <= sqrt(K)``), far above it.

    The direction is computed on the rows themselves (the pseudo-inverse of the unit rows is
    more accurate than one through the Gramian) and the rule depends on them only through
    their Gramian (``U^+ 1`` and the projections are unchanged when the rows are rotated), so
    the data-parallel form through the Gramian's square root is exact
    (:meth:`weights` runs the same computation on that square root).

    Not included: the momentum variant M-ConFIG and the preference weights (the official
    ``weight_model``; equal weights here, the paper's default).
    """

    name = "config"
    space = "parameters"
    # aggregate is overridden (the direction from the rows, not w @ J) but stays a function of
    # the Gramian: still exact under data parallelism
    data_parallel: ClassVar[bool] = True
    properties = frozenset({"permutation_invariant", "scale_homogeneous"})

    @staticmethod
    def _solve(rows: Tensor) -> tuple[Tensor, Tensor]:
        """Return the direction and its coefficients ``c`` (``direction = c @ rows``)."""
        norms = rows.norm(dim=1)
        inv = torch.where(norms > 0, 1.0 / norms, torch.zeros_like(norms))
        units = rows * inv[:, None]
        ones = torch.ones(rows.shape[0], dtype=rows.dtype, device=rows.device)
        # U^+ 1 = U^T (U U^T)^+ 1: its coefficients on the unit rows, via pinv of the rows
        pinv = torch.linalg.pinv(units)
        best = pinv @ ones
        length = best.norm()
        k = rows.shape[0]
        # the rounding of pinv @ 1 (pinv's relative accuracy: max(K, P) eps, its rank cut);
        # below it U^+ 1 is 0 (see the class doc)
        noise = max(rows.shape) * torch.finfo(rows.dtype).eps * float(pinv.norm()) * k**0.5
        if not length > noise:
            return torch.zeros_like(rows[0]), torch.zeros(k, dtype=rows.dtype)
        unit = best / length
        scale = (rows @ unit).sum()
        # the coefficients a with U^T a = U^+ 1 (a = (U^+)^T U^+ 1, as U^+ U U^+ = U^+), so
        # d = J^T c exactly, at any rank: plots, and the data-parallel form (docs/distributed.md)
        return scale * unit, scale / length * inv * (pinv.mT @ best)

    def weights(self, gramian: Gramian, losses: Tensor | None) -> Tensor:
        """Return the coefficients ``c`` of the ConFIG direction ``J^T c`` (on the factor)."""
        return self._solve(gramian.factor)[1]

    def aggregate(self, jacobian: Tensor, losses: Tensor | None = None) -> Tensor:
        """Return the ConFIG direction [P] of a Jacobian [K, P]."""
        self.check_rows(jacobian)
        direction, coefficients = self._solve(jacobian.detach())
        self.last_weights = coefficients.detach().cpu()
        if jacobian.requires_grad:  # the same value, differentiable as c @ J with c constant
            weighted = coefficients.to(jacobian) @ jacobian
            direction = direction + (weighted - weighted.detach())
        return direction
