"""Hand-written float64 references for tests: no function of :mod:`bayesagg` is used here.

Bayesian linear regression in closed form, one Newton step of the summed BCE / cross-entropy
plus a Gaussian prior written example by example (docs/bayesagg-math.md, stage 1), and the exact
regression gradient moments from E[w w^T] = S + m m^T (docs/bayesagg-math.md, stage 2).
"""

from __future__ import annotations

import torch
from torch import Tensor


def with_bias(h: Tensor, bias: bool = True) -> Tensor:
    """Return [h, 1] (or h)."""
    return torch.cat([h, torch.ones(len(h), 1, dtype=h.dtype)], 1) if bias else h


def linear_regression(
    h: Tensor, y: Tensor, mean0: Tensor, precision0: Tensor, noise_var: float = 1.0
) -> tuple[Tensor, Tensor]:
    """Return (mean [O, P], precision [P, P]) of Bayesian linear regression, shared precision."""
    precision = precision0 + h.T @ h / noise_var
    mean = torch.linalg.solve(precision, (precision0 @ mean0.T) + h.T @ y / noise_var).T
    return mean, precision


def newton_binary(
    h: Tensor, y: Tensor, weight: Tensor, bias: Tensor, mean0: Tensor, precision0: Tensor
) -> tuple[Tensor, Tensor]:
    """One Newton step per binary task: (mean [O, D+1], precision [O, D+1, D+1])."""
    x = with_bias(h)
    means, precisions = [], []
    for o in range(weight.shape[0]):
        theta = torch.cat([weight[o], bias[o : o + 1]])
        p = torch.sigmoid(x @ theta)
        grad = x.T @ (p - y[:, o]) + precision0[o] @ (theta - mean0[o])
        prec = precision0[o] + sum(
            p[i] * (1 - p[i]) * torch.outer(x[i], x[i]) for i in range(len(x))
        )
        means.append(theta - torch.linalg.solve(prec, grad))
        precisions.append(prec)
    return torch.stack(means), torch.stack(precisions)


def newton_multiclass(
    h: Tensor, y: Tensor, weight: Tensor, bias: Tensor, mean0: Tensor, precision0: Tensor
) -> tuple[Tensor, Tensor]:
    """One Newton step of a C-class head, row-major [C, D+1] flattening: (mean, precision)."""
    x = with_bias(h)
    c, p_dim = weight.shape[0], x.shape[1]
    theta = torch.cat([weight, bias[:, None]], 1)
    grad = precision0 @ (theta - mean0).reshape(-1)
    prec = precision0.clone()
    for i in range(len(x)):
        prob = torch.softmax(theta @ x[i], 0)
        onehot = torch.zeros(c, dtype=x.dtype)
        onehot[y[i]] = 1.0
        grad = grad + torch.kron(prob - onehot, x[i])
        hessian = torch.diag(prob) - torch.outer(prob, prob)
        prec = prec + torch.kron(hessian, torch.outer(x[i], x[i]))
    step = torch.linalg.solve(prec, grad).reshape(c, p_dim)
    return theta - step, prec


def regression_gradient(h: Tensor, y: Tensor, mean: Tensor, cov: Tensor, s: float) -> Tensor:
    """Return the aggregated per-example gradient g [B, D] of one regression group (bias-free).

    mu_kd = E[2 w_d (w^T x - y_k)] = 2 ((S + m m^T)[d] x - m_d y_k) and its variance (docs/bayesagg-math.md,
    stage 2), then precision^s weights over the group's outputs (eps 1e-8).
    """
    b, d = h.shape
    out = torch.zeros(b, d, dtype=h.dtype)
    for i in range(b):
        x = h[i]
        mu = torch.zeros(mean.shape[0], d, dtype=h.dtype)
        var = torch.zeros_like(mu)
        for k in range(mean.shape[0]):
            m = mean[k]
            c, q, rho = cov @ x, x @ cov @ x, m @ x - y[i, k]
            for j in range(d):
                mu[k, j] = 2 * ((cov[j] + m[j] * m) @ x - m[j] * y[i, k])
                var[k, j] = 4 * (
                    m[j] ** 2 * q
                    + rho**2 * cov[j, j]
                    + cov[j, j] * q
                    + c[j] ** 2
                    + 2 * m[j] * rho * c[j]
                )
        lam = 1 / var.clamp_min(1e-8)
        alpha = lam**s / (lam**s).sum(0)
        out[i] = (alpha * mu).sum(0)
    return out


def sampled_moments(
    h: Tensor,
    y: Tensor,
    kind: str,
    mean: Tensor,
    precision: Tensor,
    samples: int = 100_000,
    seed: int = 0,
) -> tuple[Tensor, Tensor]:
    """Return (mu, var) [B, tasks, D] of the loss gradient w.r.t. h by brute-force Monte Carlo.

    Weights w ~ N(mean, precision^-1) with ``mean`` [O or C, D+1] (bias last) and
    ``precision`` [O, D+1, D+1] (binary, per task) or [C(D+1), C(D+1)] (multiclass); the
    explicit per-sample gradients w.r.t. h (docs/bayesagg-math.md, stage 2): binary w_o (sigmoid(a_o) - y_o),
    multiclass W^T (softmax(a) - e_y).
    """
    g = torch.Generator().manual_seed(seed)
    x = with_bias(h)
    d = h.shape[1]
    if kind == "binary":
        out_mu, out_var = [], []
        for o in range(mean.shape[0]):
            chol = torch.linalg.cholesky(torch.linalg.inv(precision[o]))
            w = mean[o] + torch.randn(samples, d + 1, generator=g, dtype=h.dtype) @ chol.T
            r = torch.sigmoid(w @ x.T) - y[:, o]  # [S, B]
            draws = w[:, None, :d] * r[:, :, None]  # [S, B, D]
            out_mu.append(draws.mean(0))
            out_var.append(draws.var(0))
        return torch.stack(out_mu, 1), torch.stack(out_var, 1)
    c = mean.shape[0]
    chol = torch.linalg.cholesky(torch.linalg.inv(precision))
    flat = mean.reshape(-1) + torch.randn(samples, c * (d + 1), generator=g, dtype=h.dtype) @ chol.T
    w = flat.reshape(samples, c, d + 1)
    prob = torch.softmax(torch.einsum("scp,bp->sbc", w, x), -1)
    residual = prob - torch.nn.functional.one_hot(y, c).to(h.dtype)  # [S, B, C]
    draws = torch.einsum("sbc,scd->sbd", residual, w[:, :, :d])
    return draws.mean(0)[:, None], draws.var(0)[:, None]
