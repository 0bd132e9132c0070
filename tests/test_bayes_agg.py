"""BayesAgg (the stateful step object): gradients, warm-up, heads, weights, state round trip."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn

import hand_reference as hand
from bayesagg import BayesAgg, Binary, Multiclass, Regression
from bayesagg.tasks import task_losses

D = 5
F64 = torch.float64
GROUPS = (Regression("reg", outputs=2), Binary("bin", outputs=3), Multiclass("cls", classes=4))


def _heads(dtype=torch.float64, seed=0, regression_bias=False):
    torch.manual_seed(seed)
    return nn.ModuleList(
        [
            nn.Linear(D, 2, bias=regression_bias),
            nn.Linear(D, 3),
            nn.Linear(D, 4),
        ]
    ).to(dtype)


def _batch(b=7, seed=1, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(b, D, generator=g, dtype=dtype)
    targets = [
        torch.randn(b, 2, generator=g, dtype=dtype),
        torch.randint(0, 2, (b, 3), generator=g).to(dtype),
        torch.randint(0, 4, (b,), generator=g),
    ]
    return h, targets


def test_regression_gradient_matches_hand_computation():
    """h.grad = (1/B) sum_k alpha_k mu_k with the posterior and moments written out by hand."""
    gamma, s, b, o = 0.5, 0.7, 4, 3
    agg = BayesAgg.paper([Regression("r", outputs=o)], s_regression=s, gamma=gamma)
    head = nn.Linear(D, o, bias=False).double()
    g = torch.Generator().manual_seed(3)
    h = torch.randn(b, D, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randn(b, o, generator=g, dtype=torch.float64)
    agg.backward(h, [head], [y])

    hd = h.detach()
    precision = torch.eye(D, dtype=torch.float64) / gamma + hd.T @ hd  # noise variance 1
    cov = torch.linalg.inv(precision)
    mean = (cov @ hd.T @ y).T  # [O, D]
    expected = torch.zeros(b, D, dtype=torch.float64)
    for i in range(b):
        mu = torch.zeros(o, D, dtype=torch.float64)
        var = torch.zeros(o, D, dtype=torch.float64)
        for k in range(o):
            m, x = mean[k], hd[i]
            c, q, rho = cov @ x, x @ cov @ x, m @ x - y[i, k]
            for d in range(D):
                # E[2 w_d (w^T x - y)] = 2 (E[w_d w^T] x - m_d y), E[w w^T] = S + m m^T.
                mu[k, d] = 2 * ((cov[d] + m[d] * m) @ x - m[d] * y[i, k])
                var[k, d] = 4 * (
                    m[d] ** 2 * q
                    + rho**2 * cov[d, d]
                    + cov[d, d] * q
                    + c[d] ** 2
                    + 2 * m[d] * rho * c[d]
                )
        lam = 1 / var.clamp_min(1e-8)
        alpha = lam**s / (lam**s).sum(0)
        expected[i] = (alpha * mu).sum(0)
    torch.testing.assert_close(h.grad, expected / b, rtol=1e-10, atol=1e-12)
    assert all(p.grad is None for p in head.parameters())


def _reference_gradient(h, heads, targets, *, gamma, s_reg, s_cls):
    """Return (g/B, alpha) by hand: closed-form and Newton posteriors with the isotropic prior
    (first epoch), exact regression moments, Monte-Carlo classification moments
    (tests/hand_reference.py), precision^s weights over the six tasks."""
    eye = torch.eye(D + 1, dtype=F64) / gamma
    mean, precision = hand.linear_regression(
        h, targets[0], torch.zeros(2, D, dtype=F64), eye[:D, :D]
    )
    cov = torch.linalg.inv(precision)
    mus, variances = [], []
    for k in range(2):  # regression outputs, exact (docs/bayesagg-math.md, stage 2)
        one = hand.regression_gradient(h, targets[0][:, k : k + 1], mean[k : k + 1], cov, 0.0)
        mus.append(one[:, None])
    variances.append(_regression_variances(h, targets[0], mean, cov))
    w, b = heads[1].weight.detach(), heads[1].bias.detach()
    mean, precision = hand.newton_binary(
        h, targets[1], w, b, torch.zeros(3, D + 1, dtype=F64), eye.expand(3, -1, -1)
    )
    mu, var = hand.sampled_moments(h, targets[1], "binary", mean, precision, seed=1)
    mus.append(mu), variances.append(var)
    w, b = heads[2].weight.detach(), heads[2].bias.detach()
    big = torch.eye(4 * (D + 1), dtype=F64) / gamma
    mean, precision = hand.newton_multiclass(
        h, targets[2], w, b, torch.zeros(4, D + 1, dtype=F64), big
    )
    mu, var = hand.sampled_moments(h, targets[2], "multiclass", mean, precision, seed=2)
    mus.append(mu), variances.append(var)
    mu, var = torch.cat(mus, 1), torch.cat(variances, 1)
    lam = 1 / var.clamp_min(1e-8)
    powers = torch.tensor([s_reg] * 2 + [s_cls] * 4, dtype=F64)[None, :, None]
    alpha = lam**powers / (lam**powers).sum(1, keepdim=True)
    return (alpha * mu).sum(1) / h.shape[0], alpha


def _regression_variances(h, y, mean, cov):
    """Var[g_d] of each regression output (docs/bayesagg-math.md, stage 2), written out: [B, O, D]."""
    out = torch.zeros(h.shape[0], mean.shape[0], D, dtype=F64)
    for i in range(h.shape[0]):
        x = h[i]
        c, q = cov @ x, x @ cov @ x
        for k in range(mean.shape[0]):
            m = mean[k]
            rho = m @ x - y[i, k]
            diag = torch.diagonal(cov)
            out[i, k] = 4 * (m**2 * q + rho**2 * diag + diag * q + c**2 + 2 * m * rho * c)
    return out


def test_mixed_groups_gradient_is_the_composition_of_the_stages():
    heads = _heads()
    h, targets = _batch()
    h.requires_grad_(True)
    agg = BayesAgg.paper(
        GROUPS,
        s_regression=0.8,
        s_classification=0.3,
        gamma=0.2,
        num_samples=20_000,
        generator=torch.Generator().manual_seed(11),
    )
    losses = agg.backward(h, heads, targets)
    expected, alpha = _reference_gradient(
        h.detach(), heads, targets, gamma=0.2, s_reg=0.8, s_cls=0.3
    )
    # The classification moments of both sides are sampled (100k weight draws here, 20k
    # logit draws in BayesAgg's multiclass estimator): agreement within 2 % of the scale.
    scale = float(expected.abs().max())
    torch.testing.assert_close(h.grad, expected, rtol=0.0, atol=0.02 * scale)
    torch.testing.assert_close(agg.last_weights, alpha.mean(dim=(0, 2)), rtol=0.0, atol=0.01)
    assert agg.last_weights.shape == (6,)
    torch.testing.assert_close(agg.last_weights.sum(), torch.tensor(1.0, dtype=torch.float64))
    assert agg.last_weights_per_dimension.shape == (6, D)
    # Returned losses: the K per-task mean losses of the heads, detached.
    reference = task_losses(GROUPS, [head(h.detach()) for head in heads], targets)
    torch.testing.assert_close(losses, reference.detach())
    assert not losses.requires_grad


def test_classification_heads_get_their_ordinary_gradients():
    heads = _heads()
    reference_heads = copy.deepcopy(heads)
    h, targets = _batch()
    agg = BayesAgg.paper(GROUPS)
    agg.backward(h.clone().requires_grad_(True), heads, targets)
    losses = task_losses(GROUPS, [head(h) for head in reference_heads], targets)
    losses[2:].sum().backward()  # the binary and multiclass tasks
    for i in (1, 2):
        for p, q in zip(heads[i].parameters(), reference_heads[i].parameters(), strict=True):
            torch.testing.assert_close(p.grad, q.grad)
    assert heads[0].weight.grad is None


def test_regression_head_grad_is_cleared_at_bayesagg_steps():
    heads = _heads()
    heads[0].weight.grad = torch.ones_like(heads[0].weight)  # e.g. zero_grad(set_to_none=False)
    h, targets = _batch()
    BayesAgg.paper(GROUPS).backward(h.requires_grad_(True), heads, targets)
    assert heads[0].weight.grad is None


def test_warmup_steps_are_linear_scalarisation():
    torch.manual_seed(0)
    encoder = nn.Linear(3, D).double()
    heads = _heads(regression_bias=True)
    enc_ls, heads_ls = copy.deepcopy(encoder), copy.deepcopy(heads)
    x = torch.randn(6, 3, dtype=torch.float64)
    _, targets = _batch(6)
    agg = BayesAgg.paper(GROUPS, warmup_epochs=1)
    assert agg.in_warmup
    losses = agg.backward(encoder(x), heads, targets)
    h = enc_ls(x)
    reference = task_losses(GROUPS, [head(h) for head in heads_ls], targets)
    reference.sum().backward()
    torch.testing.assert_close(losses, reference.detach())
    for mine, theirs in zip(
        [*encoder.parameters(), *heads.parameters()],
        [*enc_ls.parameters(), *heads_ls.parameters()],
        strict=True,
    ):
        torch.testing.assert_close(mine.grad, theirs.grad)
    assert agg.last_weights is None
    agg.end_epoch()
    assert not agg.in_warmup and agg.epoch == 1


@pytest.mark.parametrize("bias", [False, True])
def test_end_epoch_sets_regression_heads_to_the_full_data_posterior_mean(bias):
    heads = _heads(regression_bias=bias)
    agg = BayesAgg.paper(GROUPS, gamma=0.3, warmup_epochs=2, regression_bias=True)
    batches = [_batch(5, seed) for seed in range(3)]
    for h, targets in batches:
        agg.backward(h.clone().requires_grad_(True), heads, targets)
    before = heads[0].weight.detach().clone()
    agg.end_epoch()  # epoch 0 of 2 warm-up epochs: the heads stay as LS left them
    torch.testing.assert_close(heads[0].weight.detach(), before)
    assert agg.regression_fit_source is None
    for h, targets in batches:
        agg.backward(h.clone().requires_grad_(True), heads, targets)
    agg.end_epoch()  # last warm-up epoch: the next epoch is BayesAgg-MTL, heads are fitted
    features = torch.cat([h for h, _ in batches])
    y = torch.cat([t[0] for _, t in batches])
    p = D + int(bias)
    expected, _ = hand.linear_regression(
        hand.with_bias(features, bias),
        y,
        torch.zeros(2, p, dtype=torch.float64),
        torch.eye(p, dtype=torch.float64) / 0.3,
    )
    torch.testing.assert_close(heads[0].weight.detach(), expected[:, :D])
    if bias:
        torch.testing.assert_close(heads[0].bias.detach(), expected[:, D])
    assert "epoch 1" in agg.regression_fit_source


def test_refit_mode_leaves_heads_to_fit_regression_heads():
    heads = _heads(regression_bias=True)
    agg = BayesAgg.paper(GROUPS, gamma=0.3, regression_fit="refit", regression_bias=True)
    h, targets = _batch(9)
    h2, targets2 = _batch(9, seed=5)

    def fit(x, y):
        mean, _ = hand.linear_regression(
            hand.with_bias(x),
            y,
            torch.zeros(2, D + 1, dtype=torch.float64),
            torch.eye(D + 1, dtype=torch.float64) / 0.3,
        )
        return mean

    agg.backward(h.clone().requires_grad_(True), heads, targets)
    agg.end_epoch()  # no refit since the last end_epoch: the epoch's fit, never stale heads
    torch.testing.assert_close(heads[0].weight.detach(), fit(h, targets[0])[:, :D])
    assert "epoch 0" in agg.regression_fit_source
    agg.backward(h.clone().requires_grad_(True), heads, targets)
    halves = [(h2[:4], [targets2[0][:4], None, None]), (h2[4:], [targets2[0][4:], None, None])]
    fitted = agg.fit_regression_heads(heads, halves)
    expected = fit(h2, targets2[0])
    torch.testing.assert_close(fitted["reg"].mean, expected)
    torch.testing.assert_close(heads[0].weight.detach(), expected[:, :D])
    torch.testing.assert_close(heads[0].bias.detach(), expected[:, D])
    agg.end_epoch()  # a refit since the last end_epoch: the heads keep it
    torch.testing.assert_close(heads[0].weight.detach(), expected[:, :D])
    assert agg.regression_fit_source.startswith("refit on 9 examples")


def test_second_epoch_uses_the_full_data_posterior_as_prior():
    heads = _heads()
    agg = BayesAgg.paper([GROUPS[0]], gamma=0.4, s_regression=1.0)
    batches = [_batch(6, seed) for seed in range(2)]
    for h, t in batches:
        agg.backward(h.clone().requires_grad_(True), heads[:1], t[:1])
    agg.end_epoch()
    h, t = _batch(5, 9)
    h.requires_grad_(True)
    agg.backward(h, heads[:1], t[:1])
    features = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1][0] for b in batches])
    # By hand: the epoch's closed-form fit is the prior of the next batch's posterior.
    eye = torch.eye(D, dtype=torch.float64)
    full_mean, full_precision = hand.linear_regression(
        features, y, torch.zeros(2, D, dtype=torch.float64), eye / 0.4
    )
    mean, precision = hand.linear_regression(h.detach(), t[0], full_mean, full_precision)
    expected = hand.regression_gradient(h.detach(), t[0], mean, torch.linalg.inv(precision), 1.0)
    torch.testing.assert_close(h.grad, expected / 5)


def test_batch_of_one_works():
    heads = _heads()
    h, targets = _batch(1)
    h.requires_grad_(True)
    losses = BayesAgg.paper(GROUPS, moments="monte_carlo", num_samples=32).backward(
        h, heads, targets
    )
    assert h.grad.shape == (1, D) and torch.isfinite(h.grad).all()
    assert losses.shape == (6,)


def test_float32_features_give_float32_gradients():
    heads = _heads(torch.float32)
    h, targets = _batch(8, dtype=torch.float32)
    h.requires_grad_(True)
    BayesAgg.paper(GROUPS).backward(h, heads, targets)
    assert h.grad.dtype == torch.float32 and torch.isfinite(h.grad).all()


def _train_some(agg, encoder, heads, optimizer, batches):
    for x, targets in batches:
        optimizer.zero_grad()
        agg.backward(encoder(x), heads, targets)
        optimizer.step()


def test_state_dict_round_trip_resumes_identically():
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Linear(3, D), nn.Tanh()).double()
    heads = _heads(regression_bias=True)
    params = [*encoder.parameters(), *heads.parameters()]
    optimizer = torch.optim.Adam(params, lr=1e-2)
    g = torch.Generator().manual_seed(5)
    batches = [
        (torch.randn(6, 3, generator=g, dtype=torch.float64), _batch(6, seed)[1])
        for seed in range(4)
    ]
    options = dict(warmup_epochs=1, moments="monte_carlo", num_samples=16, s_classification=0.5)
    agg = BayesAgg.paper(GROUPS, generator=torch.Generator().manual_seed(1), **options)
    _train_some(agg, encoder, heads, optimizer, batches)
    agg.end_epoch()
    _train_some(agg, encoder, heads, optimizer, batches[:2])  # mid-epoch checkpoint

    buffer = io.BytesIO()
    torch.save(
        {
            "agg": agg.state_dict(),
            "encoder": encoder.state_dict(),
            "heads": heads.state_dict(),
            "optimizer": optimizer.state_dict(),
        },
        buffer,
    )
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=False)

    # Run A continues; run B is rebuilt from the checkpoint and continues the same way.
    def finish(agg, encoder, heads, optimizer):
        _train_some(agg, encoder, heads, optimizer, batches[2:])
        agg.end_epoch()
        _train_some(agg, encoder, heads, optimizer, batches)
        return [p.detach().clone() for p in [*encoder.parameters(), *heads.parameters()]]

    result_a = finish(agg, encoder, heads, optimizer)
    encoder_b = nn.Sequential(nn.Linear(3, D), nn.Tanh()).double()
    heads_b = _heads(seed=123, regression_bias=True)
    optimizer_b = torch.optim.Adam([*encoder_b.parameters(), *heads_b.parameters()], lr=1e-2)
    encoder_b.load_state_dict(saved["encoder"])
    heads_b.load_state_dict(saved["heads"])
    optimizer_b.load_state_dict(saved["optimizer"])
    agg_b = BayesAgg.paper(GROUPS, generator=torch.Generator().manual_seed(999), **options)
    agg_b.load_state_dict(saved["agg"])
    assert (agg_b.epoch, agg_b.step) == (1, 6)
    result_b = finish(agg_b, encoder_b, heads_b, optimizer_b)
    for a, b in zip(result_a, result_b, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(agg.last_weights, agg_b.last_weights, rtol=0, atol=0)


def test_load_state_dict_rejects_another_configuration():
    state = BayesAgg.paper(GROUPS, gamma=0.1).state_dict()
    with pytest.raises(ValueError, match="gamma"):
        BayesAgg.paper(GROUPS, gamma=0.2).load_state_dict(state)
    with pytest.raises(ValueError, match="groups"):
        BayesAgg.paper(GROUPS[:2], gamma=0.1).load_state_dict(state)


def test_reset_forgets_everything():
    heads = _heads()
    agg = BayesAgg.paper(GROUPS)
    h, targets = _batch()
    agg.backward(h.requires_grad_(True), heads, targets)
    agg.end_epoch()
    agg.reset()
    assert (agg.epoch, agg.step, agg.last_weights) == (0, 0, None)
    assert agg.prior.posteriors == [None, None, None]


def test_repr_shows_the_configuration():
    text = repr(BayesAgg.paper(GROUPS, s_regression=0.75, warmup_epochs=3))
    assert "s_regression=0.75" in text and "warmup_epochs=3" in text and "Multiclass" in text


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("s_regression", 1.5),
        ("s_classification", -0.1),
        ("gamma", 0.0),
        ("noise_var", -1.0),
        ("warmup_epochs", -1),
        ("warmup_epochs", 1.5),
        ("moments", "laplace"),
        ("num_samples", 0),
        ("nodes", 0),
        ("eps", 0.0),
        ("regression_fit", "never"),
    ],
)
def test_bad_hyper_parameters_are_rejected(option, value):
    with pytest.raises(ValueError, match=option):
        BayesAgg.paper(GROUPS, **{option: value})
