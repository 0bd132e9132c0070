"""MGDA and MGDA-UB: the minimum-norm element of the convex hull of the task gradients."""

from __future__ import annotations

from typing import ClassVar, Literal, get_args

import numpy as np
from torch import Tensor

from bayesagg.methods.base import Space
from bayesagg.methods.gradient._min_norm import frank_wolfe
from bayesagg.methods.gramian import Gramian, GramianWeighting

__all__ = ["MGDA", "MGDAUB", "Normalization"]

Normalization = Literal["none", "l2", "loss", "loss+"]


class MGDA(GramianWeighting):
    """Multiple-gradient descent (Desideri 2012) with the Frank-Wolfe solver of Sener & Koltun 2018.

    Solves problem (3) of Sener & Koltun, ``min_{alpha in simplex} |sum_t alpha_t g_t|^2``, with
    Algorithm 2 (:func:`~bayesagg.methods.gradient._min_norm.frank_wolfe`, exact two-task line
    search of Alg. 1) on the Gramian, and returns ``K * sum_t alpha_t g_t``.

    ``normalization`` (official code's ``gradient_normalizers``): the min-norm problem is solved
    on ``g_t / n_t`` with ``n_t = 1`` ("none"), ``|g_t|`` ("l2"), ``L_t`` ("loss") or
    ``L_t |g_t|`` ("loss+"); as in the official code the weights then multiply the *raw*
    gradients (the official loss is ``sum_t alpha_t L_t``), so the guarantee ``J d >= 0``
    holds for "none" only. A zero norm or zero loss leaves that gradient unscaled.

    Notes on conventions:

    - Scale: the weights are multiplied by K (they sum to K), as in the nash-mtl code from which
      the BayesAgg-MTL paper's MGDA numbers come, so the step is on the scale of the sum of
      losses; Sener & Koltun's code and torchjd's ``MGDA`` use weights summing to 1.
    - Solver: ``max_iter=250`` and ``tol=1e-5`` are the official ``MAX_ITER`` / ``STOP_CRIT``;
      the stop test is the paper's "gamma ~ 0" (``gamma < tol``), where the official code tests
      the L1 change of alpha (``gamma |e_t - alpha|_1``). The official training script uses
      the projected-gradient variant started from the best pair; both converge to the same
      unique min-norm point.
    - Task-specific parameters receive the gradient of the plain sum of losses (the project's
      contract), not of ``sum_t alpha_t L_t`` as in the official code.
    """

    name = "mgda"
    space: ClassVar[Space] = "parameters"
    hyperparameters = ("normalization", "max_iter", "tol")
    uses_losses = True
    # not "non_conflicting": the min-norm point is, but Frank-Wolfe stops at the official
    # tolerance, and where that point is 0 (the origin in the hull of the gradients, e.g. two
    # opposite gradients) its slow convergence leaves a conflicting residual (measured: 2e-3
    # of |g| |J| on a pair of opposite gradients plus a third)
    properties = frozenset({"permutation_invariant", "scale_homogeneous"})
    _default_normalization: Normalization = "none"

    def __init__(
        self,
        num_tasks: int,
        *,
        normalization: Normalization | None = None,
        max_iter: int = 250,
        tol: float = 1e-5,
    ) -> None:
        super().__init__(num_tasks)
        normalization = self._default_normalization if normalization is None else normalization
        if normalization not in get_args(Normalization):
            raise ValueError(
                f"normalization must be one of {get_args(Normalization)}, got {normalization!r}"
            )
        if int(max_iter) != max_iter or max_iter < 1:
            raise ValueError(f"max_iter must be a positive integer, got {max_iter}")
        if not tol > 0:
            raise ValueError(f"tol must be positive, got {tol}")
        self.normalization: Normalization = normalization
        self.max_iter = int(max_iter)
        self.tol = float(tol)

    def weights(self, gramian: Gramian, losses: Tensor | None) -> np.ndarray:
        """Return ``K alpha`` for the min-norm weights alpha of the (normalised) rows.

        ``losses`` [K] are needed by the "loss" and "loss+" normalisations only (MGDA-UB's
        default is "loss+"): without them such a call raises one ``ValueError`` saying how to
        pass them, rather than quietly solving another problem without the normalisation.
        """
        m = gramian.numpy()
        norms = self._normalizers(m, losses)
        alpha = frank_wolfe(
            m / (norms[:, None] * norms[None, :]), max_iter=self.max_iter, tol=self.tol
        )
        return alpha * self.num_tasks

    def _normalizers(self, m: np.ndarray, losses: Tensor | None) -> np.ndarray:
        """Return the K gradient normalisers n_t (1 where a norm or loss is 0)."""
        k = m.shape[0]
        if m.shape != (self.num_tasks, self.num_tasks):
            raise ValueError(f"expected a Jacobian with {self.num_tasks} rows, got {k}")
        if self.normalization == "none":
            return np.ones(k)
        out = (
            np.sqrt(np.clip(np.diag(m), 0.0, None)) if self.normalization != "loss" else np.ones(k)
        )
        if self.normalization in ("loss", "loss+"):
            if losses is None:
                raise ValueError(
                    f"{self.name}: normalization={self.normalization!r} needs the task losses "
                    "(it divides each task's gradient by its loss): call aggregate(jacobian, "
                    "losses) with the K losses, or create the method with normalization='none' "
                    "or 'l2' to aggregate a matrix alone"
                )
            values = losses.detach().double().cpu().numpy().reshape(-1)
            if values.shape != (k,) or (values < 0).any() or not np.isfinite(values).all():
                raise ValueError(
                    f"normalization={self.normalization!r} needs {k} finite non-negative losses, "
                    f"got {values.tolist()}"
                )
            out = out * values
        return np.where(out > 0, out, 1.0)


class MGDAUB(MGDA):
    """MGDA-UB: MGDA on the gradients w.r.t. the shared representation (Sener & Koltun 2018, Sec. 3.3).

    The Jacobian is that of the K mean losses w.r.t. ``h`` [B, D], flattened per example to
    B*D (Sener & Koltun's upper bound, Eq. 4-5; one backward through the heads only); the
    direction [B, D] is pushed through the encoder. Default normalisation "loss+", the value
    of the official configuration for MGDA-UB. Other libraries (e.g. LibMTL's ``rep_grad``)
    first sum the per-example gradients over the batch, giving a K x D problem instead.
    """

    name = "mgda-ub"
    space = "representation"
    _default_normalization: Normalization = "loss+"
