"""The evidence approximation of the regression fits, and the regression-head options.

References, all float64 and written here: the log evidence as the multivariate-normal density of
each output's N targets under y ~ N(0, H H^T / alpha + I / beta) (PRML Eq. 3.85 marginalised
directly, no sufficient statistics); the maximiser by a grid search over that density; the
full-data fit and the batch posterior by Bayesian linear regression in closed form
(hand_reference); the step's gradient by the hand-written moments. None of them calls
:mod:`bayesagg.evidence`, :mod:`bayesagg.posterior` or :mod:`bayesagg.moments`.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import hand_reference as hand
from bayesagg import BayesAgg, Binary, Regression
from bayesagg.evidence import log_evidence, maximise_evidence
from bayesagg.linalg import NumericalError
from bayesagg.prior import RegressionStatistics

F64 = torch.float64


def _data(n=60, p=4, o=2, noise=0.4, scale=0.8, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, p, generator=g, dtype=F64)
    w = scale * torch.randn(p, o, generator=g, dtype=F64)
    y = h @ w + noise * torch.randn(n, o, generator=g, dtype=F64)
    return h, y


def _statistics(h, y):
    return h.T @ h, h.T @ y, y.square().sum(0), h.shape[0]


def _mvn_log_density(h, y, alpha, beta):
    """[G, O]: ln N(y_o; 0, H H^T / alpha + I / beta) for each (alpha, beta) of the grid [G]."""
    alpha = torch.as_tensor(alpha, dtype=F64).reshape(-1, 1, 1)
    beta = torch.as_tensor(beta, dtype=F64).reshape(-1, 1, 1)
    n = h.shape[0]
    cov = (h @ h.T)[None] / alpha + torch.eye(n, dtype=F64)[None] / beta
    dist = torch.distributions.MultivariateNormal(torch.zeros(n, dtype=F64), cov[:, None])
    return dist.log_prob(y.T[None])  # [G, O]


@pytest.mark.parametrize(("alpha", "beta"), [(0.5, 2.0), (3.0, 0.7), (1e-3, 20.0)])
def test_log_evidence_is_the_marginal_density_of_the_targets(alpha, beta):
    h, y = _data()
    got = log_evidence(*_statistics(h, y), alpha, beta)
    expected = _mvn_log_density(h, y, alpha, beta)[0]
    assert torch.allclose(got, expected, rtol=1e-10, atol=1e-8)


@pytest.mark.parametrize(("n", "noise", "scale"), [(60, 0.4, 0.8), (25, 1.5, 0.3)])
def test_maximiser_matches_a_fine_grid_search_of_the_density(n, noise, scale):
    h, y = _data(n=n, noise=noise, scale=scale, seed=n)
    fit = maximise_evidence(*_statistics(h, y))
    # Coarse grid over four decades each, then a fine one around its best point.
    la, lb = torch.meshgrid(
        torch.linspace(-3, 3, 61, dtype=F64), torch.linspace(-3, 3, 61, dtype=F64), indexing="ij"
    )
    values = _mvn_log_density(h, y, 10 ** la.flatten(), 10 ** lb.flatten()).sum(1)
    best = int(values.argmax())
    ca, cb = float(la.flatten()[best]), float(lb.flatten()[best])
    la, lb = torch.meshgrid(
        torch.linspace(ca - 0.1, ca + 0.1, 81, dtype=F64),
        torch.linspace(cb - 0.1, cb + 0.1, 81, dtype=F64),
        indexing="ij",
    )
    values = _mvn_log_density(h, y, 10 ** la.flatten(), 10 ** lb.flatten()).sum(1)
    best = int(values.argmax())
    assert abs(math.log10(fit.prior_precision) - float(la.flatten()[best])) < 0.006
    assert abs(math.log10(fit.noise_precision) - float(lb.flatten()[best])) < 0.006
    # The fixed point is at least as good as every grid point (it is the maximiser).
    at_fit = _mvn_log_density(h, y, fit.prior_precision, fit.noise_precision).sum()
    assert float(at_fit) >= float(values.max()) - 1e-9
    assert fit.log_evidence == pytest.approx(float(at_fit), abs=1e-8)


def test_fixed_point_converges_to_the_stationarity_conditions():
    h, y = _data(n=80, p=5, o=3)
    fit = maximise_evidence(*_statistics(h, y), tolerance=1e-12)
    assert fit.iterations < 200
    a, b = fit.prior_precision, fit.noise_precision
    # PRML Eqs. 3.91-3.95 summed over the outputs, evaluated by hand with numpy-free algebra.
    m = torch.linalg.solve(h.T @ h + (a / b) * torch.eye(5, dtype=F64), h.T @ y)
    lam = torch.linalg.eigvalsh(b * h.T @ h)
    g = float((lam / (lam + a)).sum())
    assert fit.effective_parameters == pytest.approx(g, rel=1e-10)
    assert a == pytest.approx(3 * g / float(m.square().sum()), rel=1e-9)
    assert b == pytest.approx(3 * (80 - g) / float((y - h @ m).square().sum()), rel=1e-9)
    # Warm starts reach the same point.
    other = maximise_evidence(*_statistics(h, y), initial=(1e3, 1e-3), tolerance=1e-12)
    assert other.prior_precision == pytest.approx(a, rel=1e-7)
    assert other.noise_precision == pytest.approx(b, rel=1e-7)


def test_no_maximiser_and_no_convergence_raise_a_clear_error():
    h, y = _data()
    with pytest.raises(NumericalError, match=r"group 'r'.*no component"):
        maximise_evidence(*_statistics(h, torch.zeros_like(y)), where="group 'r'")
    with pytest.raises(NumericalError, match="did not converge in 2 iterations"):
        maximise_evidence(*_statistics(h, y), max_iterations=2)
    # Targets orthogonal to the features (up to rounding): the evidence grows with alpha.
    noise = torch.randn(60, 2, generator=torch.Generator().manual_seed(5), dtype=F64)
    orthogonal = noise - h @ torch.linalg.lstsq(h, noise).solution
    with pytest.raises(NumericalError, match=r"no linear signal.*regression_prior='fixed'"):
        maximise_evidence(*_statistics(h, orthogonal))
    # Noise-free targets, exactly linear in the features: no finite noise precision.
    exact = h @ torch.linspace(-1, 1, 8, dtype=F64).reshape(4, 2)
    with pytest.raises(NumericalError, match="no finite maximiser"):
        maximise_evidence(*_statistics(h, exact))
    with pytest.raises(ValueError, match="yty must have shape"):
        maximise_evidence(h.T @ h, h.T @ y, y.square().sum(), 60)


def test_streamed_statistics_fit_equals_the_closed_form_at_the_maximiser():
    h, y = _data(n=90, p=4, o=2, seed=3)
    stats = RegressionStatistics(4, 2, device=h.device)
    for part in range(0, 90, 30):
        stats.update(h[part : part + 30], y[part : part + 30])
    gaussian, fit = stats.fit_evidence()
    a, b = fit.prior_precision, fit.noise_precision
    mean, precision = hand.linear_regression(
        h, y, torch.zeros(2, 4, dtype=F64), a * torch.eye(4, dtype=F64), noise_var=1 / b
    )
    assert torch.allclose(gaussian.mean, mean, atol=1e-10)
    assert torch.allclose(gaussian.precision, precision, atol=1e-9)


# -- BayesAgg with regression_prior="evidence" -----------------------------------------------


def _epoch(agg, head, h, y, batch=20):
    for part in range(0, len(h), batch):
        agg.backward(
            h[part : part + batch].clone().requires_grad_(True), [head], [y[part : part + batch]]
        )
    agg.end_epoch([head])


def test_evidence_epoch_fit_writes_the_maximiser_mean_and_the_next_step_uses_its_noise():
    h, y = _data(n=100, p=3, o=2, noise=0.3, seed=4)
    head = nn.Linear(3, 2, bias=False).double()
    agg = BayesAgg.paper([Regression("r", 2)], warmup_epochs=1, regression_prior="evidence")
    _epoch(agg, head, h, y)
    fit = agg.prior.evidence[0]
    assert fit is not None and fit.noise_precision > 5  # noise sd 0.3: beta near 11, not 1
    a, b = fit.prior_precision, fit.noise_precision
    mean, precision = hand.linear_regression(
        h, y, torch.zeros(2, 3, dtype=F64), a * torch.eye(3, dtype=F64), noise_var=1 / b
    )
    assert torch.allclose(head.weight.detach(), mean, atol=1e-10)
    # Next step: batch posterior = full-data posterior updated with noise variance 1 / beta.
    hb, yb = _data(n=6, p=3, o=2, seed=9)
    leaf = hb.clone().requires_grad_(True)
    agg.backward(leaf, [head], [yb])
    m_b, p_b = hand.linear_regression(hb, yb, mean, precision, noise_var=1 / b)
    expected = hand.regression_gradient(hb, yb, m_b, torch.linalg.inv(p_b), agg.s_regression)
    assert torch.allclose(leaf.grad * 6, expected, atol=1e-9)


def test_fixed_prior_keeps_gamma_and_noise_var():
    h, y = _data(n=100, p=3, o=2, noise=0.3, seed=4)
    head = nn.Linear(3, 2, bias=False).double()
    agg = BayesAgg.paper([Regression("r", 2)], warmup_epochs=1, gamma=0.1)
    _epoch(agg, head, h, y)
    assert agg.prior.evidence == [None]
    assert agg.prior.noise_variance(0) == 1.0 and agg.prior.prior_precision(0) == 10.0
    mean, _ = hand.linear_regression(
        h, y, torch.zeros(2, 3, dtype=F64), 10 * torch.eye(3, dtype=F64)
    )
    assert torch.allclose(head.weight.detach(), mean, atol=1e-10)


def test_fit_regression_heads_uses_the_evidence():
    h, y = _data(n=70, p=3, o=1, noise=0.2, seed=5)
    head = nn.Linear(3, 1, bias=False).double()
    agg = BayesAgg([Regression("r", 1)], regression_prior="evidence")
    agg.fit_regression_heads([head], [(h[:35], [y[:35]]), (h[35:], [y[35:]])])
    fit = maximise_evidence(*_statistics(h, y))
    mean, _ = hand.linear_regression(
        h,
        y,
        torch.zeros(1, 3, dtype=F64),
        fit.prior_precision * torch.eye(3, dtype=F64),
        noise_var=1 / fit.noise_precision,
    )
    assert torch.allclose(head.weight.detach(), mean, atol=1e-10)


def test_evidence_state_survives_a_checkpoint():
    h, y = _data(n=60, p=3, o=2, seed=6)
    head = nn.Linear(3, 2, bias=False).double()
    agg = BayesAgg([Regression("r", 2)], regression_prior="evidence")
    _epoch(agg, head, h, y)
    other = BayesAgg([Regression("r", 2)], regression_prior="evidence")
    other.load_state_dict(agg.state_dict())
    assert other.prior.evidence == agg.prior.evidence
    assert other.prior.noise_variance(0) == agg.prior.noise_variance(0) != 1.0
    with pytest.raises(ValueError, match="regression_prior"):
        BayesAgg([Regression("r", 2)], regression_prior="fixed").load_state_dict(agg.state_dict())


# -- regression_heads="trained" ---------------------------------------------------------------


def test_trained_regression_heads_get_gradients_and_centre_the_batch_posterior():
    h, y = _data(n=100, p=3, o=2, seed=7)
    head = nn.Linear(3, 2, bias=False).double()
    agg = BayesAgg.paper([Regression("r", 2)], warmup_epochs=1, regression_heads="trained")
    _epoch(agg, head, h, y)
    live = head.weight.detach().clone()
    # The epoch's fit did not overwrite the head; it only gave the precision.
    _, precision = hand.linear_regression(
        h, y, torch.zeros(2, 3, dtype=F64), torch.eye(3, dtype=F64) / agg.gamma
    )
    head.zero_grad()
    hb, yb = _data(n=6, p=3, o=2, seed=10)
    leaf = hb.clone().requires_grad_(True)
    agg.backward(leaf, [head], [yb])
    assert torch.equal(head.weight.detach(), live)
    # The head's gradient: that of the summed per-output mean squared errors.
    w = live.clone().requires_grad_(True)
    ((hb @ w.T - yb).square().mean(0)).sum().backward()
    assert torch.allclose(head.weight.grad, w.grad, atol=1e-12)
    m_b, p_b = hand.linear_regression(hb, yb, live, precision)
    expected = hand.regression_gradient(hb, yb, m_b, torch.linalg.inv(p_b), agg.s_regression)
    assert torch.allclose(leaf.grad * 6, expected, atol=1e-9)


def test_trained_heads_with_a_bias_outside_the_posterior_subtract_it_from_the_targets():
    h, y = _data(n=6, p=3, o=1, seed=11)
    biased = nn.Linear(3, 1).double()
    with torch.no_grad():
        biased.bias.fill_(0.7)
    plain = nn.Linear(3, 1, bias=False).double()
    plain.weight.data.copy_(biased.weight.data)
    grads = []
    for head, target in ((biased, y), (plain, y - 0.7)):
        agg = BayesAgg.paper([Regression("r", 1)], regression_heads="trained")
        leaf = h.clone().requires_grad_(True)
        agg.backward(leaf, [head], [target])
        grads.append(leaf.grad)
    assert torch.allclose(grads[0], grads[1], atol=1e-13)


def test_regression_options_are_checked_and_paper_behaviour_is_the_table():
    with pytest.raises(ValueError, match="regression_prior"):
        BayesAgg([Regression("r", 1)], regression_prior="mackay")
    with pytest.raises(ValueError, match="regression_heads"):
        BayesAgg([Regression("r", 1)], regression_heads="live")
    from bayesagg.bayes_agg import PAPER_BEHAVIOUR

    # Every setting of the published method (Achituve et al. 2024 and the authors' trainers)
    # that is an option here, written out by hand.
    published = {
        "newton_steps": 1,
        "newton_damping": 1.0,
        "scale_by_tasks": False,
        "prior_mean": "full_data",
        "classification_heads": "trained",
        "regression_bias": False,
        "regression_prior": "fixed",
        "regression_heads": "fitted",
        "regression_fit": "epoch",
        "noise_var": 1.0,
        "regression_refresh": 0,
    }
    paper = BayesAgg.paper([Regression("r", 1), Binary("b", 1)])._config()
    assert {k: paper[k] for k in published} == published
    default = BayesAgg([Regression("r", 1), Binary("b", 1)])._config()
    differs = {k for k in published if default[k] != published[k]}
    assert differs <= set(PAPER_BEHAVIOUR)


# -- regression_refresh: priors from exponentially forgotten recent statistics -----------------


def test_refresh_refits_the_regression_prior_on_forgotten_statistics():
    h, y = _data(n=40, p=3, o=2, seed=12)
    head = nn.Linear(3, 2, bias=False).double()
    gamma = 0.5
    agg = BayesAgg.paper([Regression("r", 2)], warmup_epochs=1, gamma=gamma, regression_refresh=2)
    _epoch(agg, head, h, y, batch=10)  # warm-up epoch: 4 batches, nothing forgotten yet
    hb, yb = _data(n=20, p=3, o=2, seed=13)
    batches = [(hb[:10], yb[:10]), (hb[10:], yb[10:])]
    for x, t in batches:
        agg.backward(x.clone().requires_grad_(True), [head], [t])
    # By hand: each new batch of 10 multiplies the old sums by 1 - 10/40.
    keep = 0.75
    hth = keep**2 * h.T @ h + keep * batches[0][0].T @ batches[0][0] + hb[10:].T @ hb[10:]
    hty = keep**2 * h.T @ y + keep * batches[0][0].T @ batches[0][1] + hb[10:].T @ yb[10:]
    expected = torch.linalg.solve(hth + torch.eye(3, dtype=F64) / gamma, hty).T
    assert torch.allclose(agg.prior.posteriors[0].mean, expected, atol=1e-10)
    assert torch.allclose(
        agg.prior.posteriors[0].precision, hth + torch.eye(3, dtype=F64) / gamma, atol=1e-10
    )
    # Only every 2nd step: after one more step the prior is still the one above.
    before = agg.prior.posteriors[0].mean.clone()
    agg.backward(hb[:10].clone().requires_grad_(True), [head], [yb[:10]])
    assert torch.equal(agg.prior.posteriors[0].mean, before)
    # ... and a checkpoint carries the recent statistics.
    other = BayesAgg.paper([Regression("r", 2)], warmup_epochs=1, gamma=gamma, regression_refresh=2)
    other.load_state_dict(agg.state_dict())
    for a in (agg, other):
        a.backward(hb[10:].clone().requires_grad_(True), [head], [yb[10:]])
    assert torch.equal(agg.prior.posteriors[0].mean, other.prior.posteriors[0].mean)
    assert not torch.equal(agg.prior.posteriors[0].mean, before)


def test_no_refresh_keeps_the_epoch_prior_within_the_epoch():
    h, y = _data(n=40, p=3, o=2, seed=12)
    head = nn.Linear(3, 2, bias=False).double()
    agg = BayesAgg.paper([Regression("r", 2)], warmup_epochs=1)
    _epoch(agg, head, h, y, batch=10)
    before = agg.prior.posteriors[0].mean.clone()
    for _ in range(3):
        agg.backward(h[:10].clone().requires_grad_(True), [head], [y[:10] + 1])
    assert torch.equal(agg.prior.posteriors[0].mean, before)
    with pytest.raises(ValueError, match="regression_refresh"):
        BayesAgg([Regression("r", 1)], regression_refresh=-1)


def test_an_epoch_fit_without_evidence_maximiser_falls_back_to_the_fixed_prior_and_says_so():
    h, _ = _data(n=60, p=4, o=2, seed=14)
    noise = torch.randn(60, 2, generator=torch.Generator().manual_seed(5), dtype=F64)
    orthogonal = noise - h @ torch.linalg.lstsq(h, noise).solution  # no signal in h
    head = nn.Linear(4, 2, bias=False).double()
    agg = BayesAgg.paper([Regression("r", 2)], regression_prior="evidence", gamma=0.5)
    with pytest.warns(RuntimeWarning, match="no linear signal.*fixed prior"):
        _epoch(agg, head, h, orthogonal)
    assert agg.prior.evidence == [None] and agg.prior.evidence_fallbacks == [1]
    expected = torch.linalg.solve(h.T @ h + 2 * torch.eye(4, dtype=F64), h.T @ orthogonal).T
    assert torch.allclose(agg.prior.posteriors[0].mean, expected, atol=1e-10)
    with pytest.warns(RuntimeWarning, match="This refit uses the fixed prior"):
        agg.fit_regression_heads([head], [(h, [orthogonal])])
    assert torch.allclose(head.weight.detach(), expected, atol=1e-10)
