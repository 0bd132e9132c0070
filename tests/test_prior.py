"""The epoch-level prior: streamed statistics equal a fit on stored features (float64)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import hand_reference as hand
from bayesagg import Binary, Multiclass, Regression
from bayesagg.prior import EpochPrior, RegressionStatistics

D = 5
GROUPS = (Regression("reg", outputs=3), Binary("bin", outputs=2), Multiclass("cls", classes=3))


def _batches(n=4, b=9, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        h = torch.randn(b, D, generator=g, dtype=dtype) + 0.5
        out.append(
            (
                h,
                [
                    torch.randn(b, 3, generator=g, dtype=dtype),
                    torch.randint(0, 2, (b, 2), generator=g).to(dtype),
                    torch.randint(0, 3, (b,), generator=g),
                ],
            )
        )
    return out


def _heads():
    torch.manual_seed(0)
    return [nn.Linear(D, 3), nn.Linear(D, 2).double(), nn.Linear(D, 3).double()]


@pytest.mark.parametrize("bias", [False, True])
def test_streamed_regression_prior_equals_fit_on_stored_features(bias):
    prior = EpochPrior(GROUPS, gamma=0.2, noise_var=0.5)
    batches = _batches()
    for h, targets in batches:
        prior.accumulate(h, targets, [bias, True, True])
    assert prior.num_examples == 36
    prior.refit(_heads())
    features = torch.cat([h for h, _ in batches])
    y = torch.cat([t[0] for _, t in batches])
    p = D + int(bias)
    # Closed form on the stored features (tests/hand_reference.py), prior N(0, 0.2 I).
    mean, precision = hand.linear_regression(
        hand.with_bias(features, bias),
        y,
        torch.zeros(3, p, dtype=torch.float64),
        torch.eye(p, dtype=torch.float64) / 0.2,
        noise_var=0.5,
    )
    fitted = prior.posteriors[0]
    torch.testing.assert_close(fitted.mean, mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fitted.precision, precision, rtol=1e-12, atol=1e-12)
    assert prior.num_examples == 0  # buffers cleared


def test_statistics_are_summed_in_float64_from_float32_features():
    batches = _batches(dtype=torch.float32)
    stats = RegressionStatistics(D, 3, device=torch.device("cpu"))
    for h, targets in batches:
        stats.update(h, targets[0])
    features = torch.cat([h for h, _ in batches]).double()
    assert stats.hth.dtype == torch.float64
    torch.testing.assert_close(stats.hth, features.T @ features)
    assert stats.count == 36


def test_classification_prior_is_the_newton_step_on_the_whole_epoch():
    prior = EpochPrior(GROUPS, gamma=0.3)
    batches = _batches()
    for h, targets in batches:
        prior.accumulate(h, targets, [False, True, True])
    heads = _heads()
    prior.refit(heads)
    features = torch.cat([h for h, _ in batches])
    # One Newton step written example by example (tests/hand_reference.py), prior N(0, 0.3 I).
    eye = torch.eye(D + 1, dtype=torch.float64) / 0.3
    y = torch.cat([t[1] for _, t in batches])
    w, b = heads[1].weight.detach(), heads[1].bias.detach()
    mean0 = torch.zeros(2, D + 1, dtype=torch.float64)
    mean, precision = hand.newton_binary(features, y, w, b, mean0, eye.expand(2, -1, -1))
    torch.testing.assert_close(prior.posteriors[1].mean, mean)
    torch.testing.assert_close(prior.posteriors[1].precision, precision)
    y = torch.cat([t[2] for _, t in batches])
    w, b = heads[2].weight.detach(), heads[2].bias.detach()
    mean0 = torch.zeros(3, D + 1, dtype=torch.float64)
    big = torch.eye(3 * (D + 1), dtype=torch.float64) / 0.3
    mean, precision = hand.newton_multiclass(features, y, w, b, mean0, big)
    torch.testing.assert_close(prior.posteriors[2].mean, mean)
    torch.testing.assert_close(prior.posteriors[2].precision, precision)


def test_before_the_first_refit_the_prior_is_isotropic_and_after_it_the_fit():
    prior = EpochPrior(GROUPS, gamma=0.25)
    mean, precision = prior.prior(1, D + 1, dtype=torch.float32, device=torch.device("cpu"))
    assert mean.shape == (2, D + 1) and not mean.any()
    torch.testing.assert_close(precision, torch.eye(D + 1).expand(2, -1, -1) * 4)
    mean, precision = prior.prior(2, D + 1, dtype=torch.float64, device=torch.device("cpu"))
    assert precision.shape == (3 * (D + 1), 3 * (D + 1))
    for h, targets in _batches():
        prior.accumulate(h, targets, [False, True, True])
    prior.refit(_heads())
    mean, precision = prior.prior(0, D, dtype=torch.float32, device=torch.device("cpu"))
    assert mean.dtype == torch.float32
    torch.testing.assert_close(mean, prior.posteriors[0].mean.float())
    with pytest.raises(ValueError, match="weights per output"):
        prior.prior(0, D + 1, dtype=torch.float32, device=torch.device("cpu"))


def test_refit_without_data_keeps_the_prior():
    prior = EpochPrior(GROUPS, gamma=0.25)
    prior.refit(None)
    assert prior.posteriors == [None, None, None] and prior.refits == 0


def test_state_dict_round_trip_mid_epoch():
    batches = _batches()
    prior = EpochPrior(GROUPS, gamma=0.2)
    for h, targets in batches[:2]:
        prior.accumulate(h, targets, [True, True, True])
    prior.refit(_heads())
    for h, targets in batches[2:3]:
        prior.accumulate(h, targets, [True, True, True])
    state = prior.state_dict()
    other = EpochPrior(GROUPS, gamma=0.2)
    other.load_state_dict(state)
    for p in (prior, other):
        p.accumulate(*batches[3], [True, True, True])
        p.refit(_heads())
    for a, b in zip(prior.posteriors, other.posteriors, strict=True):
        torch.testing.assert_close(a.mean, b.mean, rtol=0, atol=0)
        torch.testing.assert_close(a.precision, b.precision, rtol=0, atol=0)


def test_bad_prior_options():
    with pytest.raises(ValueError, match="gamma"):
        EpochPrior(GROUPS, gamma=0.0)
    with pytest.raises(ValueError, match="noise"):
        EpochPrior(GROUPS, gamma=1.0, noise_var=0.0)
    prior = EpochPrior(GROUPS, gamma=1.0)
    h, targets = _batches(1)[0]
    with pytest.raises(ValueError, match="bias flags"):
        prior.accumulate(h, targets, [True])
    prior.accumulate(h, targets, [True, True, True])
    with pytest.raises(ValueError, match="classification group 'bin' needs its head"):
        prior.refit(None)
