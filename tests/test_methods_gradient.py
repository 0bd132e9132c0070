"""Mathematical properties of the gradient aggregators, on hard Jacobians (float64, seeded)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bayesagg.methods import Aggregator, create, method_class, names, representation_forms
from bayesagg.methods.gradient._min_norm import frank_wolfe, min_norm_2

# every registered aggregator (the derived -ub forms: test_methods_representation)
GRADIENT = [
    n
    for n in names()
    if n not in representation_forms() and issubclass(method_class(n), Aggregator)
]
DETERMINISTIC = ["mgda", "cagrad", "imtl-g", "nash-mtl", "aligned-mtl", "upgrad"]
DETERMINISTIC += ["fairgrad", "config", "dualproj", "excess-mtl", "modo", "sdmgrad", "ntkmtl"]
DETERMINISTIC += ["ntkmtl-sr"]
# methods whose output is homogeneous of degree 1 in J (Nash-MTL is not: alpha ~ 1/|J|;
# FairGrad: w ~ |J|^(-2 alpha/(alpha+1)); MoDo's step gamma acts on the raw Gramian;
# NTKMTL is clipped to max_norm)
LINEAR = [n for n in GRADIENT if n not in ("nash-mtl", "fairgrad", "modo", "ntkmtl")]


def make(name: str, k: int, **kwargs):
    """Build a method; the loss-based MGDA-UB normalisation needs losses, so use L2 here."""
    if name == "mgda-ub":
        kwargs.setdefault("normalization", "l2")
    if name in ("pcgrad", "graddrop", "gradvac"):
        kwargs.setdefault("seed", 0)
    return create(name, num_tasks=k, **kwargs)


def random_jacobian(k: int, p: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(k, p, generator=gen, dtype=torch.float64)


def hard_jacobians() -> dict[str, torch.Tensor]:
    j = random_jacobian(5, 40)
    cases = {"zero": torch.zeros(5, 40, dtype=torch.float64)}
    cases["rank1"] = torch.outer(torch.arange(1.0, 6.0, dtype=torch.float64), j[0])
    cases["rank2-dup"] = torch.cat([j[:2], j[:2], j[:1] - j[1:2]])
    cases["zero-row"] = torch.cat([j[:4], torch.zeros(1, 40, dtype=torch.float64)])
    cases["wide-k"] = random_jacobian(5, 3)  # K > P: the origin may be in the hull
    for e in (-10, -5, 5, 10):
        cases[f"scale1e{e}"] = j * 10.0**e
    cases["mixed-scales"] = j * torch.logspace(-10, 10, 5, dtype=torch.float64)[:, None]
    return cases


HARD = hard_jacobians()


@pytest.mark.parametrize("case", list(HARD))
@pytest.mark.parametrize("name", GRADIENT)
def test_finite_output_of_right_shape(name: str, case: str) -> None:
    jac = HARD[case]
    d = make(name, jac.shape[0]).aggregate(jac)
    assert d.shape == (jac.shape[1],)
    assert d.dtype == jac.dtype
    assert torch.isfinite(d).all(), f"{name} on {case}: {d}"
    if case == "zero":
        assert torch.count_nonzero(d) == 0


@pytest.mark.parametrize("name", ["mgda", "mgda-ub", "upgrad"])
@pytest.mark.parametrize("shape", [(2, 7), (5, 30), (20, 50)])
def test_non_conflicting(name: str, shape: tuple[int, int]) -> None:
    """J d >= 0: no task's loss increases to first order (MGDA: KKT; UPGrad: dual cone).

    MGDA only without gradient normalisation: the official code applies the weights found on
    normalised gradients to the raw ones, which can conflict.
    """
    kwargs = {"normalization": "none"} if name.startswith("mgda") else {}
    for seed in range(3):
        jac = random_jacobian(*shape, seed=seed)
        d = make(name, shape[0], **kwargs).aggregate(jac)
        assert (jac @ d).min() > 0


@pytest.mark.parametrize("shape", [(11, 8), (8, 3), (6, 1)])
def test_upgrad_non_conflicting_when_origin_in_hull(shape: tuple[int, int]) -> None:
    """K > P: the exact projection still gives J d >= 0 up to rounding."""
    for seed in range(3):
        jac = random_jacobian(*shape, seed=seed)
        d = make("upgrad", shape[0]).aggregate(jac)
        assert (jac @ d).min() >= -1e-10 * jac.norm() ** 2


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_invariant_to_task_order(name: str) -> None:
    jac = random_jacobian(6, 25, seed=3)
    perm = torch.randperm(6, generator=torch.Generator().manual_seed(1))
    d = make(name, 6).aggregate(jac)
    d_perm = make(name, 6).aggregate(jac[perm])
    torch.testing.assert_close(d_perm, d, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("name", ["pcgrad", "gradvac", "graddrop"])
def test_random_methods_reproducible_with_seed(name: str) -> None:
    jac = random_jacobian(6, 25, seed=3)
    first = [make(name, 6, seed=11).aggregate(jac) for _ in range(2)]
    torch.testing.assert_close(first[0], first[1], rtol=0, atol=0)


@pytest.mark.parametrize("name", ["pcgrad", "gradvac", "graddrop"])
def test_random_methods_without_seed_follow_the_global_rng(name: str) -> None:
    """``seed=None`` seeds the method's generator from the global torch RNG: the same global
    seed gives the same stream, another global seed another one."""
    streams = []
    for global_seed in (5, 5, 6):
        torch.manual_seed(global_seed)
        streams.append(make(name, 6, seed=None).generator.initial_seed())
    assert streams[0] == streams[1] != streams[2]


@pytest.mark.parametrize("name", ["pcgrad", "gradvac"])
def test_two_task_random_methods_are_order_invariant(name: str) -> None:
    """With two tasks there is only one order, so swapping the rows changes nothing."""
    jac = random_jacobian(2, 9, seed=4)
    jac[1] = -jac[0] + 0.3 * jac[1]  # conflicting
    d = make(name, 2).aggregate(jac)
    torch.testing.assert_close(make(name, 2).aggregate(jac.flip(0)), d)


@pytest.mark.parametrize("name", LINEAR)
@pytest.mark.parametrize("scale", [1e-8, 1e-3, 7.0, 1e9])
def test_homogeneous_under_scaling(name: str, scale: float) -> None:
    jac = random_jacobian(4, 20, seed=5)
    d = make(name, 4).aggregate(jac)
    torch.testing.assert_close(make(name, 4).aggregate(jac * scale), d * scale, rtol=1e-5, atol=0)


def test_pcgrad_matches_definition_on_two_tasks() -> None:
    g1 = torch.tensor([1.0, 0.0], dtype=torch.float64)
    g2 = torch.tensor([-1.0, 1.0], dtype=torch.float64)
    d = make("pcgrad", 2).aggregate(torch.stack([g1, g2]))
    p1 = g1 - (g1 @ g2) / (g2 @ g2) * g2
    p2 = g2 - (g2 @ g1) / (g1 @ g1) * g1
    torch.testing.assert_close(d, p1 + p2)


def test_imtl_projections_on_unit_gradients_are_equal() -> None:
    jac = random_jacobian(5, 30, seed=6)
    m = make("imtl-g", 5)
    d = m.aggregate(jac)
    proj = (jac / jac.norm(dim=1, keepdim=True)) @ d
    torch.testing.assert_close(proj, proj.mean().expand(5))
    assert math.isclose(float(m.last_weights.sum()), 1.0, rel_tol=1e-12)


def test_aligned_mtl_makes_aligned_gradients_orthogonal_with_equal_norms() -> None:
    """The aligned matrix J^T B has singular values all sqrt(sigma) (condition number 1)."""
    jac = random_jacobian(4, 30, seed=7)
    m = make("aligned-mtl", 4)
    m.aggregate(jac)
    g = (jac @ jac.T).numpy()
    lam, vec = np.linalg.eigh(g)
    b = np.sqrt(lam.min()) * (vec / np.sqrt(lam)) @ vec.T
    aligned = b @ g @ b  # Gramian of the aligned gradients
    np.testing.assert_allclose(aligned, lam.min() * np.eye(4), atol=1e-9 * lam.max())
    np.testing.assert_allclose(m.last_weights.numpy(), b.sum(axis=1))


def test_cagrad_worst_task_improvement_beats_mean_gradient() -> None:
    """CAGrad maximises min_i g_i.d in the ball around g0, so it beats d = g0 (same ball)."""
    jac = random_jacobian(5, 12, seed=8)
    jac[0] *= -3.0
    m = make("cagrad", 5, c=0.5, rescale=0)
    d = m.aggregate(jac) / 5
    g0 = jac.mean(dim=0)
    assert (d - g0).norm() <= 0.5 * g0.norm() * (1 + 1e-6)
    assert (jac @ d).min() > (jac @ g0).min()


# -- Frank-Wolfe min-norm solver ---------------------------------------------------------------
def test_min_norm_2_against_grid() -> None:
    rng = np.random.default_rng(0)
    grid = np.linspace(0.0, 1.0, 200_001)
    for _ in range(20):
        x1, x2 = rng.normal(size=(2, 4)) * rng.uniform(0.1, 3, size=(2, 1))
        gamma = min_norm_2(x1 @ x1, x1 @ x2, x2 @ x2)
        norms = ((grid[:, None] * x1 + (1 - grid[:, None]) * x2) ** 2).sum(axis=1)
        best = norms.min()
        value = ((gamma * x1 + (1 - gamma) * x2) ** 2).sum()
        assert value <= best + 1e-9


def test_frank_wolfe_exact_for_two_tasks() -> None:
    """Two tasks: one Frank-Wolfe step with the exact line search is the closed form."""
    rng = np.random.default_rng(1)
    for _ in range(50):
        g = rng.normal(size=(2, 6)) * rng.uniform(0.01, 10, size=(2, 1))
        m = g @ g.T
        gamma = min_norm_2(m[0, 0], m[0, 1], m[1, 1])  # weight of g_1
        alpha = frank_wolfe(m, max_iter=1)
        np.testing.assert_allclose(alpha, [gamma, 1 - gamma], atol=1e-12)
        np.testing.assert_allclose(frank_wolfe(m), alpha, atol=1e-12)


def test_frank_wolfe_reaches_the_min_norm_point() -> None:
    """Against a conic solver's minimum of |J^T alpha|^2 on the simplex, plus the KKT signs."""
    cp = pytest.importorskip("cvxpy")
    rng = np.random.default_rng(2)
    for k in (3, 6, 11):
        g = rng.normal(size=(k, 15))
        m = g @ g.T
        alpha = frank_wolfe(m, max_iter=20_000, tol=1e-13)
        assert np.all(alpha >= 0) and math.isclose(alpha.sum(), 1.0, rel_tol=1e-12)
        a = cp.Variable(k, nonneg=True)
        problem = cp.Problem(cp.Minimize(cp.sum_squares(g.T @ a)), [cp.sum(a) == 1])
        problem.solve(solver=cp.CLARABEL)
        value = alpha @ m @ alpha
        assert value <= problem.value * (1 + 1e-3) + 1e-12  # Frank-Wolfe is O(1/t)
        # (M alpha)_i >= alpha^T M alpha: no vertex improves the linearisation (up to the gap)
        assert np.all(m @ alpha >= value - 1e-3 * np.trace(m) / k)


