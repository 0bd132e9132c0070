"""BayesAgg's options beyond the paper and the epoch prior of classification batch posteriors.

References are written out by hand in float64 (Newton steps of logistic regression, Bayesian
linear regression) and gradient moments by brute-force Monte Carlo over the head weights; none
comes from :mod:`bayesagg.posterior`, :mod:`bayesagg.moments` or :mod:`bayesagg.newton`.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from bayesagg import BayesAgg, Binary, Multiclass, Regression
from bayesagg.newton import newton_posterior

D = 3
F64 = torch.float64


def _sigmoid_newton(h, y, theta, m0, p0):
    """One Newton step of sum BCE + prior for one binary head: (mean, precision), by hand."""
    ht = torch.cat([h, torch.ones(len(h), 1, dtype=F64)], 1)
    p = torch.sigmoid(ht @ theta)
    grad = ht.T @ (p - y) + p0 @ (theta - m0)
    prec = ht.T @ (ht * (p * (1 - p))[:, None]) + p0
    return theta - torch.linalg.solve(prec, grad), prec


def _binary_mu_mc(h, y, mean, prec, samples=400_000, seed=0):
    """E[w_{:D} (sigmoid(w . h~) - y)] per example under w ~ N(mean, prec^-1): MC, and its s.e."""
    g = torch.Generator().manual_seed(seed)
    cov = torch.linalg.inv(prec)
    w = mean + torch.randn(samples, D + 1, generator=g, dtype=F64) @ torch.linalg.cholesky(cov).T
    ht = torch.cat([h, torch.ones(len(h), 1, dtype=F64)], 1)
    r = torch.sigmoid(w @ ht.T) - y  # [S, B]
    draws = w[:, None, :D] * r[:, :, None]  # [S, B, D]
    return draws.mean(0), draws.std(0) / samples**0.5


def _logistic_data(n, seed):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, D, generator=g, dtype=F64)
    true = torch.tensor([1.5, -2.0, 1.0], dtype=F64)
    y = (torch.rand(n, generator=g, dtype=F64) < torch.sigmoid(h @ true + 0.3)).to(F64)
    return h, y


def _binary_head(theta):
    head = nn.Linear(D, 1).double()
    with torch.no_grad():
        head.weight.copy_(theta[:D][None])
        head.bias.copy_(theta[D:])
    return head


def _epoch_then_step(agg, head, n=1000, b=6):
    """Feed one warm-up epoch of n examples, refit, then one BayesAgg step on b new examples.

    Returns (the full data, the batch, the per-example gradient mean the step sent into h).
    """
    h_all, y_all = _logistic_data(n, seed=1)
    for part in range(0, n, 100):
        hp = h_all[part : part + 100].clone().requires_grad_(True)
        agg.backward(hp, [head], [y_all[part : part + 100, None]])
    head.zero_grad()  # the head is not stepped: the refit is around the same theta
    agg.end_epoch([head])
    hb, yb = _logistic_data(b, seed=7)
    leaf = hb.clone().requires_grad_(True)
    agg.backward(leaf, [head], [yb[:, None]])
    return (h_all, y_all), (hb, yb), leaf.grad * b


def test_binary_batch_posterior_uses_the_refitted_epoch_prior():
    """The step after a refit = moments of N(newton(theta; batch, prior=full-data fit)).

    Catches a mutant whose classification batch posteriors ignore the epoch prior (use
    N(0, gamma I) instead): with 1000 examples in the epoch the full-data precision dominates
    a 6-example batch, so the two posteriors, and their gradient means, differ widely.
    """
    gamma = 1.0
    theta = torch.tensor([0.4, -0.5, 0.2, 0.0], dtype=F64)
    agg = BayesAgg.paper([Binary("b", 1)], gamma=gamma, warmup_epochs=1)
    (h_all, y_all), (hb, yb), mu = _epoch_then_step(agg, _binary_head(theta))

    iso = torch.eye(D + 1, dtype=F64) / gamma
    m_full, p_full = _sigmoid_newton(h_all, y_all, theta, torch.zeros(D + 1, dtype=F64), iso)
    m_b, p_b = _sigmoid_newton(hb, yb, theta, m_full, p_full)
    expected, se = _binary_mu_mc(hb, yb, m_b, p_b)
    assert torch.allclose(mu, expected, atol=float(6 * se.max()) + 1e-6), (mu, expected)
    # The mutant's posterior (isotropic prior) gives a clearly different gradient mean.
    m_iso, p_iso = _sigmoid_newton(hb, yb, theta, torch.zeros(D + 1, dtype=F64), iso)
    wrong, _ = _binary_mu_mc(hb, yb, m_iso, p_iso)
    assert (wrong - expected).abs().max() > 50 * se.max()


def test_multiclass_batch_posterior_uses_the_refitted_epoch_prior():
    """Multiclass: a prior as precise as the epoch's fit pins the posterior near its mean.

    The epoch prior's precision (1000 examples) makes the batch posterior's covariance tiny,
    so the gradient mean is W_post^T (softmax(W_post h~) - e_y) at the posterior mean, which
    is within 1 % of the prior's mean; with the mutant (prior N(0, gamma I), gamma = 1) a
    6-example posterior is broad and its mean far from it.
    """
    c, n, b = 3, 1000, 6
    g = torch.Generator().manual_seed(2)
    h_all = torch.randn(n, D, generator=g, dtype=F64)
    true = torch.randn(c, D, generator=g, dtype=F64) * 2
    y_all = torch.distributions.Categorical(logits=h_all @ true.T).sample()
    head = nn.Linear(D, c).double()
    agg = BayesAgg.paper([Multiclass("m", c)], gamma=1.0, warmup_epochs=1, num_samples=4096)
    for part in range(0, n, 100):
        agg.backward(
            h_all[part : part + 100].clone().requires_grad_(True),
            [head],
            [y_all[part : part + 100]],
        )
    head.zero_grad()
    agg.end_epoch([head])
    full_mean = agg.prior.posteriors[0].mean  # [C, D + 1]
    hb = torch.randn(b, D, generator=g, dtype=F64)
    yb = torch.randint(0, c, (b,), generator=g)
    leaf = hb.clone().requires_grad_(True)
    agg.backward(leaf, [head], [yb])
    mu = leaf.grad * b
    ht = torch.cat([hb, torch.ones(b, 1, dtype=F64)], 1)
    residual = torch.softmax(ht @ full_mean.T, 1) - nn.functional.one_hot(yb, c).to(F64)
    expected = residual @ full_mean[:, :D]  # [B, D]
    scale = expected.abs().max()
    assert (mu - expected).abs().max() < 0.05 * scale, (mu, expected)


# -- regression_bias -------------------------------------------------------------------------


def test_regression_bias_false_ignores_the_heads_bias_and_zeroes_it():
    gamma = 0.5
    g = torch.Generator().manual_seed(0)
    h = torch.randn(40, D, generator=g, dtype=F64)
    y = torch.randn(40, 2, generator=g, dtype=F64) + 3.0
    head = nn.Linear(D, 2).double()
    agg = BayesAgg.paper([Regression("r", 2)], gamma=gamma, regression_bias=False)
    agg.fit_regression_heads([head], [(h, [y])])
    # Bayesian linear regression without bias, noise variance 1, prior N(0, gamma I).
    expected = torch.linalg.solve(h.T @ h + torch.eye(D, dtype=F64) / gamma, h.T @ y).T
    assert torch.allclose(head.weight.detach(), expected, atol=1e-12)
    assert torch.equal(head.bias.detach(), torch.zeros(2, dtype=F64))


def test_regression_bias_false_step_equals_a_bias_free_head():
    """The step's gradient with a biased head = that of the same head without its bias."""
    g = torch.Generator().manual_seed(1)
    h = torch.randn(8, D, generator=g, dtype=F64)
    y = torch.randn(8, 1, generator=g, dtype=F64)
    biased = nn.Linear(D, 1).double()
    plain = nn.Linear(D, 1, bias=False).double()
    plain.weight.data.copy_(biased.weight.data)
    grads = []
    for head, option in ((biased, False), (plain, True)):
        agg = BayesAgg.paper([Regression("r", 1)], regression_bias=option)
        leaf = h.clone().requires_grad_(True)
        agg.backward(leaf, [head], [y])
        grads.append(leaf.grad)
    assert torch.allclose(grads[0], grads[1], atol=1e-14)
    # ... and differs from the posterior with a bias (the option does something).
    agg = BayesAgg.paper([Regression("r", 1)], regression_bias=True)
    leaf = h.clone().requires_grad_(True)
    agg.backward(leaf, [biased], [y])
    assert not torch.allclose(leaf.grad, grads[0], atol=1e-6)


