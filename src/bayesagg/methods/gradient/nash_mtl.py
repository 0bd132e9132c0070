"""Nash-MTL: task weights from the Nash bargaining solution over the task gradients."""

from __future__ import annotations

import logging
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import Tensor

from bayesagg.methods.base import Space, StepInputs
from bayesagg.methods.gramian import ClippedGramianWeighting, Gramian, clip_factor

__all__ = ["NashBargainingError", "NashMTL", "NashMTLSolverError", "nash_bargaining_weights"]

_log = logging.getLogger(__name__)


class NashMTLSolverError(RuntimeError):
    """The convex sub-problem of Nash-MTL could not be solved (``on_solver_failure="raise"``)."""


class NashBargainingError(ArithmeticError):
    """:func:`nash_bargaining_weights` found no solution (none exists, or no convergence)."""

    def __init__(self, message: str, iterations: int) -> None:
        super().__init__(message)
        #: Newton iterations done before giving up.
        self.iterations = iterations


def _nash_objective(g: np.ndarray, alpha: np.ndarray) -> float:
    """``f(alpha) = 1/2 alpha^T G alpha - sum_i log alpha_i`` (alpha > 0)."""
    return 0.5 * float(alpha @ g @ alpha) - float(np.sum(np.log(alpha)))


def nash_bargaining_weights(
    gramian: np.ndarray,
    *,
    start: np.ndarray | None = None,
    max_iter: int = 200,
    tol: float = 1e-10,
) -> np.ndarray:
    """The Nash bargaining weights: ``alpha > 0`` with ``alpha_i (G alpha)_i = 1`` for all i.

    Navon et al. 2022 define the Nash-MTL direction by this system (their Eq. 3-4; Algorithm 1
    solves it for alpha at every step; their ``G^T G`` is our ``G``). It is exactly the
    stationarity condition of

        f(alpha) = 1/2 alpha^T G alpha - sum_i log alpha_i,   alpha > 0,

    (``grad f = G alpha - 1/alpha``), which is strictly convex for a positive semi-definite
    ``G`` and self-concordant (a convex quadratic plus a log barrier), so its minimiser, when
    one exists, is the unique solution, and Newton's method with the damped step
    ``1 / (1 + lambda)`` (lambda the Newton decrement; Nesterov 2004, Sec. 4.1.5) as the
    shortest step of a backtracking line search (Boyd & Vandenberghe 2004, Sec. 9.5-9.6)
    reaches it from any ``alpha > 0``, each step staying inside ``alpha > 0`` (the Dikin
    ellipsoid), quadratically once close. No point outside the domain can arise, unlike the
    linearisation of the official code's sequence of convex problems, which needs
    ``G alpha_prev > 0``.

    The start (default ones; the previous weights in training) is first rescaled along its ray
    to the best multiple, ``alpha^T G alpha = K``, which every solution satisfies. A solution
    exists iff no ``d >= 0, d != 0`` has ``G d = 0`` (some non-negative combination of the
    gradients vanishes); then f is unbounded below, the iterates grow without bound and
    :class:`NashBargainingError` is raised after ``max_iter`` iterations, as it is on
    non-finite input. Converged when ``max_i |alpha_i (G alpha)_i - 1| <= tol``.
    """
    g = np.asarray(gramian, dtype=np.float64)
    k = g.shape[0]
    if g.shape != (k, k) or k == 0:
        raise ValueError(f"gramian must be a non-empty square matrix, got shape {g.shape}")
    if not np.all(np.isfinite(g)):
        raise NashBargainingError("gramian has non-finite entries", 0)
    g = 0.5 * (g + g.T)  # J J^T in float32 is symmetric only up to rounding
    alpha = np.ones(k) if start is None else np.array(start, dtype=np.float64).reshape(-1)
    if alpha.shape != (k,) or not np.all(np.isfinite(alpha) & (alpha > 0)):
        alpha = np.ones(k)  # a start outside the domain: fall back to equal weights
    curvature = float(alpha @ g @ alpha)
    if curvature > 0:
        alpha *= np.sqrt(k / curvature)
    for iteration in range(max_iter):
        g_alpha = g @ alpha
        residual = float(np.max(np.abs(alpha * g_alpha - 1.0)))
        if residual <= tol:
            return alpha
        gradient = g_alpha - 1.0 / alpha
        try:
            step = np.linalg.solve(g + np.diag(1.0 / alpha**2), gradient)
        except np.linalg.LinAlgError as err:  # alpha has grown so large that 1/alpha^2 vanishes
            raise NashBargainingError(
                f"no solution: singular Newton system after {iteration} iterations (max alpha "
                f"{alpha.max():.3g}); a non-negative combination of the task gradients may vanish",
                iteration,
            ) from err
        decrement2 = max(float(gradient @ step), 0.0)  # Newton decrement squared
        # Backtracking (Boyd & Vandenberghe Alg. 9.5, alpha=1/4, beta=1/2), from the full step
        # down to at most the damped step 1 / (1 + lambda), which always stays in alpha > 0
        # and decreases f enough for a self-concordant f (their Sec. 9.6.4).
        damped = 1.0 / (1.0 + np.sqrt(decrement2))
        t, value = 1.0, _nash_objective(g, alpha)
        while t > damped:
            trial = alpha - t * step
            if np.all(trial > 0) and _nash_objective(g, trial) <= value - 0.25 * t * decrement2:
                break
            t *= 0.5
        alpha = alpha - max(t, damped) * step
        if not np.all(np.isfinite(alpha) & (alpha > 0)):
            raise NashBargainingError("Newton iterate left alpha > 0 (rounding)", iteration + 1)
    raise NashBargainingError(
        f"no solution after {max_iter} Newton iterations (max |alpha_i (G alpha)_i - 1| = "
        f"{residual:.3g}); a non-negative combination of the task gradients may vanish",
        max_iter,
    )