def test_mgda_weights_sum_to_k_and_normalisations() -> None:
    jac = random_jacobian(3, 10, seed=9) * torch.tensor([[1.0], [10.0], [0.1]], dtype=torch.float64)
    losses = torch.tensor([0.5, 2.0, 1.0], dtype=torch.float64)
    for norm in ("none", "l2", "loss", "loss+"):
        m = make("mgda", 3, normalization=norm)
        d = m.aggregate(jac, losses)
        assert math.isclose(float(m.last_weights.sum()), 3.0, rel_tol=1e-12)
        torch.testing.assert_close(d, m.last_weights @ jac)
    # "l2": the min-norm problem on unit gradients, weights applied to the raw gradients
    m = make("mgda", 3, normalization="l2")
    m.aggregate(jac)
    unit = jac / jac.norm(dim=1, keepdim=True)
    alpha = frank_wolfe((unit @ unit.T).numpy())
    np.testing.assert_allclose(m.last_weights.numpy(), 3 * alpha, rtol=1e-10)
    # "loss+": normalisers L_t |g_t|
    m = make("mgda", 3, normalization="loss+")
    m.aggregate(jac, losses)
    scaled = jac / (losses[:, None] * jac.norm(dim=1, keepdim=True))
    alpha = frank_wolfe((scaled @ scaled.T).numpy())
    np.testing.assert_allclose(m.last_weights.numpy(), 3 * alpha, rtol=1e-10)
    with pytest.raises(ValueError, match="needs the task losses"):
        make("mgda", 3, normalization="loss").aggregate(jac)
    with pytest.raises(ValueError, match="non-negative losses"):
        make("mgda", 3, normalization="loss").aggregate(jac, -losses)


