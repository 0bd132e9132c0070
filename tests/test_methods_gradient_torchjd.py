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