# -- classification_heads, prior_mean ---------------------------------------------------------


@pytest.mark.parametrize("option", ["trained", "posterior_mean"])
def test_classification_heads_posterior_mean_writes_the_full_data_fit(option):
    gamma = 1.0
    theta = torch.tensor([0.4, -0.5, 0.2, 0.1], dtype=F64)
    head = _binary_head(theta)
    agg = BayesAgg.paper(
        [Binary("b", 1)], gamma=gamma, warmup_epochs=1, classification_heads=option
    )
    h_all, y_all = _logistic_data(300, seed=1)
    agg.backward(h_all.clone().requires_grad_(True), [head], [y_all[:, None]])
    agg.end_epoch([head])
    iso = torch.eye(D + 1, dtype=F64) / gamma
    m_full, _ = _sigmoid_newton(h_all, y_all, theta, torch.zeros(D + 1, dtype=F64), iso)
    now = torch.cat([head.weight.detach()[0], head.bias.detach()])
    if option == "posterior_mean":
        assert torch.allclose(now, m_full, atol=1e-10)
    else:
        assert torch.equal(now, theta)


def test_prior_mean_live_head_centres_the_prior_at_the_head_with_the_full_precision():
    gamma = 1.0
    theta = torch.tensor([0.4, -0.5, 0.2, 0.0], dtype=F64)
    agg = BayesAgg.paper([Binary("b", 1)], gamma=gamma, warmup_epochs=1, prior_mean="live_head")
    (h_all, y_all), (hb, yb), mu = _epoch_then_step(agg, _binary_head(theta))
    iso = torch.eye(D + 1, dtype=F64) / gamma
    _, p_full = _sigmoid_newton(h_all, y_all, theta, torch.zeros(D + 1, dtype=F64), iso)
    m_b, p_b = _sigmoid_newton(hb, yb, theta, theta, p_full)  # prior N(theta, P_full^-1)
    expected, se = _binary_mu_mc(hb, yb, m_b, p_b)
    assert torch.allclose(mu, expected, atol=float(6 * se.max()) + 1e-6)


