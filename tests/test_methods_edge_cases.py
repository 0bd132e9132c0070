"""Edge inputs on which aggregators used to fail, each with the answer it must give.

Found by an independent check of the aggregators' properties (tests/test_methods_properties.py
checks the properties in general); each test here pins one input that broke a method.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from bayesagg.methods import create

F32, F64 = torch.float32, torch.float64
# every aggregator that combines the rows with weights it computes from them
WEIGHTED = ["upgrad", "mgda", "imtl-g", "cagrad", "pcgrad", "nash-mtl", "aligned-mtl"]
WEIGHTED += ["dualproj", "fairgrad", "modo", "sdmgrad", "gradvac", "config", "graddrop"]
WEIGHTED += ["excess-mtl", "ntkmtl"]


def _vectors(p: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two orthonormal vectors of length p."""
    q, _ = torch.linalg.qr(
        torch.randn(p, 2, generator=torch.Generator().manual_seed(seed)).double()
    )
    return q[:, 0], q[:, 1]


@pytest.mark.parametrize("name", WEIGHTED)
def test_aggregate_of_a_jacobian_that_requires_grad(name: str) -> None:
    """Used to raise "Can't call numpy() on Tensor that requires grad" for the NumPy solvers."""
    jac = torch.randn(3, 6, generator=torch.Generator().manual_seed(0), dtype=F64)
    kwargs = {"seed": 0} if name in ("pcgrad", "gradvac", "graddrop") else {}
    plain = create(name, num_tasks=3, **kwargs).aggregate(jac)
    leaf = jac.clone().requires_grad_(True)
    d = create(name, num_tasks=3, **kwargs).aggregate(leaf)
    assert torch.equal(d.detach(), plain)
    (grad,) = torch.autograd.grad(d.sum(), leaf)
    assert torch.isfinite(grad).all()


@pytest.mark.parametrize("c", [1.0, 2.0, 5.0])
@pytest.mark.parametrize("dtype", [F32, F64])
def test_cagrad_non_conflicting_near_pareto_stationary_inputs(c: float, dtype) -> None:
    """c >= 1: the ball holds d = 0, so min_i g_i . d >= 0 at the optimum; near a
    Pareto-stationary point the dual's direction was solver noise (min_i g_i . d down to
    -9e-2 |g| |J|, and outside the ball)."""
    u, w = _vectors(8, 1)
    for jac in (
        torch.stack([u + 0.5 * w, -(u + 0.5 * w), w]),  # two opposite gradients and a third
        torch.stack([u, w, -(u + w) + 1e-7 * u]),  # the origin just inside the hull
        torch.outer(torch.tensor([1.0, -2.0, 0.5], dtype=F64), u),  # rank 1, mixed signs
    ):
        jac = jac.to(dtype)
        d = create("cagrad", num_tasks=3, c=c, rescale=0).aggregate(jac)
        products = (jac.double() @ d.double()) / (jac.double().norm() ** 2)
        assert float(products.min()) >= -1e-6, products
        mean = jac.double().mean(dim=0)
        # rescale=0 returns K d: the CAGrad ball is |d - g_0| <= c |g_0|
        rounding = (1e-6 if dtype == F32 else 1e-12) * float(jac.double().norm())
        assert float((d.double() / 3 - mean).norm()) <= c * float(mean.norm()) + rounding


@pytest.mark.parametrize("dtype", [F32, F64])
def test_config_is_zero_when_no_direction_has_a_positive_cosine_to_all(dtype) -> None:
    """Rows along one line whose signs cancel: U^+ 1 = 0 exactly, so the direction is 0; it
    used to be the normalised rounding noise of U^+ 1 (1e-3 to 5e-2 of the gradients)."""
    u, _ = _vectors(1000, 2)
    for coefficients in ([1.0, -2.0], [1.0, 2.0, -1.0, -3.0]):
        jac = torch.outer(torch.tensor(coefficients, dtype=F64), u).to(dtype)
        d = create("config", num_tasks=len(coefficients)).aggregate(jac)
        assert float(d.double().norm()) <= 1e-6 * float(jac.double().norm()), d.norm()


def test_gradvac_stays_finite_on_rank_one_float32_inputs() -> None:
    """Rounding pushed a cosine past 1, the target phi_hat followed, and Eq. 5's denominator
    vanished: the weights grew by 1e8 per step (inf / NaN after a few steps in float32)."""
    for seed in (2, 3, 4, 10, 19, 22):
        gen = torch.Generator().manual_seed(seed)
        v = torch.randn(20, generator=gen, dtype=F64)
        a = torch.randn(4, generator=gen, dtype=F64)
        jac = torch.outer(a, v).float()
        method = create("gradvac", num_tasks=4, seed=0)
        for _ in range(10):
            d = method.aggregate(jac)
            assert torch.isfinite(d).all()
            assert float(d.abs().max()) <= 10 * float(jac.abs().sum(dim=0).max())


@pytest.mark.parametrize("name", ["upgrad", "dualproj"])
def test_dual_cone_methods_give_zero_not_float32_noise(name: str) -> None:
    """Rank-1 Jacobians whose exact answer is 0: the float32 Gramian's rounding eigenvalue was
    kept, turning 0 into noise of up to 2e-6 of |J| (permutation invariance failed at 5e-7)."""
    worst = 0.0
    for k in (3, 5, 8):
        for seed in range(5):
            gen = torch.Generator().manual_seed(seed)
            v = torch.randn(100, generator=gen, dtype=F64)
            jac = torch.outer(torch.randn(k, generator=gen, dtype=F64), v)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                exact = create(name, num_tasks=k).aggregate(jac)
            if float(exact.norm()) > 1e-12 * float(jac.norm()):
                continue  # the exact answer is not 0 for these signs
            d = create(name, num_tasks=k).aggregate(jac.float())
            worst = max(worst, float(d.double().norm() / jac.norm()))
    assert worst <= 3e-7, worst
