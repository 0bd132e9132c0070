"""Properties of the aggregation step, on the pure function and through BayesAgg (float64)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bayesagg import BayesAgg, Binary, Multiclass, Regression
from bayesagg.aggregation import aggregate, weights

D = 6


def _moments(b=5, k=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(b, k, D, generator=g, dtype=torch.float64)
    var = torch.rand(b, k, D, generator=g, dtype=torch.float64) * 10 ** torch.randint(
        -4, 4, (b, k, D), generator=g
    ).to(torch.float64)
    return mu, var


def test_s_zero_is_the_plain_mean_over_tasks():
    mu, var = _moments()
    torch.testing.assert_close(aggregate(mu, var, 0.0), mu.mean(dim=1))


def test_a_task_with_far_smaller_variance_dominates():
    mu, var = _moments()
    var[:, 2] = 1e-7  # far more certain than every other task, in every dimension
    var[:, [0, 1, 3]] = var[:, [0, 1, 3]].clamp_min(1e-2)
    torch.testing.assert_close(aggregate(mu, var, 1.0), mu[:, 2], rtol=0, atol=1e-3)
    alpha = weights(var, 1.0)
    assert bool((alpha[:, 2] > 0.99).all())


@pytest.mark.parametrize("s", [0.0, 0.3, 1.0])
def test_permuting_tasks_changes_nothing(s):
    mu, var = _moments(k=5)
    powers = torch.tensor([s, 0.1, 0.9, s, 0.5], dtype=torch.float64)
    order = torch.tensor([3, 0, 4, 2, 1])
    torch.testing.assert_close(
        aggregate(mu[:, order], var[:, order], powers[order]), aggregate(mu, var, powers)
    )


def test_weights_sum_to_one_over_tasks():
    _, var = _moments()
    torch.testing.assert_close(weights(var, 0.7).sum(dim=1), torch.ones(5, D, dtype=torch.float64))


# --- through BayesAgg -------------------------------------------------------------------------


def _problem(seed=0, b=7):
    torch.manual_seed(seed)
    heads = {
        "reg": nn.Linear(D, 2, bias=False).double(),
        "bin": nn.Linear(D, 3).double(),
        "cls": nn.Linear(D, 4).double(),
    }
    g = torch.Generator().manual_seed(seed + 1)
    h = torch.randn(b, D, generator=g, dtype=torch.float64)
    targets = {
        "reg": torch.randn(b, 2, generator=g, dtype=torch.float64),
        "bin": torch.randint(0, 2, (b, 3), generator=g).double(),
        "cls": torch.randint(0, 4, (b,), generator=g),
    }
    groups = {
        "reg": Regression("reg", 2),
        "bin": Binary("bin", 3),
        "cls": Multiclass("cls", 4),
    }
    return groups, heads, h, targets


def _grad(order, groups, heads, h, targets, **options):
    agg = BayesAgg.paper(
        [groups[n] for n in order], generator=torch.Generator().manual_seed(3), **options
    )
    x = h.clone().requires_grad_(True)
    agg.backward(x, [heads[n] for n in order], [targets[n] for n in order])
    return x.grad, agg.last_weights


def test_bayesagg_with_s_zero_sends_the_mean_of_the_task_gradient_means():
    groups, heads, h, targets = _problem()
    grad, last = _grad(
        ["reg", "bin", "cls"],
        groups,
        heads,
        h,
        targets,
        s_regression=0.0,
        s_classification=0.0,
        gamma=0.5,
    )
    # Reference without the stage functions: each group alone, also with s = 0, sends the
    # mean of its own tasks' gradient means; the six-task mean weights them 2 : 3 : 1.
    alone = {
        name: _grad(
            [name], groups, heads, h, targets, s_regression=0.0, s_classification=0.0, gamma=0.5
        )[0]
        for name in ("reg", "bin", "cls")
    }
    expected = (2 * alone["reg"] + 3 * alone["bin"] + alone["cls"]) / 6
    torch.testing.assert_close(grad, expected)
    torch.testing.assert_close(last, torch.full((6,), 1 / 6, dtype=torch.float64))


def test_bayesagg_does_not_depend_on_the_order_of_the_groups():
    groups, heads, h, targets = _problem(1)
    first, w_first = _grad(["reg", "bin", "cls"], groups, heads, h, targets, s_classification=0.4)
    second, w_second = _grad(["cls", "reg", "bin"], groups, heads, h, targets, s_classification=0.4)
    torch.testing.assert_close(first, second)
    # Task order of the weights follows the groups: cls, reg[0], reg[1], bin[0..2].
    torch.testing.assert_close(w_second, w_first[[5, 0, 1, 2, 3, 4]])


def test_bayesagg_does_not_depend_on_the_order_of_tasks_within_a_group():
    groups, heads, h, targets = _problem(2)
    first, w_first = _grad(["reg", "bin"], groups, heads, h, targets, s_classification=0.6)
    order = torch.tensor([2, 0, 1])
    permuted = nn.Linear(D, 3).double()
    with torch.no_grad():
        permuted.weight.copy_(heads["bin"].weight[order])
        permuted.bias.copy_(heads["bin"].bias[order])
    heads = dict(heads, bin=permuted)
    targets = dict(targets, bin=targets["bin"][:, order])
    second, w_second = _grad(["reg", "bin"], groups, heads, h, targets, s_classification=0.6)
    torch.testing.assert_close(first, second)
    torch.testing.assert_close(w_second[2:], w_first[2:][order])