class NashMTL(ClippedGramianWeighting):
    """Multi-task learning as a bargaining game (Navon et al. 2022, ICML, Algorithm 1).

    The Nash bargaining solution is ``d = J^T alpha`` with ``alpha_i (G alpha)_i = 1`` for all i
    (their Eq. 3-4, ``G = J J^T``; Algorithm 1 solves for it at every weight update).

    ``solver="exact"`` (default) solves that system exactly with
    :func:`nash_bargaining_weights` (Newton's method on the convex problem whose stationarity
    condition it is), on ``G_n = G / |G|_F`` warm-started from the last weights, and maps the
    result back to ``G``'s solution, which is where the official iterates stop when they
    succeed. Deviation from the official code: its sub-problem below is linearised at the
    previous weights, and when the new batch's Gramian has ``(G alpha_prev)_i <= 0`` for some
    task that sub-problem is unbounded (10 of the first 17 steps of the QM9 demo; diagnosis in
    docs/methods-gradient.md), so the official code (and torchjd) keep the previous weights.

    ``solver="ccp"`` is the official code's solver (the paper's Sec. 5.1): a sequence of convex
    problems (concave part of ``phi(alpha) = sum_i log alpha_i + log (G alpha)_i`` linearised
    at the previous iterate):

        min_alpha  1^T G_n alpha + phi'(alpha_prev)^T alpha / s
        s.t.       -log(alpha_i s) - log((G_n alpha)_i) <= 0,  alpha >= 0,

    with ``G_n = G / s``, ``s = |G|_F``, solved with cvxpy / ECOS (``max_iters=100``), at most
    ``optim_niter`` times per update, warm-started from the last weights, stopping when
    ``|G_n alpha - 1/alpha| < 1e-3`` or alpha moves less than 1e-6 (official criteria; as there,
    the weights kept are those of the iterate at which the test fires).

    With either solver the weights are
    recomputed every ``update_weights_every`` steps (in between, :meth:`backward` needs only
    the gradient of ``sum_i alpha_i L_i``, no Jacobian), and the direction is rescaled to norm
    ``max_norm`` when longer (the official ``clip_grad_norm_``; 0 disables it).

    The sub-problem is stated in DPP form (the linearisation enters as a parameter vector, the
    constant term is dropped), so cvxpy compiles it once; it has the same minimiser as the
    official statement, which cvxpy recompiles at every solve.

    Solver failures are never silent: the official code (and torchjd) swallow an exception and
    keep the previous iterate. Here every failure (exception, no finite solution, no Newton
    convergence, a zero task gradient) increments
    :attr:`solver_failures` and is logged as a warning, keeping the previous iterate
    (``on_solver_failure="warn"``, default), or raises :class:`NashMTLSolverError`
    (``"raise"``). The weights start at ones, so a failure at the very first solve leaves the
    equal weights of that start, and is counted as such. Debug: ``dump_failures=FILE`` writes
    every failed solve (Gramian, previous weights, status) to FILE (:meth:`_dump`).

    Task-specific parameters receive the gradient of the plain sum of losses (the project's
    contract); the official code weights them by alpha too.

    Its representation-level variant ``nash-mtl-ub`` (:mod:`bayesagg.methods.representation`)
    bargains over the per-example gradients w.r.t. ``h``; there the ``max_norm`` clip acts on
    the representation-space direction, also on the steps between weight updates.
    """

    name = "nash-mtl"
    space: ClassVar[Space] = "parameters"
    hyperparameters = ("update_weights_every", "optim_niter", "max_norm", "on_solver_failure")
    state_fields = ("step", "alpha", "solver_failures")
    # alpha scales as 1 / |J| (and the clip): not homogeneous
    properties = frozenset({"permutation_invariant"})

    def __init__(
        self,
        num_tasks: int,
        *,
        update_weights_every: int = 1,
        optim_niter: int = 20,
        max_norm: float = 1.0,
        on_solver_failure: Literal["warn", "raise"] = "warn",
        solver: Literal["exact", "ccp"] = "exact",
        dump_failures: str | None = None,
    ) -> None:
        super().__init__(num_tasks)
        for label, value in (
            ("update_weights_every", update_weights_every),
            ("optim_niter", optim_niter),
        ):
            if int(value) != value or value < 1:
                raise ValueError(f"{label} must be a positive integer, got {value}")
        if not max_norm >= 0:
            raise ValueError(f"max_norm must be non-negative (0 disables clipping), got {max_norm}")
        if on_solver_failure not in ("warn", "raise"):
            raise ValueError(
                f"on_solver_failure must be 'warn' or 'raise', got {on_solver_failure!r}"
            )
        if solver not in ("exact", "ccp"):
            raise ValueError(f"solver must be 'exact' or 'ccp', got {solver!r}")
        self.solver: Literal["exact", "ccp"] = solver
        self.update_weights_every = int(update_weights_every)
        self.optim_niter = int(optim_niter)
        self.max_norm = float(max_norm)
        self.on_solver_failure: Literal["warn", "raise"] = on_solver_failure
        #: Debug: a file to which every failed solve is written (see :meth:`_dump`).
        self.dump_failures = None if dump_failures in (None, "") else str(dump_failures)
        self._dumped: list[dict[str, Any]] = []
        self._problem: dict[str, Any] | None = None
        self.reset()

    def reset(self) -> None:
        """Restart from equal weights at step 0 (the failure counter is kept)."""
        self.step = 0
        self.alpha = np.ones(self.num_tasks)
        if not hasattr(self, "solver_failures"):
            #: Number of failed convex solves since construction.
            self.solver_failures = 0

    # -- the weights ---------------------------------------------------------------------------
    def weights(self, gramian: Gramian, losses: Tensor | None) -> np.ndarray:
        """Return alpha (before the clip), updated every ``update_weights_every`` calls."""
        if self.step % self.update_weights_every == 0:
            g = gramian.numpy()
            scale = float(np.linalg.norm(g))
            if scale > 0:  # a zero Jacobian leaves nothing to bargain over
                self.alpha = self._solve(g / scale, scale)
        self.step += 1
        return self.alpha

    def _build(self) -> dict[str, Any]:
        import cvxpy as cp

        k = self.num_tasks
        alpha = cp.Variable(k, nonneg=True)
        g = cp.Parameter((k, k))
        slope = cp.Parameter(k)  # phi'(alpha_prev) / s
        log_scale = cp.Parameter()
        g_alpha = g @ alpha
        constraints = [-cp.log(alpha) - cp.log(g_alpha) <= log_scale]
        problem = cp.Problem(cp.Minimize(cp.sum(g_alpha) + slope @ alpha), constraints)
        return {"problem": problem, "alpha": alpha, "g": g, "slope": slope, "log_scale": log_scale}

    def _solve(self, g: np.ndarray, scale: float) -> np.ndarray:
        dead = np.flatnonzero(np.diag(g) <= 0.0).tolist()
        if dead:  # utility 0 whatever alpha: the bargaining problem has no interior solution
            self._failure(ValueError(f"zero gradient for task(s) {dead}"))
            return self.alpha
        if self.solver == "exact":
            return self._solve_exact(g, scale)
        return self._solve_ccp(g, scale)

    def _solve_exact(self, g: np.ndarray, scale: float) -> np.ndarray:
        # Solved on G_n = G / s (well scaled whatever the loss scale) and mapped back: if
        # alpha_n solves G_n alpha_n = 1/alpha_n, then alpha_n / sqrt(s) solves G alpha = 1/alpha,
        # the point the official iterates converge to (its constraints use the unnormalised G).
        root = float(np.sqrt(scale))
        try:
            return nash_bargaining_weights(g, start=self.alpha * root) / root
        except NashBargainingError as err:
            self._dump(g, scale, self.alpha, err.iterations, "not converged", err)
            self._failure(err)
            return self.alpha

    def _solve_ccp(self, g: np.ndarray, scale: float) -> np.ndarray:
        import cvxpy as cp

        if self._problem is None:
            self._problem = self._build()
        p = self._problem
        p["g"].value = g
        p["log_scale"].value = np.log(scale)
        alpha_t = self.alpha
        for iteration in range(self.optim_niter):
            new = None
            try:
                with np.errstate(divide="ignore", invalid="ignore"):
                    slope = (1.0 / alpha_t + (1.0 / (g @ alpha_t)) @ g) / scale
                p["slope"].value = slope  # raises ValueError when not finite
                p["problem"].solve(solver=cp.ECOS, warm_start=True, max_iters=100)
                new = p["alpha"].value
                if new is None or not np.all(np.isfinite(new)):
                    raise cp.SolverError(f"no finite solution (status {p['problem'].status})")
            except (cp.SolverError, ValueError, ArithmeticError) as err:
                self._dump(g, scale, alpha_t, iteration, p["problem"].status, err)
                self._failure(err)
                new = None
            # official stopping tests, on the iterate the solve started from
            if (
                new is None
                or np.linalg.norm(g @ alpha_t - 1.0 / (alpha_t + 1e-10)) < 1e-3
                or np.linalg.norm(new - alpha_t) < 1e-6
            ):
                break
            alpha_t = new
        return np.asarray(alpha_t, dtype=np.float64)

    def _dump(
        self,
        g: np.ndarray,
        scale: float,
        alpha_t: np.ndarray,
        iteration: int,
        status: str | None,
        err: Exception,
    ) -> None:
        """Append a failed solve to :attr:`dump_failures` (debug option; no-op when unset).

        The file (``torch.save``, loadable with ``weights_only=True``) holds a list of records:
        ``step``, ``iteration`` (inner solve), ``gramian`` (the unnormalised ``G``, float64),
        ``scale`` (``|G|_F``), ``alpha_prev`` (the weights the update started from),
        ``alpha_t`` (the iterate the failed solve linearised at), ``status`` (cvxpy's) and
        ``error``. The whole list is rewritten at each failure, so the file is complete
        whenever the run stops.
        """
        if self.dump_failures is None:
            return
        self._dumped.append(
            {
                "step": self.step,
                "iteration": iteration,
                "gramian": torch.from_numpy(g * scale),
                "scale": scale,
                "alpha_prev": torch.from_numpy(np.array(self.alpha, dtype=np.float64)),
                "alpha_t": torch.from_numpy(np.array(alpha_t, dtype=np.float64)),
                "status": str(status),
                "error": f"{type(err).__name__}: {err}",
            }
        )
        torch.save(self._dumped, self.dump_failures)

    def _failure(self, err: Exception) -> None:
        self.solver_failures += 1
        message = (
            f"Nash-MTL convex sub-problem failed at step {self.step} ({err}); "
            f"{self.solver_failures} failure(s) so far"
        )
        if self.on_solver_failure == "raise":
            raise NashMTLSolverError(message) from err
        # Every failure is counted (``solver_failures``, also in results); the log shows the 1st,
        # 10th, 100th, ... at WARNING so a long run is not flooded, the rest at DEBUG.
        n = self.solver_failures
        level = logging.WARNING if n == 10 ** (len(str(n)) - 1) else logging.DEBUG
        _log.log(level, "%s; keeping the previous weights", message)

    # -- steps that reuse the weights need no Jacobian ------------------------------------------
    def fill_gradients(self, losses: Tensor, inputs: StepInputs) -> None:
        """As :meth:`Aggregator.backward`; between updates, one backward of ``sum alpha_i L_i``."""
        shared_parameters, task_parameters, representation, scale = inputs
        if self.step % self.update_weights_every == 0:
            super().fill_gradients(losses, inputs)
            return
        if scale != 1.0:
            raise ValueError(
                f"{self.name}: a loss_scale (GradScaler) is supported with "
                "update_weights_every=1 only (the steps between updates clip a gradient norm)"
            )
        from bayesagg.distributed import all_reduce_mean, all_reduce_sum, resolve_group, world_size
        from bayesagg.methods._jacobian import accumulate_grad, check_inputs

        shared = check_inputs(shared_parameters, "shared_parameters")
        task = check_inputs(task_parameters, "task_parameters")
        weights = torch.as_tensor(self.alpha, dtype=losses.dtype, device=losses.device)
        if self.space == "representation":  # nash-mtl-ub: clip and push the direction on h
            if representation is None:
                raise ValueError(f"{self.name} needs representation=h")
            (grad_h,) = torch.autograd.grad(
                (weights * losses).sum(), [representation], retain_graph=True
            )
            norm = grad_h.norm()
            group = resolve_group(self.process_group)
            if group is not None:  # data parallelism: the global direction's norm, whose rows
                # are this process's rows / N (docs/distributed.md)
                norm = all_reduce_sum(norm.square(), group).sqrt() / world_size(group)
            factor = clip_factor(float(norm), self.max_norm)
            self.step += 1
            self.last_weights = (weights * factor).detach().cpu()
            if task:
                torch.autograd.backward(losses.sum(), inputs=task, retain_graph=True)
            torch.autograd.backward(representation, grad_h * factor, inputs=shared or None)
            return
        grads = torch.autograd.grad(
            (weights * losses).sum(),
            shared,
            retain_graph=bool(task),
            allow_unused=True,
            materialize_grads=True,
        )
        direction = torch.cat([g.reshape(-1) for g in grads])
        # data parallelism: the clip factor needs the global direction (docs/distributed.md)
        direction = all_reduce_mean(direction, resolve_group(self.process_group))
        factor = clip_factor(float(direction.norm()), self.max_norm)
        self.step += 1
        self.last_weights = (weights * factor).detach().cpu()
        accumulate_grad(shared, direction * factor)
        if task:
            torch.autograd.backward(losses.sum(), inputs=task)
