"""ConFIG: the conflict-free direction with equal cosine similarity to every task gradient."""

from __future__ import annotations

import torch
from torch import Tensor

from bayesagg.methods.base import Aggregator

__all__ = ["ConFIG"]


class ConFIG(Aggregator):
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

    Not included: the momentum variant M-ConFIG and the preference weights (the official
    ``weight_model``; equal weights here, the paper's default).
    """

    name = "config"
    space = "parameters"

    def aggregate(self, jacobian: Tensor) -> Tensor:
        """Return the ConFIG direction [P] of a Jacobian [K, P]."""
        if jacobian.shape[0] != self.num_tasks:
            raise ValueError(f"expected {self.num_tasks} rows, got {jacobian.shape[0]}")
        norms = jacobian.norm(dim=1)
        inv = torch.where(norms > 0, 1.0 / norms, torch.zeros_like(norms))
        units = jacobian * inv[:, None]
        ones = torch.ones(jacobian.shape[0], dtype=jacobian.dtype, device=jacobian.device)
        # U^+ 1 = U^T (U U^T)^+ 1: its coefficients on the unit rows, via pinv of the rows
        pinv = torch.linalg.pinv(units)
        best = pinv @ ones
        length = best.norm()
        if not length > 0:
            self.last_weights = torch.zeros(jacobian.shape[0], dtype=jacobian.dtype)
            return torch.zeros_like(jacobian[0])
        unit = best / length
        scale = (jacobian @ unit).sum()
        # the coefficients a with U^T a = U^+ 1 (a = (U^+)^T U^+ 1, as U^+ U U^+ = U^+), so
        # d = J^T c exactly, at any rank: plots, and the data-parallel form (docs/distributed.md)
        self.last_weights = (scale / length * inv * (pinv.mT @ best)).detach().cpu()
        return scale * unit

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_tasks={self.num_tasks})"
