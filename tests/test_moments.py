"""Gradient moments against brute-force Monte Carlo (many weight draws, explicit g) and Eq. 4.

Every estimator is compared with a reference computed by sampling w ~ N(mean, cov) and forming
g explicitly for each example; tolerances are 5 standard errors of the difference (the
reference's, plus the estimator's own for the Monte-Carlo estimators).
"""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F

from bayesagg import moments
from bayesagg.linalg import NumericalError, augment

DT = torch.float64
REFERENCE_SAMPLES = 100_000
SIGMAS = 5.0


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _spd(n: int, g: torch.Generator, scale: float) -> torch.Tensor:
    x = torch.randn(n, n, generator=g, dtype=DT)
    return scale * (x @ x.T / n + 0.2 * torch.eye(n, dtype=DT))


def _draw(mean: torch.Tensor, cov: torch.Tensor, samples: int, seed: int) -> torch.Tensor:
    """Return samples x ~ N(mean, cov) with the leading sample axis (cov over mean's last axis)."""
    factor = torch.linalg.cholesky(cov)
    noise = torch.randn(samples, *mean.shape, generator=_gen(seed), dtype=DT)
    return mean + (factor @ noise.unsqueeze(-1)).squeeze(-1)


def _summary(g: torch.Tensor) -> dict[str, torch.Tensor]:
    """Return sample mean/variance of g [S, ...] and the standard deviation of each per draw."""
    mu = g.mean(0)
    centred = g - mu
    var = centred.square().mean(0)
    fourth = centred.pow(4).mean(0)
    return {"mu": mu, "var": var, "sd_mu": var.sqrt(), "sd_var": (fourth - var.square()).sqrt()}


def _assert_within(
    mu: torch.Tensor, var: torch.Tensor, ref: dict[str, torch.Tensor], estimator_samples=None
) -> None:
    """Assert |estimate - reference| <= SIGMAS standard errors of the difference."""
    for key, value in (("mu", mu), ("var", var)):
        se2 = ref[f"sd_{key}"].square() / REFERENCE_SAMPLES
        if estimator_samples is not None:
            se2 = se2 + ref[f"sd_{key}"].square() / estimator_samples
        bound = SIGMAS * se2.sqrt() + 1e-12
        excess = (value - ref[key]).abs() / bound
        assert excess.max() <= 1, (
            f"{key}: worst error {excess.max():.2f} x the {SIGMAS}-sigma bound"
        )


# ----------------------------------------------------------------------------- regression


def _regression_problem(seed: int, b=4, d=3, o=2, bias=True, shared=True):
    g = _gen(seed)
    p = d + int(bias)
    h = torch.randn(b, d, generator=g, dtype=DT)
    y = torch.randn(b, o, generator=g, dtype=DT)
    mean = torch.randn(o, p, generator=g, dtype=DT)
    cov = _spd(p, g, 0.3) if shared else torch.stack([_spd(p, g, 0.3) for _ in range(o)])
    return h, y, mean, cov


@pytest.mark.parametrize(("bias", "shared"), [(False, True), (True, True), (True, False)])
def test_regression_matches_brute_force(bias: bool, shared: bool) -> None:
    h, y, mean, cov = _regression_problem(0, bias=bias, shared=shared)
    mu, var = moments.regression(h, y, mean, cov)
    assert mu.shape == var.shape == (4, 2, 3)
    o, p = mean.shape
    full_cov = cov.expand(o, p, p)
    w = _draw(mean, full_cov, REFERENCE_SAMPLES, seed=1)  # [S, O, P]
    ht = augment(h, bias)
    residual = torch.einsum("sop,bp->sbo", w, ht) - y  # [S, B, O]
    g = 2 * w[:, None, :, :3] * residual[..., None]  # [S, B, O, D]
    _assert_within(mu, var, _summary(g))


