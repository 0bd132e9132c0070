"""Nash-MTL's solvers on a Gramian captured where the official sub-problem is unbounded.

The fixture ``nash_mtl_qm9_unbounded.npz`` is the first failing solve of the QM9 demo's
configuration (``python -m bayesagg run --benchmark qm9 --method nash-mtl --protocol quick
--epochs 6 --train-limit 1000 --model-option dim=32 --hp solver=ccp --hp dump_failures=FILE``,
step 2): the unnormalised 11 x 11 Gramian and the weights of the previous step.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from bayesagg.methods import create
from bayesagg.methods.gradient.nash_mtl import NashBargainingError, nash_bargaining_weights

FIXTURE = Path(__file__).parent / "fixtures" / "nash_mtl_qm9_unbounded.npz"


def captured() -> tuple[np.ndarray, np.ndarray]:
    data = np.load(FIXTURE)
    g = data["gramian"]  # J J^T formed in float32: symmetric up to ~1e-6 relative
    return 0.5 * (g + g.T), data["alpha_prev"]


def jacobian_of(gramian: np.ndarray) -> torch.Tensor:
    """A K x K "Jacobian" whose Gramian is ``gramian`` (its Cholesky factor)."""
    return torch.from_numpy(np.linalg.cholesky(gramian))


def nash_residual(gramian: np.ndarray, alpha: np.ndarray) -> float:
    """``max_i |alpha_i (G alpha)_i - 1|``, computed here in NumPy (the Nash condition)."""
    return float(np.max(np.abs(alpha * (gramian @ alpha) - 1.0)))


def started_from(alpha_prev: np.ndarray, **kwargs):
    method = create("nash-mtl", num_tasks=len(alpha_prev), max_norm=0.0, **kwargs)
    method.alpha = alpha_prev.copy()
    method.step = 2  # as captured (only the weights' start matters)
    return method


def test_fixture_starts_outside_the_linearisation_domain() -> None:
    """The cause: (G_n alpha_prev)_i < 0 for some tasks, so log (G_n alpha)_i is undefined there."""
    g, alpha_prev = captured()
    gn = g / np.linalg.norm(g)
    assert np.linalg.eigvalsh(gn).min() > 1e-3  # positive definite: a solution exists
    assert (gn @ alpha_prev).min() < -1.0 and int(((gn @ alpha_prev) <= 0).sum()) == 4


def test_official_sub_problem_is_unbounded_and_the_failure_counted(caplog, tmp_path) -> None:
    pytest.importorskip("cvxpy")
    g, alpha_prev = captured()
    dump = tmp_path / "failures.pt"
    method = started_from(alpha_prev, solver="ccp", dump_failures=str(dump))
    with caplog.at_level(logging.WARNING):
        method.aggregate(jacobian_of(g))
    assert method.solver_failures == 1 and "status unbounded" in caplog.text
    np.testing.assert_array_equal(method.alpha, alpha_prev)  # previous weights kept
    records = torch.load(dump, weights_only=True)
    assert len(records) == 1
    record = records[0]
    assert record["status"] == "unbounded" and record["step"] == 2 and record["iteration"] == 0
    np.testing.assert_allclose(record["gramian"].numpy(), g, rtol=0, atol=1e-15)
    np.testing.assert_array_equal(record["alpha_prev"].numpy(), alpha_prev)


def test_captured_gramian_now_solves_to_the_nash_condition() -> None:
    """Default solver, same start: no failure, and alpha_i (G alpha)_i = 1, alpha > 0."""
    g, alpha_prev = captured()
    method = started_from(alpha_prev)
    j = jacobian_of(g)
    d = method.aggregate(j)
    assert method.solver_failures == 0
    alpha = method.alpha
    assert alpha.min() > 0
    assert nash_residual(g, alpha) <= 1e-8
    # the direction is J^T alpha and improves every task (J d = G alpha > 0)
    torch.testing.assert_close(d, torch.from_numpy(alpha) @ j)
    assert (j @ d).min() > 0


def test_exact_solution_from_any_start() -> None:
    g, alpha_prev = captured()
    gn = g / np.linalg.norm(g)
    ref = nash_bargaining_weights(gn)
    spread = 10.0 ** np.linspace(-6, 6, 11)  # far from the solution's proportions
    for start in (alpha_prev, 1e-6 * np.ones(11), spread, spread[::-1], -np.ones(11)):
        alpha = nash_bargaining_weights(gn, start=start)
        assert nash_residual(gn, alpha) <= 1e-10
        np.testing.assert_allclose(alpha, ref, rtol=1e-8)


def test_newton_converges_quadratically_from_the_previous_weights() -> None:
    """Warm-started as in training, about ten Newton steps reach machine precision (10 here;
    17 without the line search, only damped steps; more with a wrong Hessian)."""
    g, alpha_prev = captured()
    gn = g / np.linalg.norm(g)
    alpha = nash_bargaining_weights(gn, start=alpha_prev, max_iter=12, tol=1e-12)
    assert nash_residual(gn, alpha) <= 1e-12


def test_exact_is_the_point_the_official_iterates_reach() -> None:
    """Where the official sequence of convex problems succeeds (here from equal weights), it
    stops at the Nash solution of the unnormalised G; the default solver returns the same."""
    pytest.importorskip("cvxpy")
    gen = torch.Generator().manual_seed(3)
    for k in (2, 5, 11):
        j = torch.randn(k, 4 * k, generator=gen, dtype=torch.float64)
        g = (j @ j.T).numpy()
        official = create("nash-mtl", num_tasks=k, max_norm=0.0, solver="ccp")
        exact = create("nash-mtl", num_tasks=k, max_norm=0.0)
        for _ in range(2):  # the second step is warm-started from the first
            official.aggregate(j)
            exact.aggregate(j)
            assert nash_residual(g, official.alpha) <= 1e-6
            assert nash_residual(g, exact.alpha) <= 1e-10
            np.testing.assert_allclose(exact.alpha, official.alpha, rtol=1e-6)
        assert official.solver_failures == 0 and exact.solver_failures == 0


def test_no_bargaining_solution_is_a_counted_failure(caplog, tmp_path) -> None:
    """Opposite gradients: 1^T J = 0, so f is unbounded below; counted, logged, dumped."""
    j = torch.tensor([[1.0, 2.0, 0.5], [-1.0, -2.0, -0.5]], dtype=torch.float64)
    with pytest.raises(NashBargainingError, match="no solution"):
        nash_bargaining_weights((j @ j.T).numpy() / 5.25)
    dump = tmp_path / "failures.pt"
    method = create("nash-mtl", num_tasks=2, dump_failures=str(dump))
    with caplog.at_level(logging.WARNING):
        d = method.aggregate(j)
    assert method.solver_failures == 1 and "no solution" in caplog.text
    assert torch.isfinite(d).all()
    np.testing.assert_array_equal(method.alpha, np.ones(2))  # the start is kept
    (record,) = torch.load(dump, weights_only=True)
    assert record["error"].startswith("NashBargainingError")


def test_no_solution_can_raise() -> None:
    from bayesagg.methods.gradient.nash_mtl import NashMTLSolverError

    j = torch.tensor([[1.0, 2.0], [-1.0, -2.0]], dtype=torch.float64)
    with pytest.raises(NashMTLSolverError, match="no solution"):
        create("nash-mtl", num_tasks=2, on_solver_failure="raise").aggregate(j)


def test_unknown_solver_is_rejected() -> None:
    with pytest.raises(ValueError, match="solver must be"):
        create("nash-mtl", num_tasks=2, solver="ecos")
