"""Cross-checks of every gradient aggregator against torchjd's implementation (float64).

Where the two differ by a documented convention (scale, seeds), the convention is aligned
first; the remaining difference must be a cosine distance <= 1e-4.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from bayesagg.methods import create

tja = pytest.importorskip("torchjd.aggregation")

SHAPES = [(2, 5), (5, 20), (11, 64), (20, 100)]


def jacobians(shape: tuple[int, int], n: int = 2) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(shape[0] * 1000 + shape[1])
    out = []
    for _ in range(n):
        j = torch.randn(*shape, generator=gen, dtype=torch.float64)
        j[0] = -0.5 * j[0] - j[1 % shape[0]]  # some conflict
        out.append(j)
    return out


def cosine_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    return 1.0 - float(torch.nn.functional.cosine_similarity(a, b, dim=0))


@pytest.mark.parametrize("shape", SHAPES)
def test_mgda(shape) -> None:
    for j in jacobians(shape):
        ours = create("mgda", num_tasks=shape[0], max_iter=250, tol=1e-5).aggregate(j)
        ref = tja.MGDA(epsilon=1e-5, max_iters=250)(j)
        # same algorithm, same iterates: ours uses weights summing to K (nash-mtl convention)
        torch.testing.assert_close(ours / shape[0], ref, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("shape", SHAPES)
def test_imtl_g(shape) -> None:
    for j in jacobians(shape):
        ours = create("imtl-g", num_tasks=shape[0]).aggregate(j)
        ref = tja.IMTLG()(j)
        assert cosine_distance(ours, ref) <= 1e-4
        torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("shape", SHAPES)
def test_imtl_g_rank_deficient(shape) -> None:
    j = jacobians(shape, 1)[0]
    j = torch.cat([j, j[:1] + j[-1:]])  # one dependent row
    ours = create("imtl-g", num_tasks=shape[0] + 1).aggregate(j)
    ref = tja.IMTLG()(j)
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("c", [0.0, 0.4, 1.0])
def test_cagrad(shape, c) -> None:
    for j in jacobians(shape, 2):
        ours = create("cagrad", num_tasks=shape[0], c=c, rescale=1).aggregate(j)
        ref = tja.CAGrad(c=c)(j)
        # ours = K * d / (1 + c^2) (official rescale=1 and sum-of-losses scale); torchjd: d
        aligned = ours * (1 + c**2) / shape[0]
        assert cosine_distance(aligned, ref) <= 1e-4
        # different solvers (SLSQP vs Clarabel) of the same dual: agree to solver accuracy
        assert (aligned - ref).norm() <= 1e-3 * ref.norm()


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("mode", ["min", "median", "rmse"])
def test_aligned_mtl(shape, mode) -> None:
    for j in jacobians(shape):
        ours = create("aligned-mtl", num_tasks=shape[0], scale_mode=mode).aggregate(j)
        ref = tja.AlignedMTL(scale_mode=mode)(j)
        # ours sums the aligned gradients (official code); torchjd averages them
        torch.testing.assert_close(ours / shape[0], ref, rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("shape", SHAPES)
def test_upgrad(shape) -> None:
    pytest.importorskip("qpsolvers")
    for j in jacobians(shape):
        ours = create("upgrad", num_tasks=shape[0]).aggregate(j)
        ref = tja.UPGrad()(j)
        # torchjd regularises the normalised Gramian by 1e-4 I; ours is the exact projection
        assert cosine_distance(ours, ref) <= 1e-4


@pytest.mark.parametrize("shape", SHAPES)
def test_pcgrad_same_seed(shape) -> None:
    for seed, j in enumerate(jacobians(shape)):
        ours = create("pcgrad", num_tasks=shape[0], seed=seed).aggregate(j)
        torch.manual_seed(seed)  # torchjd draws its orders from the global generator
        ref = tja.PCGrad()(j)
        torch.testing.assert_close(ours, ref, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("shape", SHAPES)
def test_graddrop_same_seed(shape) -> None:
    for seed, j in enumerate(jacobians(shape)):
        ours = create("graddrop", num_tasks=shape[0], seed=seed).aggregate(j)
        torch.manual_seed(seed)
        ref = tja.GradDrop()(j)
        torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", SHAPES)
def test_gradvac_same_seed_over_steps(shape) -> None:
    """Stateful: phi_hat carries over, so compare a sequence of steps."""
    js = jacobians(shape, 4)
    ours = create("gradvac", num_tasks=shape[0], seed=3)
    ref = tja.GradVac()
    torch.manual_seed(3)
    for j in js:
        # ours applies eps relative to the gradients' scale (1e-8 here): tiny difference
        a, b = ours.aggregate(j), ref(j)
        assert (a - b).norm() <= 1e-6 * b.norm()


@pytest.mark.parametrize("solver", ["ccp", "exact"])
@pytest.mark.parametrize("shape", [(2, 5), (5, 20), (11, 64)])
def test_nash_mtl_over_steps(shape, solver) -> None:
    """Stateful (warm start). "ccp": same problem and stopping rules, DPP form vs official form;
    "exact" (default): the Nash point the official iterates reach, by Newton's method."""
    ours = create("nash-mtl", num_tasks=shape[0], max_norm=0.0, solver=solver)
    ref = tja.NashMTL(n_tasks=shape[0], max_norm=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchjd's problem is not DPP (cvxpy warns)
        for j in jacobians(shape, 3):
            a, b = ours.aggregate(j), ref(j)
            assert cosine_distance(a, b) <= 1e-4
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-9)
    assert ours.solver_failures == 0


