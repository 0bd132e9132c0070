"""FairGrad: the update that maximises the alpha-fair utility of the tasks' loss decreases."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from torch import Tensor

from bayesagg.methods.gramian import ClippedGramianWeighting, Gramian

__all__ = ["FairGrad"]


class FairGrad(ClippedGramianWeighting):
    """Fair resource allocation in MTL (Ban & Ji 2024, ICML, Sec. 4, Eq. 4 and Algorithm 1).

    The update ``d = J^T w`` maximises ``sum_i (g_i . d)^(1 - alpha) / (1 - alpha)`` over a
    small ball; its first-order condition is the K equations ``(G w)_i = w_i^(-1/alpha)``
    (``G = J J^T``, their Eq. 4), solved as in the official code with SciPy's
    ``least_squares`` on the residual ``G w - w^(-1/alpha)``, ``w >= 0``, started at the
    uniform weights. ``alpha = 0`` is linear scalarisation (uniform weights), 1 proportional
    fairness, ``alpha -> inf`` max-min fairness.

    Conventions of the official code (``methods/weight_methods.py``, on the nash-mtl trainer):
    the direction is multiplied by K ("to match the sum loss") and rescaled to norm
    ``max_norm`` when longer (``clip_grad_norm_``, default 1.0; 0 disables it).
    ``last_weights`` are the weights actually applied (``K w`` times the clip factor).
    Defaults: ``alpha=1.0`` is the official class default and LibMTL's; the official QM9
    script (``experiments/quantum_chemistry/run.sh``) uses ``alpha=2.0``.

    Deviation: the equations are solved on ``G / s`` (``s`` its mean diagonal) and the weights
    rescaled by ``s^(-alpha / (alpha + 1))``, which solves the same equations exactly
    (``G (c w) = (c w)^(-1/alpha)`` for ``c = s^(-alpha/(alpha+1))``) but keeps the solver's
    tolerances meaningful for badly scaled gradients. A zero Jacobian gives a zero direction.
    When ``G`` is singular the equations may have no solution (e.g. a zero task gradient: its
    weight grows without bound); the solver's last iterate is used, as in the official code.
    """

    name = "fairgrad"
    space = "parameters"
    hyperparameters = ("alpha", "max_norm")
    # not homogeneous (w ~ |J|^(-2 alpha / (alpha + 1)), and the clip); not
    # permutation-invariant either: for a singular Gramian the equations have no solution and
    # the solver's last iterate depends on the order of the tasks
    properties: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, num_tasks: int, *, alpha: float = 1.0, max_norm: float = 1.0) -> None:
        super().__init__(num_tasks)
        if not alpha >= 0:
            raise ValueError(f"alpha must be non-negative, got {alpha}")
        if not max_norm >= 0:
            raise ValueError(f"max_norm must be non-negative (0 disables clipping), got {max_norm}")
        self.alpha = float(alpha)
        self.max_norm = float(max_norm)

    def weights(self, gramian: Gramian, losses: Tensor | None) -> np.ndarray:
        """Return ``K w`` (before the clip) for the FairGrad weights w of the Gramian."""
        return self.fair_weights(gramian.numpy()) * self.num_tasks

    def fair_weights(self, m: np.ndarray) -> np.ndarray:
        """Return the FairGrad weights w [K] (before the factor K) of a Gramian ``m``."""
        from scipy.optimize import least_squares

        k = m.shape[0]
        scale = np.trace(m) / k
        uniform = np.full(k, 1.0 / k)
        if self.alpha == 0.0 or not scale > 0:
            return uniform
        m_n = m / scale
        power = -1.0 / self.alpha

        def residual(w: np.ndarray) -> np.ndarray:
            with np.errstate(divide="ignore"):
                return m_n @ w - np.power(w, power)

        w = least_squares(residual, uniform, bounds=(0.0, np.inf)).x
        return w * scale ** (-self.alpha / (self.alpha + 1.0))
