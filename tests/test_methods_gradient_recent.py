"""Paper-derived properties of the aggregators published since 2023 (float64, seeded).

Each check uses the paper's definition directly (an equation or a brute-force solver), never
the method's own helpers.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bayesagg.methods import create
from bayesagg.methods.gradient._min_norm import frank_wolfe
from bayesagg.methods.gradient._simplex import project_onto_simplex


def random_jacobian(k: int, p: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    j = torch.randn(k, p, generator=gen, dtype=torch.float64)
    j[0] = -0.7 * j[0] - j[1]  # conflict
    return j


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0, 5.0])
@pytest.mark.parametrize("scale", [1e-6, 1.0, 1e6])
def test_fairgrad_solves_its_equations(alpha: float, scale: float) -> None:
    """Ban & Ji Eq. 4: (G w)_i = w_i^(-1/alpha), with d = K J^T w (official scale)."""
    jac = random_jacobian(4, 30, seed=1) * scale
    method = create("fairgrad", num_tasks=4, alpha=alpha, max_norm=0.0)
    d = method.aggregate(jac)
    w = method.last_weights / 4
    assert torch.all(w > 0)
    lhs, rhs = jac @ (jac.T @ w), w ** (-1.0 / alpha)
    torch.testing.assert_close(lhs, rhs, rtol=1e-5, atol=0)
    torch.testing.assert_close(d, 4 * w @ jac)


def test_fairgrad_alpha_zero_is_linear_scalarisation_and_clip() -> None:
    jac = random_jacobian(3, 10, seed=2)
    torch.testing.assert_close(
        create("fairgrad", num_tasks=3, alpha=0.0, max_norm=0.0).aggregate(jac), jac.sum(0)
    )
    d = create("fairgrad", num_tasks=3, max_norm=0.1).aggregate(jac)
    assert abs(float(d.norm()) - 0.1) < 1e-12


def test_fairgrad_large_alpha_tends_to_max_min_fairness() -> None:
    """As alpha grows, the loss decreases g_i . d become equal (max-min fair, Sec. 3)."""
    jac = random_jacobian(3, 10, seed=3)
    spread = []
    for alpha in (1.0, 10.0, 100.0):
        rates = jac @ create("fairgrad", num_tasks=3, alpha=alpha, max_norm=0.0).aggregate(jac)
        spread.append(float(rates.max() / rates.min()))
    assert spread[0] > spread[1] > spread[2] and spread[2] < 1.1


@pytest.mark.parametrize("shape", [(2, 6), (4, 30), (7, 50)])
def test_config_equal_positive_cosines_and_projection_length(shape) -> None:
    """Liu et al. Eq. 2: cos(d, g_i) equal and positive for all i; |d| = sum_i g_i . d/|d|."""
    jac = random_jacobian(*shape, seed=4)
    d = create("config", num_tasks=shape[0]).aggregate(jac)
    cos = (jac @ d) / (jac.norm(dim=1) * d.norm())
    torch.testing.assert_close(cos, cos.mean().expand_as(cos), rtol=1e-8, atol=1e-12)
    assert cos.min() > 0
    torch.testing.assert_close(d.norm(), (jac @ (d / d.norm())).sum())


@pytest.mark.parametrize("angle", [0.3, 1e-9])
def test_config_weights_give_its_direction_even_near_rank_deficiency(angle) -> None:
    """``last_weights @ J`` is the direction (the data-parallel form reads the weights).

    Two nearly opposite gradients (angle ``pi - angle``): the unit rows' smallest singular value
    ~ angle is kept by ``pinv(U)`` but, squared, falls below the cut of a pseudo-inverse of the
    unit rows' Gramian, which gave weights unrelated to the direction.
    """
    t = torch.tensor(angle, dtype=torch.float64)
    jac = torch.zeros(3, 6, dtype=torch.float64)
    jac[0, 0], jac[1, 0], jac[1, 1], jac[2, 2] = 2.0, -3.0 * t.cos(), 3.0 * t.sin(), 0.5
    method = create("config", num_tasks=3)
    d = method.aggregate(jac)
    assert d.norm() > 0
    torch.testing.assert_close(method.last_weights @ jac, d, rtol=1e-6, atol=1e-6 * d.norm())


@pytest.mark.parametrize("shape", [(3, 10), (6, 40), (9, 5)])
def test_dualproj_is_the_closest_non_conflicting_update(shape) -> None:
    """Against a conic solver: argmin |x - mean g|^2 subject to J x >= 0."""
    cp = pytest.importorskip("cvxpy")
    jac = random_jacobian(*shape, seed=5)
    d = create("dualproj", num_tasks=shape[0]).aggregate(jac).numpy()
    j = jac.numpy()
    x = cp.Variable(shape[1])
    cp.Problem(cp.Minimize(cp.sum_squares(x - j.mean(0))), [j @ x >= 0]).solve(solver=cp.CLARABEL)
    np.testing.assert_allclose(d, x.value, atol=1e-6 * np.linalg.norm(x.value) + 1e-9)
    assert (j @ d).min() >= -1e-9 * np.linalg.norm(j) ** 2


def test_dualproj_keeps_a_non_conflicting_mean() -> None:
    jac = random_jacobian(3, 8, seed=6).abs()  # all positive: no conflict
    torch.testing.assert_close(create("dualproj", num_tasks=3).aggregate(jac), jac.mean(0))


def test_excess_mtl_follows_equations_6_to_9() -> None:
    """Brute force over three steps: AdaGrad diagonal, baseline at step 1, EG update."""
    eta = 0.3
    js = [random_jacobian(3, 12, seed=s) for s in range(3)]
    method = create("excess-mtl", num_tasks=3, robust_step_size=eta)
    weights = np.ones(3)
    squares = np.zeros((3, 12))
    baseline = None
    for j in js:
        d = method.aggregate(j)
        g = j.numpy()
        squares += g**2
        risk = (g**2 / np.sqrt(squares + 1e-7)).sum(axis=1)
        if baseline is None:
            baseline = risk
        else:
            weights = weights * np.exp(eta * risk / baseline)
            weights = 3 * weights / weights.sum()
        np.testing.assert_allclose(method.last_weights.numpy(), weights, rtol=1e-12)
        np.testing.assert_allclose(d.numpy(), weights @ g, rtol=1e-12)
    state = method.state_dict()
    method.reset()
    assert method.squared_sum is None
    method.load_state_dict(state)
    twin = create("excess-mtl", num_tasks=3, robust_step_size=eta)
    twin.load_state_dict(state)
    torch.testing.assert_close(method.aggregate(js[0]), twin.aggregate(js[0]))


def test_excess_mtl_rejects_a_new_shape() -> None:
    method = create("excess-mtl", num_tasks=2)
    method.aggregate(random_jacobian(2, 5))
    with pytest.raises(
        ValueError, match=r"shape \(2, 5\), got a Jacobian of shape \(2, 6\).*reset"
    ):
        method.aggregate(random_jacobian(2, 6))


def test_modo_step_is_projected_gradient_on_the_simplex() -> None:
    jac = random_jacobian(4, 20, seed=7) / 5
    method = create("modo", num_tasks=4, gamma=0.05, rho=0.1)
    lam = np.full(4, 0.25)
    g = (jac @ jac.T).numpy()
    for _ in range(3):
        d = method.aggregate(jac)
        target = lam - 0.05 * (g @ lam + 0.1 * lam)
        # the projection by its definition: the closest simplex point (brute-force QP)
        cp = pytest.importorskip("cvxpy")
        x = cp.Variable(4, nonneg=True)
        cp.Problem(cp.Minimize(cp.sum_squares(x - target)), [cp.sum(x) == 1]).solve()
        lam = x.value
        np.testing.assert_allclose(method.last_weights.numpy(), lam, atol=1e-6)
        torch.testing.assert_close(d, method.last_weights @ jac)
    method.reset()
    np.testing.assert_allclose(method.lam, np.full(4, 0.25))


def test_sdmgrad_limits() -> None:
    """lambda -> inf: the mean gradient; lambda = 0 with many steps: MGDA's min-norm point."""
    jac = random_jacobian(4, 25, seed=8)
    d = create("sdmgrad", num_tasks=4, lambda_=1e9).aggregate(jac)
    torch.testing.assert_close(d, jac.mean(0), rtol=1e-6, atol=1e-9)
    m = create("sdmgrad", num_tasks=4, lambda_=0.0, n_iter=5000, lr=0.5, momentum=0.0)
    d = m.aggregate(jac)
    alpha = frank_wolfe((jac @ jac.T).numpy(), max_iter=100_000, tol=1e-14)
    ref = torch.as_tensor(alpha) @ jac
    assert (d - ref).norm() <= 1e-3 * ref.norm()