# -- construction ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", GRADIENT)
def test_registry_builds_with_repr(name: str) -> None:
    m = make(name, 3)
    assert isinstance(m, method_class(name))
    assert m.name == name
    assert repr(m).startswith(type(m).__name__ + "(num_tasks=3")
    rep = name.endswith(("-ub", "-sr")) or name == "graddrop"
    expected = "representation" if rep else "parameters"
    assert m.space == expected


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("mgda", {"normalization": "l1"}),
        ("mgda", {"max_iter": 0}),
        ("mgda", {"tol": 0.0}),
        ("cagrad", {"c": -0.1}),
        ("cagrad", {"rescale": 3}),
        ("nash-mtl", {"update_weights_every": 0}),
        ("nash-mtl", {"optim_niter": 0}),
        ("nash-mtl", {"max_norm": -1.0}),
        ("nash-mtl", {"on_solver_failure": "ignore"}),
        ("aligned-mtl", {"scale_mode": "max"}),
        ("graddrop", {"leak": 1.5}),
        ("graddrop", {"leak": [0.0, 0.1]}),
        ("gradvac", {"beta": 2.0}),
        ("gradvac", {"eps": -1.0}),
        ("pcgrad", {"seed": -1}),
        ("fairgrad", {"alpha": -1.0}),
        ("fairgrad", {"max_norm": -1.0}),
        ("excess-mtl", {"robust_step_size": 0.0}),
        ("modo", {"gamma": 0.0}),
        ("modo", {"rho": -0.1}),
        ("sdmgrad", {"lambda_": -0.1}),
        ("sdmgrad", {"n_iter": 0}),
        ("sdmgrad", {"lr": 0.0}),
        ("sdmgrad", {"momentum": 1.0}),
        ("ntkmtl", {"ntk_exp": -0.5}),
        ("ntkmtl", {"max_norm": -1.0}),
        ("ntkmtl-sr", {"num_chunks": 0}),
    ],
)
def test_bad_hyper_parameters_raise(name: str, kwargs: dict) -> None:
    with pytest.raises(ValueError):
        create(name, num_tasks=3, **kwargs)


def test_unknown_hyper_parameter_names_the_method() -> None:
    with pytest.raises(TypeError, match="cagrad"):
        create("cagrad", num_tasks=3, alpha=0.4)
