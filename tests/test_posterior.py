"""Head posteriors against closed forms, autograd Newton steps and naive dense constructions."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bayesagg import posterior
from bayesagg.posterior import Gaussian, isotropic_prior

DT = torch.float64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _spd(n: int, g: torch.Generator, scale: float = 1.0) -> torch.Tensor:
    x = torch.randn(n, n, generator=g, dtype=DT)
    return scale * (x @ x.T / n + torch.eye(n, dtype=DT))


@pytest.mark.parametrize("bias", [False, True])
def test_regression_matches_closed_form(bias: bool) -> None:
    g = _gen(0)
    b, d, o, noise = 7, 4, 3, 0.7
    p = d + int(bias)
    h = torch.randn(b, d, generator=g, dtype=DT)
    y = torch.randn(b, o, generator=g, dtype=DT)
    m0 = torch.randn(o, p, generator=g, dtype=DT)
    p0 = _spd(p, g)
    post = posterior.regression(h, y, m0, p0, noise_var=noise, bias=bias)
    ht = torch.cat([h, torch.ones(b, 1, dtype=DT)], 1) if bias else h
    precision = p0 + ht.T @ ht / noise
    cov = torch.linalg.inv(precision)
    for k in range(o):  # explicit inverse, output by output
        expected = cov @ (p0 @ m0[k] + ht.T @ y[:, k] / noise)
        torch.testing.assert_close(post.mean[k], expected)
    torch.testing.assert_close(post.precision, precision)
    torch.testing.assert_close(post.cholesky @ post.cholesky.T, precision)
    torch.testing.assert_close(post.covariance(), cov)
    # Same posterior from the sufficient statistics.
    stats = posterior.regression_from_statistics(ht.T @ ht, ht.T @ y, m0, p0, noise_var=noise)
    torch.testing.assert_close(stats.mean, post.mean)
    torch.testing.assert_close(stats.precision, post.precision)


def test_regression_statistics_accumulate_over_batches() -> None:
    # The epoch-level prior sums H~^T H~ and H~^T Y batch by batch.
    g = _gen(1)
    h = torch.randn(50, 3, generator=g, dtype=DT)
    y = torch.randn(50, 2, generator=g, dtype=DT)
    m0, p0 = isotropic_prior("regression", 2, 4, 0.5, dtype=DT)
    ht = torch.cat([h, torch.ones(50, 1, dtype=DT)], 1)
    # Closed form on all the data at once (prior N(0, 0.5 I), noise variance 1).
    full_mean = torch.linalg.solve(ht.T @ ht + 2.0 * torch.eye(4, dtype=DT), ht.T @ y).T
    hth = sum(ht[i : i + 16].T @ ht[i : i + 16] for i in range(0, 50, 16))
    hty = sum(ht[i : i + 16].T @ y[i : i + 16] for i in range(0, 50, 16))
    stats = posterior.regression_from_statistics(hth, hty, m0, p0)
    torch.testing.assert_close(stats.mean, full_mean)
    parts = [
        posterior.regression_statistics(h[i : i + 16], y[i : i + 16], bias=True)
        for i in (0, 16, 32, 48)
    ]
    torch.testing.assert_close(sum(part[0] for part in parts), hth)
    torch.testing.assert_close(sum(part[1] for part in parts), hty)


def test_regression_batch_of_one_and_float32() -> None:
    g = _gen(2)
    h = torch.randn(1, 3, generator=g)
    y = torch.randn(1, 2, generator=g)
    m0, p0 = isotropic_prior("regression", 2, 3, 1.0)
    post = posterior.regression(h, y, m0, p0)
    assert post.mean.shape == (2, 3) and post.mean.dtype == torch.float32
    ref = posterior.regression(h.double(), y.double(), m0.double(), p0.double())
    torch.testing.assert_close(post.mean.double(), ref.mean, rtol=1e-5, atol=1e-6)


def _binary_problem(seed: int, b: int = 6, d: int = 3, o: int = 2):
    g = _gen(seed)
    p = d + 1
    h = torch.randn(b, d, generator=g, dtype=DT)
    y = torch.randint(0, 2, (b, o), generator=g).to(DT)
    weight = torch.randn(o, d, generator=g, dtype=DT)
    bias = torch.randn(o, generator=g, dtype=DT)
    m0 = torch.randn(o, p, generator=g, dtype=DT)
    p0 = torch.stack([_spd(p, g, 0.5) for _ in range(o)])
    return h, y, weight, bias, m0, p0


def test_binary_is_the_autograd_newton_step() -> None:
    h, y, weight, bias, m0, p0 = _binary_problem(3)
    o, p = m0.shape
    theta_hat = torch.cat([weight, bias[:, None]], 1).reshape(-1)

    def objective(theta: torch.Tensor) -> torch.Tensor:  # summed BCE + prior, over all O tasks
        t = theta.reshape(o, p)
        logits = h @ t[:, :-1].T + t[:, -1]
        data = F.binary_cross_entropy_with_logits(logits, y, reduction="sum")
        delta = t - m0
        return data + 0.5 * torch.einsum("op,opq,oq->", delta, p0, delta)

    grad = torch.autograd.functional.jacobian(objective, theta_hat)
    hess = torch.autograd.functional.hessian(objective, theta_hat)
    post = posterior.binary(h, y, weight, bias, m0, p0)
    newton = theta_hat - torch.linalg.solve(hess, grad)
    torch.testing.assert_close(post.mean.reshape(-1), newton)
    dense = torch.block_diag(*post.precision)
    torch.testing.assert_close(dense, hess)  # includes the zero cross-task blocks


def test_binary_blocks_equal_naive_dense_ggn() -> None:
    h, y, weight, bias, m0, p0 = _binary_problem(4, b=5, d=2, o=3)
    o = m0.shape[0]
    post = posterior.binary(h, y, weight, bias, m0, p0)
    dense = torch.block_diag(*p0)
    for i in range(h.shape[0]):  # J_i^T H_i J_i with J_i = I (x) h~_i^T, H_i = diag(p (1 - p))
        ht = torch.cat([h[i], torch.ones(1, dtype=DT)])
        prob = torch.sigmoid(weight @ h[i] + bias)
        jac = torch.kron(torch.eye(o, dtype=DT), ht[None])
        dense = dense + jac.T @ torch.diag(prob * (1 - prob)) @ jac
    torch.testing.assert_close(torch.block_diag(*post.precision), dense)
    torch.testing.assert_close(post.covariance(), torch.linalg.inv(post.precision))


def _multiclass_problem(seed: int, b: int = 7, d: int = 3, c: int = 3):
    g = _gen(seed)
    p = d + 1
    h = torch.randn(b, d, generator=g, dtype=DT)
    y = torch.randint(0, c, (b,), generator=g)
    weight = torch.randn(c, d, generator=g, dtype=DT)
    bias = torch.randn(c, generator=g, dtype=DT)
    m0 = torch.randn(c, p, generator=g, dtype=DT)
    p0 = _spd(c * p, g, 0.5)
    return h, y, weight, bias, m0, p0


def test_multiclass_is_the_autograd_newton_step() -> None:
    h, y, weight, bias, m0, p0 = _multiclass_problem(5)
    c, p = m0.shape
    theta_hat = torch.cat([weight, bias[:, None]], 1).reshape(-1)

    def objective(theta: torch.Tensor) -> torch.Tensor:
        t = theta.reshape(c, p)
        data = F.cross_entropy(h @ t[:, :-1].T + t[:, -1], y, reduction="sum")
        delta = (t - m0).reshape(-1)
        return data + 0.5 * delta @ p0 @ delta

    grad = torch.autograd.functional.jacobian(objective, theta_hat)
    hess = torch.autograd.functional.hessian(objective, theta_hat)
    post = posterior.multiclass(h, y, weight, bias, m0, p0)
    torch.testing.assert_close(post.precision, hess)
    torch.testing.assert_close(post.mean.reshape(-1), theta_hat - torch.linalg.solve(hess, grad))
    # And against the naive sum of Kronecker products.
    naive = p0.clone()
    for i in range(h.shape[0]):
        ht = torch.cat([h[i], torch.ones(1, dtype=DT)])
        prob = torch.softmax(weight @ h[i] + bias, 0)
        naive += torch.kron(torch.diag(prob) - torch.outer(prob, prob), torch.outer(ht, ht))
    torch.testing.assert_close(post.precision, naive)


def test_chunked_accumulation_equals_unchunked() -> None:
    h, y, weight, bias, m0, p0 = _binary_problem(6, b=23)
    whole = posterior.binary(h, y, weight, bias, m0, p0)
    for size in (1, 5, 23, 100):
        part = posterior.binary(h, y, weight, bias, m0, p0, chunk_size=size)
        torch.testing.assert_close(part.precision, whole.precision)
        torch.testing.assert_close(part.mean, whole.mean)
    h, y, weight, bias, m0, p0 = _multiclass_problem(7, b=23)
    whole = posterior.multiclass(h, y, weight, bias, m0, p0)
    for size in (1, 4, 50):
        part = posterior.multiclass(h, y, weight, bias, m0, p0, chunk_size=size)
        torch.testing.assert_close(part.precision, whole.precision)
        torch.testing.assert_close(part.mean, whole.mean)


def test_full_data_scale_uses_default_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    # A full-training-set fit: shrink the chunk budget so the default path really chunks.
    g = _gen(8)
    h = torch.randn(1000, 8, generator=g)
    y = torch.randint(0, 4, (1000,), generator=g)
    weight, bias = 0.3 * torch.randn(4, 8, generator=g), torch.zeros(4)
    m0, p0 = isotropic_prior("multiclass", 4, 9, 5e-3)
    reference = posterior.multiclass(h.double(), y, weight, bias, m0, p0)
    monkeypatch.setattr(posterior, "_CHUNK_ELEMENTS", 4096)
    post = posterior.multiclass(h, y, weight, bias, m0, p0)
    assert post.mean.dtype == torch.float32
    torch.testing.assert_close(post.mean.double(), reference.mean, rtol=1e-4, atol=1e-5)
    yb = (y[:, None] == torch.arange(3)).float()
    mb, pb = isotropic_prior("binary", 3, 9, 5e-3)
    chunked = posterior.binary(h, yb, weight[:3], bias[:3], mb, pb)
    monkeypatch.setattr(posterior, "_CHUNK_ELEMENTS", 2**24)
    whole = posterior.binary(h, yb, weight[:3], bias[:3], mb, pb)
    torch.testing.assert_close(chunked.mean, whole.mean, rtol=1e-4, atol=1e-5)


def test_isotropic_prior_layouts() -> None:
    m, p = isotropic_prior("regression", 3, 5, 0.1)
    assert m.shape == (3, 5) and p.shape == (5, 5) and torch.allclose(p, 10 * torch.eye(5))
    m, p = isotropic_prior("binary", 3, 5, 0.1)
    assert m.shape == (3, 5) and p.shape == (3, 5, 5)
    m, p = isotropic_prior("multiclass", 3, 5, 0.1, dtype=DT)
    assert m.shape == (3, 5) and p.shape == (15, 15) and p.dtype == DT
    assert not m.any()
    with pytest.raises(ValueError, match="gamma"):
        isotropic_prior("binary", 3, 5, 0.0)
    with pytest.raises(ValueError, match="unknown task kind"):
        isotropic_prior("ordinal", 3, 5, 1.0)  # type: ignore[arg-type]


def test_gaussian_is_frozen() -> None:
    eye = torch.eye(2)
    gauss = Gaussian(mean=torch.zeros(1, 2), precision=eye, cholesky=eye)
    with pytest.raises(AttributeError):
        gauss.mean = torch.ones(1, 2)  # type: ignore[misc]


def test_bad_inputs_name_the_argument() -> None:
    h, y, weight, bias, m0, p0 = _binary_problem(9)
    nan_h = h.clone()
    nan_h[0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="h contains"):
        posterior.binary(nan_h, y, weight, bias, m0, p0)
    inf_prior = p0.clone()
    inf_prior[0, 0, 0] = float("inf")
    with pytest.raises(FloatingPointError, match="prior_precision"):
        posterior.binary(h, y, weight, bias, m0, inf_prior)
    with pytest.raises(ValueError, match="binary targets"):
        posterior.binary(h, y * 2, weight, bias, m0, p0)
    with pytest.raises(ValueError, match="y must have shape"):
        posterior.binary(h, y[:, :1], weight, bias, m0, p0)
    with pytest.raises(ValueError, match="weight must have shape"):
        posterior.binary(h, y, weight[:, :2], bias, m0, p0)
    with pytest.raises(ValueError, match="bias must have shape"):
        posterior.binary(h, y, weight, bias[:1], m0, p0)
    with pytest.raises(ValueError, match="prior_mean must have shape"):
        posterior.binary(h, y, weight, bias, m0[:, :2], p0)
    with pytest.raises(ValueError, match="prior_precision must have shape"):
        posterior.binary(h, y, weight, bias, m0, p0[0])
    with pytest.raises(ValueError, match="h must have shape"):
        posterior.binary(h[0], y, weight, bias, m0, p0)

    h, y, weight, bias, m0, p0 = _multiclass_problem(10)
    for bad in (-1, 3):
        ids = y.clone()
        ids[2] = bad
        with pytest.raises(ValueError, match="class ids"):
            posterior.multiclass(h, ids, weight, bias, m0, p0)
    with pytest.raises(ValueError, match="class ids"):
        posterior.multiclass(h, y.to(DT) + 0.5, weight, bias, m0, p0)
    with pytest.raises(ValueError, match="y must have shape"):
        posterior.multiclass(h, y[:, None], weight, bias, m0, p0)
    with pytest.raises(ValueError, match="prior_precision must have shape"):
        posterior.multiclass(h, y, weight, bias, m0, p0[:4, :4])

    g = _gen(11)
    h, y = torch.randn(4, 2, generator=g, dtype=DT), torch.randn(4, 1, generator=g, dtype=DT)
    m0, p0 = isotropic_prior("regression", 1, 2, 1.0, dtype=DT)
    with pytest.raises(ValueError, match="noise_var"):
        posterior.regression(h, y, m0, p0, noise_var=0.0)
    with pytest.raises(ValueError, match="prior_mean must have shape"):
        posterior.regression(h, y, m0, p0, bias=True)
    with pytest.raises(FloatingPointError, match="y contains"):
        posterior.regression(h, y / 0.0 * 0.0, m0, p0)
    with pytest.raises(ValueError, match="y must have shape"):
        posterior.regression(h, y[:2], m0, p0)
    with pytest.raises(ValueError, match="hty must have shape"):
        posterior.regression_from_statistics(h.T @ h, y, m0, p0)


def test_check_false_gives_the_same_posteriors() -> None:
    """``check=False`` only skips value checks: identical results on valid input."""
    h, y, weight, bias, m0, p0 = _multiclass_problem(40)
    a = posterior.multiclass(h, y, weight, bias, m0, p0)
    b = posterior.multiclass(h, y, weight, bias, m0, p0, check=False)
    torch.testing.assert_close(a.mean, b.mean, rtol=0, atol=0)
    torch.testing.assert_close(a.precision, b.precision, rtol=0, atol=0)
    h, y, weight, bias, m0, p0 = _binary_problem(41)
    a, b = (
        posterior.binary(h, y, weight, bias, m0, p0),
        posterior.binary(h, y, weight, bias, m0, p0, check=False),
    )
    torch.testing.assert_close(a.mean, b.mean, rtol=0, atol=0)
    g = _gen(42)
    hr, yr = torch.randn(6, 3, generator=g, dtype=DT), torch.randn(6, 2, generator=g, dtype=DT)
    m, pr = isotropic_prior("regression", 2, 4, 0.5, dtype=DT)
    a = posterior.regression(hr, yr, m, pr, bias=True)
    b = posterior.regression(hr, yr, m, pr, bias=True, check=False)
    torch.testing.assert_close(a.mean, b.mean, rtol=0, atol=0)
    # The checked version names the bad argument; the unchecked one leaves it to the caller.
    bad = hr.clone()
    bad[0, 0] = float("inf")
    with pytest.raises(FloatingPointError, match="h contains"):
        posterior.regression(bad, yr, m, pr, bias=True)


def test_effective_parameters_count_the_directions_the_data_determine():
    # Reference: PRML Eq. 3.91 from the eigenvalues of H^T H / sigma^2 directly, in float64;
    # H has rank 4 of 6 (two repeated columns), so 2 directions carry no data at all.
    g = torch.Generator().manual_seed(0)
    base = torch.randn(50, 4, generator=g, dtype=torch.float64) * torch.tensor(
        [3.0, 1.0, 0.3, 0.05], dtype=torch.float64
    )
    h = torch.cat([base, base[:, :2]], dim=1)
    noise_var = 2.0
    data = h.T @ h / noise_var
    eig = torch.linalg.eigvalsh(data).clamp_min(0)
    for alpha in (1e-3, 0.5, 40.0, 1e6):
        precision = alpha * torch.eye(6, dtype=torch.float64) + data
        fitted = posterior.Gaussian(
            torch.zeros(1, 6, dtype=torch.float64), precision, torch.linalg.cholesky(precision)
        )
        expected = float((eig / (eig + alpha)).sum())
        assert float(posterior.effective_parameters(fitted, alpha)) == pytest.approx(
            expected, rel=1e-9, abs=1e-9
        )
    # the limits: rank 4 with a negligible prior, nothing under an overwhelming one
    weak = 1e-9 * torch.eye(6, dtype=torch.float64) + data
    weak_fit = posterior.Gaussian(torch.zeros(1, 6), weak, torch.linalg.cholesky(weak))
    assert float(posterior.effective_parameters(weak_fit, 1e-9)) == pytest.approx(4.0, abs=1e-3)
    # a batch of precisions gives one value each
    stacked = torch.stack([precision, weak])
    batch = posterior.Gaussian(torch.zeros(2, 6), stacked, torch.linalg.cholesky(stacked))
    assert posterior.effective_parameters(batch, 1.0).shape == (2,)
    with pytest.raises(ValueError, match="prior_precision"):
        posterior.effective_parameters(fitted, 0.0)