def _gaussian_moments(m: torch.Tensor, s: torch.Tensor):
    """Return E[z z^T], E[z z z], E[z z z z] of z ~ N(m, s) by Isserlis' theorem (naive)."""
    e2 = s + torch.outer(m, m)
    e3 = (
        torch.einsum("i,j,k->ijk", m, m, m)
        + torch.einsum("i,jk->ijk", m, s)
        + torch.einsum("j,ik->ijk", m, s)
        + torch.einsum("k,ij->ijk", m, s)
    )
    e4 = torch.einsum("i,j,k,l->ijkl", m, m, m, m)
    for a, b, c, d in ("ijkl", "ikjl", "iljk", "jkil", "jlik", "klij"):
        e4 = e4 + torch.einsum(f"{a}{b},{c},{d}->ijkl", s, m, m)
    for a, b, c, d in ("ijkl", "ikjl", "iljk"):
        e4 = e4 + torch.einsum(f"{a}{b},{c}{d}->ijkl", s, s)
    return e2, e3, e4


@pytest.mark.parametrize("bias", [False, True])
def test_regression_is_the_diagonal_of_eq4(bias: bool) -> None:
    """The full second moment E[g g^T], term by term, on a small problem: diagonal to 1e-12."""
    h, y, mean, cov = _regression_problem(2, b=3, d=3, o=2, bias=bias, shared=False)
    mu, var = moments.regression(h, y, mean, cov)
    ht = augment(h, bias)
    d = h.shape[1]
    for k in range(mean.shape[0]):
        m, s = mean[k], cov[k]
        e2, e3, e4 = _gaussian_moments(m, s)
        for i in range(h.shape[0]):
            x, t = ht[i], y[i, k]
            # g = 2 w (z^T h~ - y), w = z[:D]: E[g] and E[g g^T] from Gaussian moments of z.
            first = 2 * (e2 @ x - t * m)[:d]
            quartic = torch.einsum("ijkl,j,k->il", e4, x, x)
            cubic = torch.einsum("ijk,j->ik", e3, x)
            second = 4 * (quartic - 2 * t * cubic + t**2 * e2)[:d, :d]
            if not bias:  # the paper's matrix form (Appendix A.1, Eq. 14), M = m m^T, A = h h^T
                big_m, a = torch.outer(m, m), torch.outer(x, x)
                paper = 4 * (
                    t**2 * (s + big_m)
                    - 2
                    * t
                    * (
                        torch.outer(m, x) @ (s + big_m)
                        + (s + big_m) @ torch.outer(x, m)
                        + (x @ m) * (s - big_m)
                    )
                    + (s + big_m) @ (a + a.T) @ (s + big_m)
                    + torch.trace(a @ s) * (s + big_m)
                    + (m @ a @ m) * (s - big_m)
                )
                torch.testing.assert_close(paper, second, rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(mu[i, k], first, rtol=1e-12, atol=1e-12)
            expected_var = (second - torch.outer(first, first)).diagonal()
            torch.testing.assert_close(var[i, k], expected_var, rtol=1e-12, atol=1e-12)


def test_regression_batch_of_one_float32_and_zero_covariance() -> None:
    h, y, mean, cov = _regression_problem(3, b=1)
    mu, var = moments.regression(h, y, mean, cov)
    assert mu.shape == (1, 2, 3)
    mu32, var32 = moments.regression(h.float(), y.float(), mean.float(), cov.float())
    assert mu32.dtype == torch.float32
    torch.testing.assert_close(mu32.double(), mu, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(var32.double(), var, rtol=1e-5, atol=1e-5)
    # No uncertainty: the plain back-propagated gradient 2 w (w^T h~ - y), zero variance.
    mu0, var0 = moments.regression(h, y, mean, torch.zeros_like(cov))
    plain = 2 * mean[:, :3] * (augment(h, True) @ mean.T - y)[..., None]
    torch.testing.assert_close(mu0, plain)
    assert (var0 == 0).all()


# ----------------------------------------------------------------------------- binary


def _binary_problem(seed: int, b=3, d=3, o=2, scale=0.5):
    g = _gen(seed)
    p = d + 1
    h = torch.randn(b, d, generator=g, dtype=DT)
    y = torch.randint(0, 2, (b, o), generator=g).to(DT)
    mean = torch.randn(o, p, generator=g, dtype=DT)
    cov = torch.stack([_spd(p, g, scale) for _ in range(o)])
    return h, y, mean, cov


def _binary_reference(h, y, mean, cov, seed=5):
    w = _draw(mean, cov, REFERENCE_SAMPLES, seed)  # [S, O, P]
    logits = torch.einsum("sop,bp->sbo", w, augment(h, True))
    r = torch.sigmoid(logits) - y
    return _summary(w[:, None, :, : h.shape[1]] * r[..., None])


def test_binary_rao_blackwell_matches_brute_force() -> None:
    h, y, mean, cov = _binary_problem(4)
    mu, var = moments.binary(h, y, mean, cov)
    assert mu.shape == var.shape == (3, 2, 3)
    _assert_within(mu, var, _binary_reference(h, y, mean, cov))


def test_binary_monte_carlo_matches_brute_force() -> None:
    h, y, mean, cov = _binary_problem(6)
    samples = 4096
    mu, var = moments.binary(
        h, y, mean, cov, method="monte_carlo", num_samples=samples, generator=_gen(7)
    )
    _assert_within(mu, var, _binary_reference(h, y, mean, cov), estimator_samples=samples)
    # Same generator seed, other chunking: the same draws, the same estimate.
    again = moments.binary(
        h, y, mean, cov, method="monte_carlo", num_samples=samples, generator=_gen(7), chunk_size=5
    )
    torch.testing.assert_close(again[0], mu)
    torch.testing.assert_close(again[1], var)


def test_binary_quadrature_converged_and_degenerate_limit() -> None:
    h, y, mean, cov = _binary_problem(8, b=5, scale=0.2)
    logit_sd = torch.einsum("bp,opq,bq->bo", augment(h, True), cov, augment(h, True)).sqrt()
    assert 0.5 < logit_sd.max() <= 2.0  # the regime the default nodes are meant for
    mu32, var32 = moments.binary(h, y, mean, cov, nodes=32)
    mu96, var96 = moments.binary(h, y, mean, cov, nodes=96)
    torch.testing.assert_close(mu32, mu96, rtol=2e-5, atol=1e-9)
    torch.testing.assert_close(var32, var96, rtol=2e-5, atol=1e-9)
    # Zero covariance: the plain gradient w (sigmoid(a) - y) with zero variance.
    mu0, var0 = moments.binary(h, y, mean, torch.zeros_like(cov))
    plain = mean[:, :3] * (torch.sigmoid(augment(h, True) @ mean.T) - y)[..., None]
    torch.testing.assert_close(mu0, plain)
    assert var0.abs().max() < 1e-12


def test_binary_wide_logits_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    h, y, mean, cov = _binary_problem(8, b=5, scale=0.3)
    with caplog.at_level(logging.WARNING, logger="bayesagg"):
        moments.binary(h, y, mean, cov, nodes=32)
        assert caplog.records == []
        moments.binary(h, y, mean, 100 * cov, nodes=32)
    assert any("Gauss-Hermite" in r.getMessage() for r in caplog.records)
    with pytest.raises(ValueError, match="nodes"):
        moments.binary(h, y, mean, cov, nodes=500)


def test_binary_batch_of_one_no_bias_and_float32() -> None:
    h, y, mean, cov = _binary_problem(9, b=1)
    mu, var = moments.binary(h, y, mean, cov)
    mu32, var32 = moments.binary(h.float(), y.float(), mean.float(), cov.float())
    assert mu32.shape == (1, 2, 3) and mu32.dtype == torch.float32
    torch.testing.assert_close(mu32.double(), mu, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(var32.double(), var, rtol=1e-4, atol=1e-5)
    # Without a bias column the head is w^T h; check against the reference as well.
    h, y, mean, cov = _binary_problem(10, b=2)
    mean, cov = mean[:, :3], cov[:, :3, :3]
    mu, var = moments.binary(h, y, mean, cov)
    w = _draw(mean, cov, REFERENCE_SAMPLES, 11)
    r = torch.sigmoid(torch.einsum("sop,bp->sbo", w, h)) - y
    _assert_within(mu, var, _summary(w[:, None] * r[..., None]))


# ----------------------------------------------------------------------------- multiclass


def _multiclass_problem(seed: int, b=3, d=3, c=3, scale=0.3):
    g = _gen(seed)
    p = d + 1
    h = torch.randn(b, d, generator=g, dtype=DT)
    y = torch.randint(0, c, (b,), generator=g)
    mean = torch.randn(c, p, generator=g, dtype=DT)
    cov = _spd(c * p, g, scale)
    return h, y, mean, cov


def _multiclass_reference(h, y, mean, cov, seed=12):
    c, p = mean.shape
    theta = _draw(mean.reshape(-1), cov, REFERENCE_SAMPLES, seed).reshape(-1, c, p)
    ht = augment(h, p == h.shape[1] + 1)
    r = torch.softmax(torch.einsum("scp,bp->sbc", theta, ht), -1)
    r = r - F.one_hot(y, c).to(DT)
    g = torch.einsum("sbc,scd->sbd", r, theta[..., : h.shape[1]])  # [S, B, D]
    return {k: v[:, None, :] for k, v in _summary(g).items()}


def test_multiclass_rao_blackwell_matches_brute_force() -> None:
    h, y, mean, cov = _multiclass_problem(13)
    # Many logit draws (cheap: C-dimensional) make the bound tight enough to catch a 10% error
    # in the integrated conditional-covariance term.
    samples = 50_000
    mu, var = moments.multiclass(
        h, y, mean, cov, method="rao_blackwell", num_samples=samples, generator=_gen(14)
    )
    assert mu.shape == var.shape == (3, 1, 3)
    # A Rao-Blackwellised estimate has at most the plain Monte-Carlo error at the same S.
    _assert_within(mu, var, _multiclass_reference(h, y, mean, cov), estimator_samples=samples)


def test_multiclass_without_bias_matches_brute_force() -> None:
    h, y, mean, cov = _multiclass_problem(23, b=2, d=3, c=3)
    keep = torch.tensor([i for i in range(12) if i % 4 != 3])  # drop each class's bias weight
    mean, cov = mean[:, :3], cov[keep][:, keep]
    mu, var = moments.multiclass(
        h, y, mean, cov, method="rao_blackwell", num_samples=20_000, generator=_gen(24)
    )
    assert mu.shape == (2, 1, 3)
    reference = _multiclass_reference(h, y, mean, cov)
    _assert_within(mu, var, reference, estimator_samples=20_000)
    _assert_within(*moments.multiclass(h, y, mean, cov), reference)  # the default, qmc


def test_multiclass_rao_blackwell_beats_monte_carlo() -> None:
    """Rao-Blackwellisation lowers the estimator's spread over seeds (same sample count)."""
    h, y, mean, cov = _multiclass_problem(15, b=2, scale=0.5)
    runs: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
    for method in ("rao_blackwell", "monte_carlo"):
        runs[method] = [
            moments.multiclass(h, y, mean, cov, method=method, num_samples=64, generator=_gen(s))
            for s in range(20)
        ]
    for which in (0, 1):  # mu, var
        spread = {k: torch.stack([r[which] for r in v]).std(0).mean() for k, v in runs.items()}
        assert spread["rao_blackwell"] < 0.9 * spread["monte_carlo"]


def test_multiclass_monte_carlo_matches_brute_force() -> None:
    h, y, mean, cov = _multiclass_problem(16)
    samples = 4096
    mu, var = moments.multiclass(
        h, y, mean, cov, method="monte_carlo", num_samples=samples, generator=_gen(17)
    )
    _assert_within(mu, var, _multiclass_reference(h, y, mean, cov), estimator_samples=samples)
    again = moments.multiclass(
        h, y, mean, cov, method="monte_carlo", num_samples=samples, generator=_gen(17), chunk_size=7
    )
    torch.testing.assert_close(again[0], mu)


def test_multiclass_chunks_batch_of_one_and_float32(monkeypatch: pytest.MonkeyPatch) -> None:
    h, y, mean, cov = _multiclass_problem(18, b=5)
    rb = {"method": "rao_blackwell", "num_samples": 300}
    mu, var = moments.multiclass(h, y, mean, cov, **rb, generator=_gen(19))
    # Tiny budget: examples and samples both chunked, the same shared draws.
    monkeypatch.setattr(moments, "_CHUNK_ELEMENTS", 64)
    mu_c, var_c = moments.multiclass(h, y, mean, cov, **rb, generator=_gen(19))
    torch.testing.assert_close(mu_c, mu)
    torch.testing.assert_close(var_c, var)
    monkeypatch.undo()
    mu1, _ = moments.multiclass(h[:1], y[:1], mean, cov, **rb, generator=_gen(19))
    torch.testing.assert_close(mu1, mu[:1])
    # float32 draws differ from float64 ones: compare with the reference within the error.
    mu32, var32 = moments.multiclass(
        h.float(), y, mean.float(), cov.float(), **rb, generator=_gen(19)
    )
    assert mu32.dtype == var32.dtype == torch.float32
    reference = _multiclass_reference(h, y, mean, cov)
    _assert_within(mu32.double(), var32.double(), reference, estimator_samples=300)


# ----------------------------------------------------------------------------- errors


def test_bad_inputs() -> None:
    h, y, mean, cov = _regression_problem(20)
    with pytest.raises(ValueError, match="mean must have shape"):
        moments.regression(h, y, mean[:, :2], cov)
    with pytest.raises(ValueError, match="cov must have shape"):
        moments.regression(h, y, mean, cov[:3, :3])
    with pytest.raises(ValueError, match="y must have shape"):
        moments.regression(h, y[:, :1], mean, cov)
    bad = h.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="h contains"):
        moments.regression(bad, y, mean, cov)
    h, y, mean, cov = _binary_problem(21)
    with pytest.raises(ValueError, match="unknown method"):
        moments.binary(h, y, mean, cov, method="laplace")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="cov must have shape"):
        moments.binary(h, y, mean, cov[0])
    with pytest.raises(ValueError, match="num_samples"):
        moments.binary(h, y, mean, cov, method="monte_carlo", num_samples=0)
    with pytest.raises(ValueError, match="chunk_size"):
        moments.binary(h, y, mean, cov, method="monte_carlo", chunk_size=0)
    h, y, mean, cov = _multiclass_problem(22)
    with pytest.raises(ValueError, match="class ids"):
        moments.multiclass(h, y + 3, mean, cov)
    with pytest.raises(ValueError, match="class ids"):
        moments.multiclass(h, y.to(DT) + 0.5, mean, cov)
    with pytest.raises(ValueError, match="y must have shape"):
        moments.multiclass(h, y[:2], mean, cov)
    with pytest.raises(ValueError, match="cov must have shape"):
        moments.multiclass(h, y, mean, cov[:4, :4])


# ----------------------------------------------------------------------------- exact algebra


def _multiclass_per_draw(h, y, mean, cov, samples, seed):
    """Return (mu, var) [B, D] averaging E[g_d | a] and E[g_d^2 | a] draw by draw (float64).

    The Rao-Blackwell estimator written out directly, one example at a time: the conditional
    mean and covariance of u_d = W[:, d] given the logits a = mu_a + L z, for the same shared
    standard-normal draws z as :func:`moments.multiclass`.
    """
    c, p = mean.shape
    d = h.shape[1]
    ht = augment(h, p == d + 1)
    noise = torch.randn(samples, c, generator=_gen(seed), dtype=DT)
    cov4 = cov.reshape(c, p, c, p)
    mus, variances = [], []
    for i in range(h.shape[0]):
        x = torch.zeros(c, c * p, dtype=DT)  # logits a = x theta
        for k in range(c):
            x[k, k * p : (k + 1) * p] = ht[i]
        v = x @ cov @ x.T
        factor = torch.linalg.cholesky(0.5 * (v + v.T))
        a = ht[i] @ mean.T + noise @ factor.T  # [S, C]
        r = torch.softmax(a, -1) - F.one_hot(y[i], c).to(DT)
        cross = cov @ x.T  # [C*P, C]: Cov(theta, a)
        first = torch.zeros(samples, d, dtype=DT)
        second = torch.zeros(samples, d, dtype=DT)
        for j in range(d):
            rows = torch.arange(c) * p + j  # u_j = theta[:, j]
            k_j = cross[rows]  # [C, C]
            gain = k_j @ torch.linalg.inv(v)
            cond_mean = mean[:, j] + (a - ht[i] @ mean.T) @ gain.T  # [S, C]
            cond_cov = cov4[:, j, :, j] - gain @ k_j.T
            g = (cond_mean * r).sum(-1)
            first[:, j] = g
            second[:, j] = g.square() + torch.einsum("sc,ce,se->s", r, cond_cov, r)
        mu = first.mean(0)
        mus.append(mu)
        variances.append(second.mean(0) - mu.square())
    return torch.stack(mus), torch.stack(variances)


@pytest.mark.parametrize("bias", [True, False])
def test_multiclass_rao_blackwell_equals_per_draw_average(bias: bool) -> None:
    """The moment-of-x form gives the per-draw average exactly (same draws), to rounding."""
    h, y, mean, cov = _multiclass_problem(31, b=4, d=3, c=4)
    if not bias:
        keep = torch.tensor([i for i in range(16) if i % 4 != 3])
        mean, cov = mean[:, :3], cov[keep][:, keep]
    rb = {"method": "rao_blackwell", "num_samples": 257}
    mu, var = moments.multiclass(h, y, mean, cov, **rb, generator=_gen(32))
    mu_ref, var_ref = _multiclass_per_draw(h, y, mean, cov, 257, 32)
    torch.testing.assert_close(mu[:, 0], mu_ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(var[:, 0], var_ref.clamp_min(0), rtol=1e-10, atol=1e-12)
    # Chunks of draws combine exactly (pairwise mean/covariance update).
    mu_c, var_c = moments.multiclass(h, y, mean, cov, **rb, generator=_gen(32), chunk_size=10)
    torch.testing.assert_close(mu_c, mu, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(var_c, var, rtol=1e-12, atol=1e-14)


def test_binary_rao_blackwell_variance_expansion_equals_second_moment_form() -> None:
    """Var expanded in m, s, u equals E[g^2] - E[g]^2 from the same quadrature, to rounding."""
    g = _gen(33)
    b, d, o = 5, 4, 3
    h = torch.randn(b, d, generator=g, dtype=DT)
    y = torch.randint(0, 2, (b, o), generator=g).to(DT)
    mean = torch.randn(o, d + 1, generator=g, dtype=DT)
    cov = torch.stack([_spd(d + 1, g, 0.3) for _ in range(o)])
    mu, var = moments.binary(h, y, mean, cov, nodes=40)
    ht = augment(h, True)
    sh = torch.einsum("opq,bq->bop", cov, ht)
    q = (sh * ht[:, None]).sum(-1)
    u = sh[..., :d] / q.sqrt()[..., None]
    s = cov.diagonal(dim1=-2, dim2=-1)[None, :, :d]
    z, w = moments._hermite(40, DT, h.device)
    r = torch.sigmoid((ht @ mean.T)[..., None] + q.sqrt()[..., None] * z) - y[..., None]
    m = mean[None, :, :d]
    # g at node k, conditional on the logit: E[g_d | z] = (m_d + u_d z) r, Var = (s_d - u_d^2) r^2.
    cond_mean = (m[..., None] + u[..., None] * z) * r[:, :, None, :]
    second = cond_mean.square() + (s - u.square())[..., None] * r[:, :, None, :].square()
    mu_ref = cond_mean @ w
    torch.testing.assert_close(mu, mu_ref, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(
        var, (second @ w - mu_ref.square()).clamp_min(0), rtol=1e-10, atol=1e-13
    )


def test_check_false_gives_the_same_moments_and_skips_value_checks() -> None:
    h, y, mean, cov = _multiclass_problem(34)
    for check in (True, False):
        out = moments.multiclass(h, y, mean, cov, check=check)
        torch.testing.assert_close(out[0], moments.multiclass(h, y, mean, cov)[0])
    bad = h.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="h contains"):
        moments.multiclass(bad, y, mean, cov)
    # Unchecked, the NaN still fails loudly, later (the logit covariance cannot be factorised).
    for method in ("qmc", "rao_blackwell"):
        with pytest.raises(NumericalError, match="logit covariance"):
            moments.multiclass(bad, y, mean, cov, method=method, num_samples=6, check=False)
    hr, yr, mr, cr = _regression_problem(35)
    torch.testing.assert_close(
        moments.regression(hr, yr, mr, cr, check=False)[1], moments.regression(hr, yr, mr, cr)[1]
    )
    yb = (yr > 0).to(DT)
    covb = torch.stack([cr, cr])
    torch.testing.assert_close(
        moments.binary(hr, yb, mr, covb, check=False)[1], moments.binary(hr, yb, mr, covb)[1]
    )
