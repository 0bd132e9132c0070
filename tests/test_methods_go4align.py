"""GO4Align (Shen et al. 2024): indicators, grouping and gradient, checked by hand."""

from __future__ import annotations

import itertools

import pytest
import torch

from bayesagg.methods import create

K = 5


def best_1d_partition(values: torch.Tensor, groups: int) -> torch.Tensor:
    """Exhaustive optimal k-means in 1-D: contiguous splits of the sorted values."""
    order = torch.argsort(values)
    v = values[order]
    best, best_w = None, None
    for cuts in itertools.combinations(range(1, len(v)), groups - 1):
        bounds = (0, *cuts, len(v))
        w = torch.empty_like(v)
        cost = 0.0
        for lo, hi in itertools.pairwise(bounds):
            centre = v[lo:hi].mean()
            w[lo:hi] = centre
            cost += float(((v[lo:hi] - centre) ** 2).sum())
        if best is None or cost < best:
            best, best_w = cost, w
    out = torch.empty_like(values)
    out[order] = best_w
    return out


def problem(seed: int):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(3, generator=gen, dtype=torch.float64, requires_grad=True)
    x = torch.randn(K, 3, generator=gen, dtype=torch.float64)
    offsets = torch.tensor([0.1, 0.2, 1.0, 3.0, 3.5], dtype=torch.float64)
    return w, (x @ w).pow(2) + offsets


@pytest.mark.parametrize("groups", [1, 2, 3])
def test_weights_and_gradient_by_hand(groups: int) -> None:
    eta = 0.3
    method = create("go4align", num_tasks=K, num_groups=groups, robust_step_size=eta)
    probs = torch.full((K,), 1.0 / K, dtype=torch.float64)
    for seed in range(3):
        w, losses = problem(seed)
        rows = [torch.autograd.grad(loss, [w], retain_graph=True)[0] for loss in losses]
        method.backward(losses, shared_parameters=[w])
        values = losses.detach()
        probs = probs * torch.exp(-eta * values)
        probs = probs / probs.sum()
        gamma = values.sum() / values * probs
        expected = gamma.mean().expand(K) if groups == 1 else best_1d_partition(gamma, groups)
        torch.testing.assert_close(method.last_weights, expected)
        torch.testing.assert_close(w.grad, sum(a * g for a, g in zip(expected, rows, strict=True)))


def test_state_and_errors() -> None:
    a = create("go4align", num_tasks=K)
    a.backward(problem(0)[1], shared_parameters=[problem(0)[0]])
    b = create("go4align", num_tasks=K)
    b.load_state_dict(a.state_dict())
    torch.testing.assert_close(a.probs, b.probs)
    a.reset()
    torch.testing.assert_close(a.probs, torch.full((K,), 0.2, dtype=torch.float64))
    w, losses = problem(1)
    with pytest.raises(ValueError, match="losses > 0"):
        a.backward(losses * 0, shared_parameters=[w])
    for bad in ({"num_groups": 0}, {"num_groups": K + 1}, {"robust_step_size": -1.0}):
        with pytest.raises(ValueError):
            create("go4align", num_tasks=K, **bad)
