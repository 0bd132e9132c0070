"""UW-SO (Kirchdorfer et al. 2024): weights against the formula worked by hand, the gradient."""

from __future__ import annotations

import math

import pytest
import torch

from bayesagg.methods import create

F64 = torch.float64


def hand_weights(losses: list[float], temperature: float) -> list[float]:
    """softmax((1 / L) / T), written out with math.exp (eps 1e-8 is below these digits)."""
    scores = [math.exp(1.0 / (value * temperature)) for value in losses]
    return [s / sum(scores) for s in scores]


def test_weights_match_the_formula_by_hand() -> None:
    # T = 1, L = (0.5, 1, 2): e^2, e^1, e^0.5 (7.38906, 2.71828, 1.64872) over their sum 11.75606
    method = create("uw-so", num_tasks=3)
    p = torch.ones(3, dtype=F64, requires_grad=True)
    method.backward(p * torch.tensor([0.5, 1.0, 2.0], dtype=F64), shared_parameters=[p])
    want = torch.tensor([0.6285317, 0.2312239, 0.1402444], dtype=F64)
    torch.testing.assert_close(method.last_weights, want, rtol=0, atol=1e-7)
    torch.testing.assert_close(
        method.last_weights, torch.tensor(hand_weights([0.5, 1, 2], 1.0), dtype=F64)
    )


@pytest.mark.parametrize("temperature", [0.5, 1.0, 4.0])
def test_gradient_is_the_weighted_sum_with_detached_weights(temperature: float) -> None:
    """Every parameter gets sum_k w_k grad L_k: the weights are constants of the step."""
    values = [0.3, 1.7, 0.9]
    method = create("uw-so", num_tasks=3, temperature=temperature)
    shared = torch.tensor([1.0, -2.0], dtype=F64, requires_grad=True)
    head = torch.tensor([0.5, 0.25, 2.0], dtype=F64, requires_grad=True)
    # L_k = values_k * (shared . shared) / 5 * head_k / head_k at the evaluation point:
    # dL_k/dshared = values_k * 2 shared / 5, dL_k/dhead_j = 0 for j != k
    scale = torch.tensor(values, dtype=F64) / 5
    losses = scale * (shared @ shared) * (head / head.detach())
    method.backward(losses, shared_parameters=[shared], task_parameters=[head])
    w = torch.tensor(hand_weights([v for v in losses.detach().tolist()], temperature), dtype=F64)
    torch.testing.assert_close(shared.grad, (w * scale).sum() * 2 * shared.detach())
    torch.testing.assert_close(head.grad, w * losses.detach() / head.detach())
    torch.testing.assert_close(method.last_weights.sum(), torch.tensor(1.0, dtype=F64))


def test_temperature_moves_between_equal_weights_and_the_smallest_loss() -> None:
    p = torch.ones(2, dtype=F64, requires_grad=True)
    hot, cold = (
        create("uw-so", num_tasks=2, temperature=1e6),
        create("uw-so", num_tasks=2, temperature=0.01),
    )
    hot.backward(p * torch.tensor([1.0, 3.0], dtype=F64), shared_parameters=[p])
    cold.backward(p * torch.tensor([1.0, 3.0], dtype=F64), shared_parameters=[p])
    torch.testing.assert_close(
        hot.last_weights, torch.full((2,), 0.5, dtype=F64), atol=1e-6, rtol=0
    )
    assert float(cold.last_weights[0]) > 1 - 1e-12


def test_bad_values_are_refused_with_the_reason() -> None:
    with pytest.raises(ValueError, match="temperature"):
        create("uw-so", num_tasks=2, temperature=0.0)
    p = torch.ones(2, dtype=F64, requires_grad=True)
    with pytest.raises(ValueError, match=r"task\(s\) \[1\]"):
        create("uw-so", num_tasks=2).backward(p * torch.tensor([1.0, -1.0]), shared_parameters=[p])


def test_repr_and_registry() -> None:
    method = create("uw-so", num_tasks=2, temperature=2.0)
    assert (
        repr(method) == "SoftOptimalUncertaintyWeighting(num_tasks=2, temperature=2.0, eps=1e-08)"
    )
    assert method.space == "loss" and method.state_dict().keys() == {"num_tasks", "last_weights"}