# -- Newton steps -----------------------------------------------------------------------------


def test_damped_newton_step_is_a_fraction_of_the_full_step():
    h, y = _logistic_data(50, seed=3)
    theta = torch.tensor([0.4, -0.5, 0.2, 0.1], dtype=F64)
    p0 = torch.eye(D + 1, dtype=F64)
    full, prec = _sigmoid_newton(h, y, theta, torch.zeros(D + 1, dtype=F64), p0)
    post = newton_posterior(
        "binary",
        h,
        y[:, None],
        theta[None, :D],
        theta[D:],
        torch.zeros(1, D + 1, dtype=F64),
        p0[None],
        damping=0.3,
    )
    assert torch.allclose(post.mean[0], theta + 0.3 * (full - theta), atol=1e-12)
    assert torch.allclose(post.precision[0], prec, atol=1e-10)


def test_many_newton_steps_reach_the_map():
    """Twenty steps: the gradient of sum BCE + prior vanishes at the mean (the mode)."""
    h, y = _logistic_data(200, seed=4)
    m0 = torch.tensor([0.1, 0.0, -0.1, 0.2], dtype=F64)
    p0 = 0.5 * torch.eye(D + 1, dtype=F64)
    theta = torch.zeros(D + 1, dtype=F64)
    post = newton_posterior(
        "binary", h, y[:, None], theta[None, :D], theta[D:], m0[None], p0[None], steps=20
    )
    m = post.mean[0]
    ht = torch.cat([h, torch.ones(len(h), 1, dtype=F64)], 1)
    grad = ht.T @ (torch.sigmoid(ht @ m) - y) + p0 @ (m - m0)
    assert grad.abs().max() < 1e-10
    one = newton_posterior("binary", h, y[:, None], theta[None, :D], theta[D:], m0[None], p0[None])
    grad_one = ht.T @ (torch.sigmoid(ht @ one.mean[0]) - y) + p0 @ (one.mean[0] - m0)
    assert grad_one.abs().max() > 1e-4  # one step is not yet the mode


