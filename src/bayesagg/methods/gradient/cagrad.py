"""CAGrad: the update closest to the average gradient that also improves the worst task."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from bayesagg.methods.gramian import Gramian, GramianWeighting

__all__ = ["CAGrad"]


class CAGrad(GramianWeighting):
    """Conflict-averse gradient descent (Liu et al. 2021, NeurIPS, Algorithm 1).

    Maximises the worst task's improvement ``min_i g_i . d`` within the ball
    ``|d - g_0| <= c |g_0|`` around the average gradient ``g_0``. Through the dual (their
    Eq. 7-8): ``w* = argmin_{w in simplex} g_w . g_0 + c |g_0| |g_w|`` with ``g_w = J^T w``,
    then ``d = g_0 + c |g_0| / |g_w| g_w``.

    Conventions (official / nash-mtl code, which produced the published baselines): ``c=0.4``;
    ``rescale`` 0 keeps ``d``, 1 returns ``d / (1 + c^2)`` (default), 2 returns ``d / (1 + c)``;
    the result is multiplied by K to match the scale of the sum of losses. torchjd's ``CAGrad``
    returns ``d`` itself (no rescale, no factor K).

    Deviations: the official code solves the dual with SciPy's SLSQP (finite differences,
    ``ftol=1e-6``); here it is a second-order cone programme solved by cvxpy / Clarabel (as
    torchjd), stated in DPP form so that it is compiled once per instance, on the Gramian
    divided by its mean diagonal (scale-free: the weights are unchanged, badly scaled Jacobians
    are handled). The official ``1e-8`` stabilisers are left out; if ``|g_w|`` is 0 (the
    origin is in the hull) the correction term is dropped and ``d = g_0``, which is what the
    official ``1e-8`` gives. A solver failure is counted in :attr:`solver_failures` and logged,
    and that step uses the uniform weights (``d = (1 + c) g_0`` before rescaling). For
    ``c >= 1`` CAGrad is non-conflicting (the ball holds 0); where the dual's direction
    conflicts (near Pareto-stationary inputs, where it is solver noise) the mean gradient's
    projection onto the dual cone is used instead (:meth:`_stationary_fallback`).
    """

    name = "cagrad"
    space = "parameters"
    hyperparameters = ("c", "rescale")
    properties = frozenset({"permutation_invariant", "scale_homogeneous"})
    accuracy = 1e-7  # Clarabel's default tolerances on the dual

    def __init__(self, num_tasks: int, *, c: float = 0.4, rescale: Literal[0, 1, 2] = 1) -> None:
        super().__init__(num_tasks)
        if not c >= 0:
            raise ValueError(f"c must be non-negative, got {c}")
        if rescale not in (0, 1, 2):
            raise ValueError(f"rescale must be 0, 1 or 2, got {rescale!r}")
        self.c = float(c)
        self.rescale: Literal[0, 1, 2] = rescale
        #: Number of failed dual solves (each logged; that step uses the uniform weights).
        self.solver_failures = 0
        self._dual: dict[str, Any] | None = None

    def claims(self) -> frozenset[str]:
        """Non-conflicting for ``c >= 1``: the ball then holds ``d = 0``, so the worst task's
        improvement at the optimum is at least 0 (Liu et al. 2021, Sec. 3)."""
        return self.properties | ({"non_conflicting"} if self.c >= 1 else frozenset())

    def weights(self, gramian: Gramian, losses: Tensor | None) -> np.ndarray:
        """Return the CAGrad weights (rescaled, times K): ``d = J^T weights``."""
        m = gramian.numpy()
        k = m.shape[0]
        scale = np.trace(m) / k
        if not scale > 0:  # a zero Jacobian: any weights give the zero direction
            return np.ones(k)
        m = m / scale
        mean = np.full(k, 1.0 / k)
        b = m @ mean  # J g_0
        c_norm = self.c * np.sqrt(max(mean @ b, 0.0))  # c |g_0|
        w = self._solve_dual(m, b, c_norm)
        gw_norm = np.sqrt(max(w @ m @ w, 0.0))
        coef = mean + (c_norm / gw_norm * w if gw_norm > 1e-12 else 0.0)
        if self.c >= 1 and np.min(m @ coef) < 0:
            coef = self._stationary_fallback(m, mean, gramian.dtype)
        return coef * k / {0: 1.0, 1: 1.0 + self.c**2, 2: 1.0 + self.c}[self.rescale]

    @staticmethod
    def _stationary_fallback(m: np.ndarray, mean: np.ndarray, dtype: torch.dtype) -> np.ndarray:
        """Weights of the mean gradient projected onto the dual cone ``{d : J d >= 0}``.

        For ``c >= 1`` the ball holds ``d = 0``, so the optimum has ``min_i g_i . d >= 0``.
        Near a Pareto-stationary point (the origin in, or within the solver's accuracy of,
        the convex hull of the gradients) that optimum is 0 and ``|g_w|`` vanishes: the dual
        formula ``g_0 + c |g_0| g_w / |g_w|`` then turns solver noise into a direction of the
        size of the gradients, conflicting and even outside the ball (the official ``1e-8``
        returns ``g_0``, also conflicting). The projection of ``g_0`` onto the dual cone
        attains the optimum 0, lies in the ball (``|pi(g_0) - g_0| <= |0 - g_0|``) and is
        the maximiser closest to ``g_0``; it is used whenever the dual's direction conflicts.
        """
        from bayesagg.methods.gradient._dual_cone import dual_cone_weights

        return dual_cone_weights(m, mean, torch.finfo(dtype).eps)

    def _solve_dual(self, m: np.ndarray, b: np.ndarray, c_norm: float) -> np.ndarray:
        k = m.shape[0]
        if c_norm == 0.0:
            return np.full(k, 1.0 / k)
        import cvxpy as cp

        if self._dual is None or self._dual["k"] != k:
            w = cp.Variable(k, nonneg=True)
            linear, factor = cp.Parameter(k), cp.Parameter((k, k))
            objective = cp.Minimize(linear @ w + cp.norm(factor @ w, 2))
            self._dual = {
                "k": k,
                "w": w,
                "linear": linear,
                "factor": factor,
                "problem": cp.Problem(objective, [cp.sum(w) == 1]),
            }
        dual = self._dual
        lam, vec = np.linalg.eigh(m)
        # |J^T w| = |A w| with A = diag(sqrt(lambda)) V^T; c|g_0| folded into A (DPP form)
        dual["factor"].value = c_norm * np.sqrt(np.clip(lam, 0.0, None))[:, None] * vec.T
        dual["linear"].value = b
        w = None
        try:
            # No warm start: Clarabel's would carry the previous step's solve into this one
            # (weights differ by ~1e-5), so a resumed run would not repeat an uninterrupted one.
            dual["problem"].solve(solver=cp.CLARABEL, warm_start=False)
            w = dual["w"].value
            if w is None or not np.all(np.isfinite(w)):
                raise cp.SolverError(f"no finite solution (status {dual['problem'].status})")
        except (cp.SolverError, ValueError, ArithmeticError) as err:
            import logging

            self.solver_failures += 1
            logging.getLogger(__name__).warning(
                "CAGrad dual solver failed (%s); using the uniform weights for this step "
                "(%d failure(s) so far)",
                err,
                self.solver_failures,
            )
            return np.full(k, 1.0 / k)
        w = np.clip(w, 0.0, None)
        return w / w.sum()