@pytest.mark.parametrize("seed", range(5))
def test_simplex_projection_against_a_qp(seed: int) -> None:
    cp = pytest.importorskip("cvxpy")
    v = np.random.default_rng(seed).normal(size=6) * 3
    x = cp.Variable(6, nonneg=True)
    cp.Problem(cp.Minimize(cp.sum_squares(x - v)), [cp.sum(x) == 1]).solve()
    np.testing.assert_allclose(project_onto_simplex(v), x.value, atol=1e-6)
    np.testing.assert_allclose(project_onto_simplex(v * 1e15), project_onto_simplex(v * 1e15 + 7))


@pytest.mark.parametrize("name", ["excess-mtl", "modo", "sdmgrad"])
def test_stateful_methods_resume(name: str) -> None:
    js = [random_jacobian(3, 9, seed=s) for s in range(4)]
    a = create(name, num_tasks=3)
    for j in js[:2]:
        a.aggregate(j)
    b = create(name, num_tasks=3)
    b.load_state_dict(a.state_dict())
    for j in js[2:]:
        torch.testing.assert_close(a.aggregate(j), b.aggregate(j), rtol=0, atol=0)
    a.reset()
    fresh = create(name, num_tasks=3)
    torch.testing.assert_close(a.aggregate(js[0]), fresh.aggregate(js[0]))