@pytest.mark.parametrize("shape", [(3, 40), (11, 64)])
def test_graddrop_with_leak_same_seed(shape) -> None:
    leak = [0.1 * i / shape[0] for i in range(shape[0])]
    for seed, j in enumerate(jacobians(shape)):
        j[:, :4] = 0.0  # features without a sign
        ours = create("graddrop", num_tasks=shape[0], seed=seed, leak=leak).aggregate(j)
        torch.manual_seed(seed)
        ref = tja.GradDrop(leak=torch.tensor(leak, dtype=torch.float64))(j)
        torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)


# -- methods published since 2023 (docs/methods-gradient.md, "Methods published since 2023") -------------------------------------
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0])
def test_fairgrad(shape, alpha) -> None:
    for j in jacobians(shape):
        ours = create("fairgrad", num_tasks=shape[0], alpha=alpha, max_norm=0.0).aggregate(j)
        ref = tja.FairGrad(alpha=alpha)(j)
        # ours: K J^T w (official "match the sum loss"); torchjd: J^T w. Both solve
        # G w = w^(-1/alpha) with least_squares (ours on the normalised Gramian, rescaled)
        aligned = ours / shape[0]
        assert cosine_distance(aligned, ref) <= 1e-4
        assert (aligned - ref).norm() <= 1e-3 * ref.norm()


@pytest.mark.parametrize("shape", SHAPES)
def test_config(shape) -> None:
    for j in jacobians(shape):
        ours = create("config", num_tasks=shape[0]).aggregate(j)
        torch.testing.assert_close(ours, tja.ConFIG()(j), rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("shape", SHAPES)
def test_config_with_zero_row(shape) -> None:
    j = jacobians(shape, 1)[0]
    j[-1] = 0.0
    ours = create("config", num_tasks=shape[0]).aggregate(j)
    torch.testing.assert_close(ours, tja.ConFIG()(j), rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("shape", SHAPES)
def test_dualproj(shape) -> None:
    pytest.importorskip("qpsolvers")
    for j in jacobians(shape):
        ours = create("dualproj", num_tasks=shape[0]).aggregate(j)
        ref = tja.DualProj()(j)
        # torchjd regularises the normalised Gramian by 1e-4 I; ours is the exact projection
        assert cosine_distance(ours, ref) <= 1e-4
        assert (ours - ref).norm() <= 1e-2 * ref.norm()


@pytest.mark.parametrize("shape", [(2, 5), (5, 20), (11, 64)])
def test_excess_mtl_over_steps(shape) -> None:
    """Stateful. torchjd with one warm-up step = the official schedule (first step: baseline)."""
    ours = create("excess-mtl", num_tasks=shape[0], robust_step_size=0.5)
    ref = tja.ExcessMTL(robust_step_size=0.5, n_warmup_steps=1)
    for j in jacobians(shape, 5):
        a, b = ours.aggregate(j), ref(j)
        # ours: weights sum to K (official); torchjd's sum to 1; torchjd adds 1e-7 to E^0
        torch.testing.assert_close(a / shape[0], b, rtol=1e-6, atol=1e-9)
    assert not torch.allclose(ours.last_weights, torch.ones(shape[0], dtype=torch.float64))


@pytest.mark.parametrize("shape", SHAPES)
def test_modo_over_steps(shape) -> None:
    """Single-batch use: torchjd's MoDoWeighting on J J^T (ours has one batch by design)."""
    ours = create("modo", num_tasks=shape[0], gamma=0.01, rho=0.1)
    ref = tja.MoDoWeighting(gamma=0.01, rho=0.1)
    for j in jacobians(shape, 4):
        a = ours.aggregate(j)
        w = ref(j @ j.T)
        torch.testing.assert_close(a, w @ j, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("shape", SHAPES)
def test_sdmgrad_over_steps(shape) -> None:
    """Single-batch use: torchjd's SDMGradWeighting on J J^T; its 1e-8 in the scale is tiny."""
    ours = create("sdmgrad", num_tasks=shape[0])
    ref = tja.SDMGradWeighting(lambda_=0.3, n_iter=20, lr=10.0, momentum=0.5)
    for j in jacobians(shape, 4):
        a = ours.aggregate(j)
        w = ref(j @ j.T)
        torch.testing.assert_close(a, w @ j, rtol=1e-6, atol=1e-9)