def test_newton_options_reach_the_epoch_prior():
    theta = torch.tensor([0.4, -0.5, 0.2, 0.0], dtype=F64)
    agg = BayesAgg.paper([Binary("b", 1)], gamma=1.0, warmup_epochs=1, newton_steps=20)
    (h_all, y_all), _, _ = _epoch_then_step(agg, _binary_head(theta))
    m = agg.prior.posteriors[0].mean[0]
    ht = torch.cat([h_all, torch.ones(len(h_all), 1, dtype=F64)], 1)
    grad = ht.T @ (torch.sigmoid(ht @ m) - y_all) + m  # prior N(0, I)
    assert grad.abs().max() < 1e-8


@pytest.mark.parametrize("steps, damping", [(0, 1.0), (1, 0.0), (1, 1.5), (1.5, 1.0)])
def test_newton_options_are_checked(steps, damping):
    with pytest.raises(ValueError, match="newton"):
        BayesAgg.paper([Binary("b", 1)], newton_steps=steps, newton_damping=damping)


# -- scale_by_tasks ---------------------------------------------------------------------------


def test_scale_by_tasks_multiplies_the_encoder_gradient_by_k_only():
    groups = (Binary("b", 2), Multiclass("m", 3))  # K = 3
    g = torch.Generator().manual_seed(5)
    h = torch.randn(9, D, generator=g, dtype=F64)
    targets = [
        torch.randint(0, 2, (9, 2), generator=g).to(F64),
        torch.randint(0, 3, (9,), generator=g),
    ]
    torch.manual_seed(0)
    heads = nn.ModuleList([nn.Linear(D, 2), nn.Linear(D, 3)]).double()
    out = {}
    for scale in (False, True):
        agg = BayesAgg.paper(
            groups, scale_by_tasks=scale, generator=torch.Generator().manual_seed(1)
        )
        mine = copy.deepcopy(heads)
        leaf = h.clone().requires_grad_(True)
        agg.backward(leaf, mine, targets)
        out[scale] = (leaf.grad, [p.grad for p in mine.parameters()])
    assert torch.allclose(out[True][0], 3 * out[False][0], rtol=1e-12, atol=1e-15)
    for a, b in zip(out[True][1], out[False][1], strict=True):
        assert torch.equal(a, b)  # the heads' own gradients are not scaled


def test_options_are_part_of_the_configuration():
    agg = BayesAgg.paper([Binary("b", 1)], prior_mean="live_head", newton_steps=3)
    state = agg.state_dict()
    assert state["config"]["prior_mean"] == "live_head"
    other = BayesAgg.paper([Binary("b", 1)])
    with pytest.raises(ValueError, match="prior_mean"):
        other.load_state_dict(state)
    for bad in ({"prior_mean": "zero"}, {"classification_heads": "frozen"}):
        with pytest.raises(ValueError):
            BayesAgg.paper([Binary("b", 1)], **bad)


def test_autocast_does_not_reach_the_posteriors_and_moments():
    """Under a caller's bfloat16 autocast the aggregated gradient is the float32 one exactly:
    the fits, moments and weights run with autocast off (mixed-precision training loops)."""
    torch.manual_seed(0)
    groups = [Regression("r", 2), Binary("b", 1), Multiclass("m", 4)]
    heads = [nn.Linear(D, 2), nn.Linear(D, 1), nn.Linear(D, 4)]
    g = torch.Generator().manual_seed(3)
    h = torch.randn(16, D, generator=g)
    targets = [
        torch.randn(16, 2, generator=g),
        torch.randint(0, 2, (16, 1), generator=g).float(),
        torch.randint(0, 4, (16,), generator=g),
    ]
    results = []
    for autocast in (False, True):
        agg = BayesAgg(groups, regression_prior="fixed")
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            agg.backward(h.clone().requires_grad_(), heads, targets)
            agg.end_epoch(heads)
            results.append(agg.representation_gradient(h.clone().requires_grad_(), heads, targets))
    torch.testing.assert_close(results[1], results[0], rtol=0, atol=0)
