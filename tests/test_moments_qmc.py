"""The deterministic multiclass rule (``method="qmc"``) against brute force and exact algebra.

The reference samples the whole weight matrix W ~ N(mean, cov) in float64 and forms
g = W^T (softmax(a) - e_y) explicitly (independent of :mod:`bayesagg.moments`); the rule must
agree within 5 standard errors of that reference, for C = 2, 5, 10, 40 and narrow to wide logit
posteriors. The 2M-sample sweep with median errors is scripts/studies/multiclass_moments.py.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from bayesagg import moments
from bayesagg.linalg import augment

DT = torch.float64
SIGMAS = 5.0


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _problem(seed: int, c: int, width: float, b: int = 3, d: int = 3, bias: bool = True):
    """Return (h, y, mean, cov): a dense posterior whose median logit sd is ``width``."""
    g = _gen(seed)
    p = d + int(bias)
    h = torch.randn(b, d, generator=g, dtype=DT)
    y = torch.randint(0, c, (b,), generator=g)
    mean = torch.randn(c, p, generator=g, dtype=DT)
    x = torch.randn(c * p, c * p, generator=g, dtype=DT)
    cov = x @ x.T / (c * p) + 0.2 * torch.eye(c * p, dtype=DT)
    ht = augment(h, bias)
    blocks = cov.reshape(c, p, c, p).diagonal(dim1=0, dim2=2)  # [P, P, C]
    logit_var = torch.einsum("bp,pqk,bq->bk", ht, blocks, ht)
    return h, y, mean, cov * (width**2 / logit_var.median())


def _reference(h, y, mean, cov, samples: int, seed: int):
    """Return mean, variance and their standard errors of g [B, D] from explicit draws of W."""
    c, p = mean.shape
    d = h.shape[1]
    ht = augment(h, p == d + 1)
    factor = torch.linalg.cholesky(cov)
    onehot = F.one_hot(y, c).to(DT)
    g = _gen(seed)
    draws = []
    for start in range(0, samples, 20_000):
        s = min(20_000, samples - start)
        theta = (
            mean.reshape(-1) + torch.randn(s, c * p, generator=g, dtype=DT) @ factor.T
        ).reshape(s, c, p)
        r = torch.softmax(torch.einsum("scp,bp->sbc", theta, ht), -1) - onehot
        draws.append(torch.einsum("sbc,scd->sbd", r, theta[..., :d]))
    grad = torch.cat(draws)  # [S, B, D]
    mu = grad.mean(0)
    centred = grad - mu
    var = centred.square().mean(0)
    fourth = centred.pow(4).mean(0)
    return {
        "mu": mu,
        "var": var,
        "se_mu": (var / samples).sqrt(),
        "se_var": ((fourth - var.square()) / samples).sqrt(),
    }


def _assert_within(mu, var, ref) -> None:
    for key, value in (("mu", mu[:, 0]), ("var", var[:, 0])):
        bound = SIGMAS * ref[f"se_{key}"] + 1e-12
        excess = (value - ref[key]).abs() / bound
        assert excess.max() <= 1, f"{key}: worst error {excess.max():.2f} x the 5-sigma bound"


@pytest.mark.parametrize("classes", [2, 5, 10, 40])
@pytest.mark.parametrize("width", [0.2, 2.5])
def test_qmc_matches_brute_force(classes: int, width: float) -> None:
    h, y, mean, cov = _problem(classes + int(10 * width), classes, width)
    mu, var = moments.multiclass(h, y, mean, cov)
    assert mu.shape == var.shape == (3, 1, 3)
    _assert_within(mu, var, _reference(h, y, mean, cov, 200_000, seed=1))


def test_qmc_without_bias_and_float32_match_brute_force() -> None:
    h, y, mean, cov = _problem(3, 4, 1.0, bias=False)
    ref = _reference(h, y, mean, cov, 200_000, seed=2)
    _assert_within(*moments.multiclass(h, y, mean, cov), ref)
    mu32, var32 = moments.multiclass(h.float(), y, mean.float(), cov.float())
    assert mu32.dtype == var32.dtype == torch.float32
    mu, var = moments.multiclass(h, y, mean, cov)
    torch.testing.assert_close(mu32.double(), mu, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(var32.double(), var, rtol=1e-4, atol=1e-5)


def _per_node(h, y, mean, cov, nodes):
    """Return (mu, var) [B, D]: the conditional moments of g at each node, averaged (float64).

    Written out one example and one dimension at a time: u_j = W[:, j] given the logits
    a = mu_a + L z is Gaussian with mean m_j + K_j V^-1 (a - mu_a) and covariance
    S_j - K_j V^-1 K_j^T, so E[g_j | a] = E[u_j | a]^T r and
    E[g_j^2 | a] = E[g_j | a]^2 + r^T Cov(u_j | a) r (docs/bayesagg-math.md, stage 2).
    """
    c, p = mean.shape
    d = h.shape[1]
    ht = augment(h, p == d + 1)
    cov4 = cov.reshape(c, p, c, p)
    mus, variances = [], []
    for i in range(h.shape[0]):
        x = torch.zeros(c, c * p, dtype=DT)  # logits a = x theta
        for k in range(c):
            x[k, k * p : (k + 1) * p] = ht[i]
        v = x @ cov @ x.T
        factor = torch.linalg.cholesky(0.5 * (v + v.T))
        a = ht[i] @ mean.T + nodes @ factor.T  # [N, C]
        r = torch.softmax(a, -1) - F.one_hot(y[i], c).to(DT)
        cross = cov @ x.T  # [C*P, C]: Cov(theta, a)
        first = torch.zeros(nodes.shape[0], d, dtype=DT)
        second = torch.zeros(nodes.shape[0], d, dtype=DT)
        for j in range(d):
            k_j = cross[torch.arange(c) * p + j]
            gain = k_j @ torch.linalg.inv(v)
            cond_mean = mean[:, j] + (a - ht[i] @ mean.T) @ gain.T
            cond_cov = cov4[:, j, :, j] - gain @ k_j.T
            g = (cond_mean * r).sum(-1)
            first[:, j] = g
            second[:, j] = g.square() + torch.einsum("sc,ce,se->s", r, cond_cov, r)
        mu = first.mean(0)
        mus.append(mu)
        variances.append(second.mean(0) - mu.square())
    return torch.stack(mus), torch.stack(variances)


@pytest.mark.parametrize(
    ("bias", "classes", "dim"),
    # D N C^2 work per example, or (N + D) (C + C^2)^2 by the nodes' covariance of x when
    # that is less (few classes, large D): both forms.
    [(True, 4, 3), (False, 4, 3), (True, 3, 40), (False, 3, 40)],
)
def test_qmc_equals_the_per_node_average(bias: bool, classes: int, dim: int) -> None:
    """The batched algebra gives the conditional moments averaged over the nodes, to rounding."""
    h, y, mean, cov = _problem(5, classes, 1.5, b=3, d=dim, bias=bias)
    mu, var = moments.multiclass(h, y, mean, cov, num_samples=64)
    mu_ref, var_ref = _per_node(h, y, mean, cov, moments.qmc_nodes(64, classes, dtype=DT))
    torch.testing.assert_close(mu[:, 0], mu_ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(var[:, 0], var_ref.clamp_min(0), rtol=1e-10, atol=1e-12)


def test_qmc_nodes_are_exact_to_degree_three_and_fixed() -> None:
    for count, classes in ((64, 10), (256, 5), (160, 40)):
        z = moments.qmc_nodes(count, classes, dtype=DT)
        assert z.shape == (count, classes)
        eye = torch.eye(classes, dtype=DT)
        torch.testing.assert_close(z.mean(0), torch.zeros(classes, dtype=DT), atol=1e-13, rtol=0)
        torch.testing.assert_close(z.T @ z / count, eye, atol=1e-12, rtol=0)
        third = torch.einsum("ni,nj,nk->ijk", z, z, z) / count
        assert third.abs().max() < 1e-12
        # Fourth moments are not matched (64 nodes in 10-D give E[z_i^4] 2.2-3.4 for 3).
    torch.manual_seed(123)
    first = moments.qmc_nodes(64, 10, dtype=DT).clone()
    moments._qmc_nodes_cpu.cache_clear()
    torch.manual_seed(456)
    assert torch.equal(moments.qmc_nodes(64, 10, dtype=DT), first)
    assert moments.qmc_nodes(64, 10).dtype == torch.float32
    with pytest.raises(ValueError, match="even and >= 2"):
        moments.qmc_nodes(63, 10)
    with pytest.raises(ValueError, match="even and >= 2"):
        moments.qmc_nodes(16, 10)


def test_qmc_is_deterministic_per_example_and_chunk_free() -> None:
    h, y, mean, cov = _problem(6, 5, 1.0, b=6)
    torch.manual_seed(0)
    mu, var = moments.multiclass(h, y, mean, cov)
    torch.manual_seed(1)
    torch.rand(10)
    again = moments.multiclass(h, y, mean, cov)
    assert torch.equal(again[0], mu) and torch.equal(again[1], var)
    # Examples are independent (each has its own rule size): a sub-batch gives the same rows.
    part = moments.multiclass(h[2:4], y[2:4], mean, cov)
    torch.testing.assert_close(part[0], mu[2:4], rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(part[1], var[2:4], rtol=1e-12, atol=1e-14)
    one = moments.multiclass(h, y, mean, cov, chunk_size=1)
    torch.testing.assert_close(one[0], mu, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(one[1], var, rtol=1e-12, atol=1e-14)


def test_qmc_rule_size_follows_the_logit_width() -> None:
    classes = 10
    base = moments.qmc_base_count(classes)
    assert base == 64
    for sd, factor in ((0.1, 1), (0.79, 1), (0.81, 4), (1.59, 4), (1.61, 16)):
        # Independent logits of sd s: every difference has sd s sqrt(2), so the width is s.
        v = (sd**2 * torch.eye(classes, dtype=DT))[None]
        assert int(moments.qmc_node_counts(v, classes)) == base * factor, sd
    # A shift of all logits together does not change the softmax, nor the rule size.
    shifted = (0.1**2 * torch.eye(classes, dtype=DT) + 100.0)[None]
    assert int(moments.qmc_node_counts(shifted, classes)) == base
    # max(64, 4C, 640 / C) rounded up to a power of 2.
    assert [moments.qmc_base_count(c) for c in (2, 3, 5, 10, 17, 40)] == [
        512,
        256,
        128,
        64,
        128,
        256,
    ]


def test_qmc_rule_size_is_checked() -> None:
    h, y, mean, cov = _problem(7, 5, 1.0)
    with pytest.raises(ValueError, match="even and >= 2 C = 10"):
        moments.multiclass(h, y, mean, cov, num_samples=8)
    with pytest.raises(ValueError, match="even and >= 2 C"):
        moments.multiclass(h, y, mean, cov, num_samples=65)
    with pytest.raises(ValueError, match="unknown method"):
        moments.multiclass(h, y, mean, cov, method="sigma")  # type: ignore[arg-type]


def test_more_nodes_converge_to_the_same_moments() -> None:
    """A wide posterior: the default rule is within ~1 % of a 16x larger one."""
    h, y, mean, cov = _problem(8, 10, 2.5, b=4, d=4)
    mu, var = moments.multiclass(h, y, mean, cov)
    mu_big, var_big = moments.multiclass(h, y, mean, cov, num_samples=16384)
    scale = var_big.sqrt()
    assert ((mu - mu_big).abs() / scale).max() < 0.02
    assert ((var - var_big).abs() / var_big).max() < math.inf
    assert ((var - var_big).abs() / var_big).median() < 0.01


def test_bayesagg_defaults_to_the_deterministic_rule() -> None:
    """BayesAgg's default multiclass moments are qmc: the same batch gives the same gradient."""
    from torch import nn

    from bayesagg import BayesAgg, Multiclass

    torch.manual_seed(0)
    heads = nn.ModuleList([nn.Linear(6, 4)])
    h = torch.randn(16, 6)
    y = torch.randint(0, 4, (16,))
    agg = BayesAgg([Multiclass("digit", classes=4)])
    assert agg.moments == "qmc"
    grads = []
    for seed in (1, 2):
        torch.manual_seed(seed)  # the global RNG must not matter
        leaf = h.clone().requires_grad_(True)
        agg.backward(leaf, heads, [y])
        grads.append(leaf.grad)
    assert torch.equal(grads[0], grads[1])


