"""STCH (smooth Tchebycheff, Lin et al. 2024): schedule, nadir point and gradient by hand."""

from __future__ import annotations

import pytest
import torch

from bayesagg.methods import create

K = 3


def problem(seed: int):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(4, generator=gen, dtype=torch.float64, requires_grad=True)
    x = torch.randn(K, 4, generator=gen, dtype=torch.float64)
    losses = (x @ w).pow(2) + torch.tensor([0.5, 2.0, 7.0], dtype=torch.float64)
    return w, losses


def grad_of(method, seed: int) -> torch.Tensor:
    w, losses = problem(seed)
    method.backward(losses, shared_parameters=[w])
    return w.grad


def by_hand(seed: int, weights_on_log: torch.Tensor) -> torch.Tensor:
    """sum_i a_i grad L_i / L_i, with the per-task gradients taken one by one."""
    w, losses = problem(seed)
    rows = [torch.autograd.grad(loss, [w], retain_graph=True)[0] for loss in losses]
    return sum(
        a * g / loss.detach() for a, g, loss in zip(weights_on_log, rows, losses, strict=True)
    )


def test_schedule_nadir_and_gradient() -> None:
    method = create("stch", num_tasks=K, mu=0.7, warmup_epochs=2)
    seeds = iter(range(100))
    # epochs 0, 1: the sum of log losses
    for _ in range(2):
        s = next(seeds)
        torch.testing.assert_close(grad_of(method, s), by_hand(s, torch.ones(K)))
        method.end_epoch()
    # epoch 2: still the log sum, averaging the batch losses into the nadir point
    nadir_steps = []
    for _ in range(3):
        s = next(seeds)
        nadir_steps.append(problem(s)[1].detach())
        torch.testing.assert_close(grad_of(method, s), by_hand(s, torch.ones(K)))
    method.end_epoch()
    nadir = torch.stack(nadir_steps).mean(0)
    torch.testing.assert_close(method.nadir, nadir)
    # later: K softmax(log(L / n) / mu) on the log losses
    for _ in range(2):
        s = next(seeds)
        losses = problem(s)[1].detach()
        a = K * torch.softmax(torch.log(losses / nadir) / 0.7, 0)
        torch.testing.assert_close(grad_of(method, s), by_hand(s, a))
        torch.testing.assert_close(method.last_weights, a)


def test_mu_limits() -> None:
    """mu -> 0: all weight on the worst normalised loss (Tchebycheff); mu -> inf: uniform."""
    for mu, check in ((1e-4, "max"), (1e4, "uniform")):
        method = create("stch", num_tasks=K, mu=mu, warmup_epochs=0)
        grad_of(method, 0)
        method.end_epoch()
        grad_of(method, 1)
        ratio = problem(1)[1].detach() / method.nadir
        if check == "max":
            expected = torch.zeros(K, dtype=torch.float64)
            expected[ratio.argmax()] = K
        else:
            expected = torch.ones(K, dtype=torch.float64)
        torch.testing.assert_close(method.last_weights, expected, atol=1e-3, rtol=0)


def test_resume_reset_and_errors() -> None:
    a = create("stch", num_tasks=K, warmup_epochs=1)
    for epoch in range(2):
        grad_of(a, epoch)
        a.end_epoch()
    b = create("stch", num_tasks=K, warmup_epochs=1)
    b.load_state_dict(a.state_dict())
    torch.testing.assert_close(grad_of(a, 5), grad_of(b, 5))
    a.reset()
    assert a.epoch == 0 and a.nadir is None
    with pytest.raises(ValueError, match="losses > 0"):
        w, losses = problem(0)
        a.backward(losses - losses.detach(), shared_parameters=[w])
    with pytest.raises(ValueError, match="no training step"):
        create("stch", num_tasks=K, warmup_epochs=0).end_epoch()
    for bad in ({"mu": 0.0}, {"warmup_epochs": -1}):
        with pytest.raises(ValueError):
            create("stch", num_tasks=K, **bad)