def test_ntkmtl_weights_from_the_gradient_norms() -> None:
    """n = 1: the NTK of task i is |g_i|^2; w_i = (sum_j |g_j|^2 / |g_i|^2)^(1/2), times K."""
    jac = random_jacobian(3, 10, seed=9) * torch.tensor([[1.0], [10.0], [0.1]], dtype=torch.float64)
    method = create("ntkmtl", num_tasks=3, max_norm=0.0)
    d = method.aggregate(jac)
    sq = (jac**2).sum(1)
    w = 3 * (sq.sum() / sq).sqrt()
    torch.testing.assert_close(method.last_weights, w)
    torch.testing.assert_close(d, w @ jac)
    # balanced: every weighted gradient has the same norm (the equalised NTK eigenvalues)
    norms = (w[:, None] * jac).norm(dim=1)
    torch.testing.assert_close(norms, norms.mean().expand(3))
    clipped = create("ntkmtl", num_tasks=3, max_norm=0.5).aggregate(jac)
    torch.testing.assert_close(clipped, d * 0.5 / d.norm())


def test_ntkmtl_sr_eigenvalues_by_brute_force() -> None:
    """The chunk-mean losses' gradients w.r.t. h, from per-example losses, then eigvalsh."""
    gen = torch.Generator().manual_seed(10)
    b, dim, k = 10, 3, 2  # 10 = 3 + 3 + 3 + 1 with torch.chunk(4)
    h = torch.randn(b, dim, generator=gen, dtype=torch.float64, requires_grad=True)
    heads = torch.randn(k, dim, generator=gen, dtype=torch.float64)
    y = torch.randn(b, k, generator=gen, dtype=torch.float64) * torch.tensor([1.0, 5.0])
    per_example = (h @ heads.T - y) ** 2  # [B, K]
    losses = per_example.mean(0)
    jac = torch.stack([torch.autograd.grad(loss, h, retain_graph=True)[0] for loss in losses])
    method = create("ntkmtl-sr", num_tasks=k)
    expected = []
    for i in range(k):
        rows = []
        for chunk in torch.chunk(per_example[:, i], 4):
            chunk_loss = chunk.mean()  # official: the mean over each chunk
            rows.append(torch.autograd.grad(chunk_loss, h, retain_graph=True)[0].reshape(-1))
        rows = torch.stack(rows)
        expected.append(torch.linalg.eigvalsh(rows @ rows.T)[-1])
    lam = torch.stack(expected)
    torch.testing.assert_close(method.eigenvalues(jac), lam)
    d = method.direction(jac, losses=losses, representation=h)
    w = (lam.sum() / lam).sqrt()
    torch.testing.assert_close(method.last_weights, w)
    torch.testing.assert_close(d, torch.tensordot(w, jac, dims=1))
    torch.testing.assert_close(method.task_weights(), w)