@pytest.mark.parametrize("chunk_size", [None, 1, 3, 4])
def test_qmc_blocks_with_mixed_rule_sizes_equal_one_example_at_a_time(chunk_size) -> None:
    # Rows scaled from narrow to wide logits get different rule sizes (every level of
    # QMC_LEVELS); blocks of examples then mix levels, gathered and scattered back in place.
    h, y, mean, cov = _problem(11, 4, 0.3, b=9)
    h = h * torch.tensor([0.2, 4.0, 1.0, 8.0, 0.5, 2.0, 16.0, 0.1, 3.0], dtype=DT)[:, None]
    ht = augment(h, True)
    c, p = mean.shape
    v = torch.einsum("bp,kpjq,bq->bkj", ht, cov.reshape(c, p, c, p), ht)
    assert len(moments.qmc_node_counts(v, c).unique()) >= 3
    mu, var = moments.multiclass(h, y, mean, cov, chunk_size=chunk_size)
    for i in range(h.shape[0]):
        one = moments.multiclass(h[i : i + 1], y[i : i + 1], mean, cov)
        torch.testing.assert_close(mu[i], one[0][0], rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(var[i], one[1][0], rtol=1e-12, atol=1e-14)


def test_a_one_point_rule_at_the_mean_logits_is_the_plug_in_gradient():
    """``rule``: the node z = 0 with weight 1 evaluates the conditional mean at a = mu_a only,
    so mu_d = sum_c m[c, d] (softmax(mu_a) - e_y)_c, written out here."""
    torch.manual_seed(3)
    b, d, c = 4, 5, 3
    h = torch.randn(b, d, dtype=torch.float64)
    y = torch.tensor([0, 2, 1, 2])
    mean = torch.randn(c, d + 1, dtype=torch.float64)
    a = torch.randn(c * (d + 1), c * (d + 1), dtype=torch.float64)
    cov = a @ a.T / (c * (d + 1)) + 0.1 * torch.eye(c * (d + 1), dtype=torch.float64)
    rule = (torch.zeros(1, c, dtype=torch.float64), torch.ones(1, dtype=torch.float64))
    mu, _ = moments.multiclass(h, y, mean, cov, rule=rule)
    logits = h @ mean[:, :d].T + mean[:, d]
    r = torch.softmax(logits, dim=1) - F.one_hot(y, c).double()
    expected = r @ mean[:, :d]
    torch.testing.assert_close(mu[:, 0], expected, rtol=1e-12, atol=1e-12)


def test_a_rule_is_refused_where_it_means_nothing():
    h, y, mean, cov = torch.randn(2, 3), torch.tensor([0, 1]), torch.randn(2, 4), torch.eye(8)
    rule = (torch.zeros(1, 2), torch.ones(1))
    with pytest.raises(ValueError, match="method='qmc' only"):
        moments.multiclass(h, y, mean, cov, method="monte_carlo", rule=rule)
    with pytest.raises(ValueError, match=r"rule must be \(nodes \[N, C\], weights \[N\]\)"):
        moments.multiclass(h, y, mean, cov, rule=(torch.zeros(3, 2), torch.ones(2)))
