"""The backward contract of the gradient aggregators on a tiny model, and Nash-MTL's solver."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from bayesagg.methods import create, gramian_based, method_class, names, representation_forms
from bayesagg.methods._jacobian import jacobians

K, B, D = 3, 7, 5
# the Gramian weightings, from the registry: in parameter space, and those registered in
# representation space as their own classes (the derived -ub forms: test_methods_representation)
GRAMIAN = [n for n in names() if gramian_based(n) and n not in representation_forms()]
PARAMETER = [n for n in GRAMIAN if method_class(n).space == "parameters"]
REPRESENTATION = [n for n in GRAMIAN if method_class(n).space == "representation"]


def make(name: str, **kwargs):
    if name in ("pcgrad", "graddrop", "gradvac"):
        kwargs.setdefault("seed", 0)
    return create(name, num_tasks=K, **kwargs)


class Model(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, D))
        self.heads = nn.Linear(D, K)  # output t is task t's prediction

    def losses(self, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        gen = torch.Generator().manual_seed(seed)
        x = torch.randn(B, 4, generator=gen, dtype=torch.float64)
        y = torch.randn(B, K, generator=gen, dtype=torch.float64)
        h = self.encoder(x)
        return (self.heads(h) - y).pow(2).mean(dim=0), h


def model() -> Model:
    torch.manual_seed(0)
    return Model().double()


def shared(m: Model) -> list[torch.Tensor]:
    return list(m.encoder.parameters())


def tasks(m: Model) -> list[torch.Tensor]:
    return list(m.heads.parameters())


def loop_jacobian(losses: torch.Tensor, inputs: list[torch.Tensor]) -> torch.Tensor:
    rows = [torch.autograd.grad(loss, inputs, retain_graph=True) for loss in losses]
    return torch.stack([torch.cat([g.reshape(-1) for g in row]) for row in rows])


def flat_grad(params: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1) for p in params])


@pytest.mark.parametrize("name", PARAMETER)
def test_parameter_space_contract(name: str) -> None:
    """Shared .grad += aggregate(J); heads get the gradient of the plain sum of losses."""
    m = model()
    losses, _ = m.losses()
    jac = loop_jacobian(losses, shared(m))
    expected = make(name).aggregate(jac)  # a twin: same seed, same (fresh) state
    head_grad = torch.cat(
        [g.reshape(-1) for g in torch.autograd.grad(losses.sum(), tasks(m), retain_graph=True)]
    )
    for p in shared(m):
        p.grad = torch.ones_like(p)  # backward accumulates, like Tensor.backward
    make(name).backward(losses, shared_parameters=shared(m), task_parameters=tasks(m))
    torch.testing.assert_close(flat_grad(shared(m)), 1.0 + expected)
    torch.testing.assert_close(flat_grad(tasks(m)), head_grad)


@pytest.mark.parametrize("name", REPRESENTATION)
def test_representation_space_contract(name: str) -> None:
    """The direction is computed on dL/dh [K, B*D] and pushed through the encoder."""
    m = model()
    losses, h = m.losses()
    jac = loop_jacobian(losses, [h])
    assert jac.shape == (K, B * D)
    twin = make(name)
    direction = twin.aggregate(jac, losses.detach()) if name == "mgda-ub" else twin.aggregate(jac)
    expected = torch.autograd.grad(h, shared(m), direction.view_as(h), retain_graph=True)
    head_grad = torch.autograd.grad(losses.sum(), tasks(m), retain_graph=True)
    method = make(name)
    method.backward(losses, shared_parameters=shared(m), task_parameters=tasks(m), representation=h)
    torch.testing.assert_close(flat_grad(shared(m)), torch.cat([g.reshape(-1) for g in expected]))
    torch.testing.assert_close(flat_grad(tasks(m)), torch.cat([g.reshape(-1) for g in head_grad]))
    torch.testing.assert_close(method.last_weights, twin.last_weights)


def test_graddrop_follows_algorithm_1_on_the_representation() -> None:
    m = model()
    losses, h = m.losses()
    jac = loop_jacobian(losses, [h]).view(K, B, D)
    signed = (torch.sign(h.detach()) * jac).sum(dim=1)  # G_i, batch-summed
    purity = 0.5 * (1 + signed.sum(0) / signed.abs().sum(0))
    u = torch.rand(D, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    mask = ((purity > u) & (signed > 0)) | ((purity < u) & (signed < 0))
    new = (mask[:, None, :] * jac).sum(dim=0)
    expected = torch.autograd.grad(h, shared(m), new, retain_graph=True)
    make("graddrop").backward(
        losses, shared_parameters=shared(m), task_parameters=tasks(m), representation=h
    )
    torch.testing.assert_close(flat_grad(shared(m)), torch.cat([g.reshape(-1) for g in expected]))


def test_aligned_mtl_can_scale_task_gradients() -> None:
    m = model()
    losses, _ = m.losses()
    method = make("aligned-mtl", scale_task_gradients=True)
    per_task = loop_jacobian(losses, tasks(m))
    method.backward(losses, shared_parameters=shared(m), task_parameters=tasks(m))
    torch.testing.assert_close(flat_grad(tasks(m)), method.last_weights @ per_task)


def test_nash_mtl_reuses_weights_without_a_jacobian_between_updates() -> None:
    m = model()
    method = make("nash-mtl", update_weights_every=2, max_norm=0.05)
    losses, _ = m.losses(0)
    method.backward(losses, shared_parameters=shared(m), task_parameters=tasks(m))
    alpha = torch.as_tensor(method.alpha)
    m.zero_grad()
    losses, _ = m.losses(1)
    jac = loop_jacobian(losses, shared(m))
    direction = alpha @ jac
    expected = direction * min(1.0, 0.05 / float(direction.norm()))
    method.backward(losses, shared_parameters=shared(m), task_parameters=tasks(m))
    torch.testing.assert_close(flat_grad(shared(m)), expected)
    torch.testing.assert_close(torch.as_tensor(method.alpha), alpha)  # not re-solved
    assert method.step == 2


def conflicting_jacobian() -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    j = torch.randn(3, 10, generator=gen, dtype=torch.float64)
    j[1] = -0.7 * j[0] + 0.3 * j[1]
    j[2] *= 5.0
    return j


def test_nash_mtl_weights_move_from_their_start() -> None:
    j = conflicting_jacobian()
    method = make("nash-mtl", max_norm=0.0)
    d = method.aggregate(j)
    w = method.last_weights
    assert not torch.allclose(w, torch.ones(3, dtype=w.dtype), rtol=0.05)
    # not merely rescaled: the relative weights are far from equal as well
    assert (w / w.sum() - 1 / 3).abs().max() > 0.05
    assert (j @ d).min() > 0  # the bargaining solution improves every task
    assert method.solver_failures == 0


def test_nash_mtl_solver_failure_is_counted_and_logged(monkeypatch, caplog) -> None:
    cp = pytest.importorskip("cvxpy")

    def fail(self, *args, **kwargs):
        raise cp.SolverError("injected failure")

    monkeypatch.setattr(cp.Problem, "solve", fail)
    method = make("nash-mtl", solver="ccp")  # the official solver (cvxpy)
    with caplog.at_level(logging.WARNING):
        d = method.aggregate(conflicting_jacobian())
    assert method.solver_failures == 1
    assert "injected failure" in caplog.text and "1 failure(s)" in caplog.text
    assert torch.isfinite(d).all()
    assert method.state_dict()["solver_failures"] == 1


def test_nash_mtl_repeated_failures_are_all_counted_but_logged_sparsely(
    monkeypatch, caplog
) -> None:
    cp = pytest.importorskip("cvxpy")

    def fail(self, *args, **kwargs):
        raise cp.SolverError("injected failure")

    monkeypatch.setattr(cp.Problem, "solve", fail)
    method = make("nash-mtl", solver="ccp")
    with caplog.at_level(logging.DEBUG, logger="bayesagg.methods.gradient.nash_mtl"):
        for _ in range(12):
            method.aggregate(conflicting_jacobian())
    assert method.solver_failures == 12
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 2 and "1 failure(s)" in warned[0] and "10 failure(s)" in warned[1]
    assert sum(r.levelno == logging.DEBUG for r in caplog.records) == 10


def test_nash_mtl_solver_failure_can_raise(monkeypatch) -> None:
    cp = pytest.importorskip("cvxpy")
    from bayesagg.methods.gradient.nash_mtl import NashMTLSolverError

    monkeypatch.setattr(cp.Problem, "solve", lambda self, *a, **k: None)  # no solution
    with pytest.raises(NashMTLSolverError, match="no finite solution"):
        make("nash-mtl", solver="ccp", on_solver_failure="raise").aggregate(conflicting_jacobian())


def test_nash_mtl_zero_task_gradient_is_a_counted_failure(caplog) -> None:
    j = conflicting_jacobian()
    j[2] = 0.0
    method = make("nash-mtl")
    with caplog.at_level(logging.WARNING):
        method.aggregate(j)
    assert method.solver_failures == 1 and "zero gradient for task(s) [2]" in caplog.text


@pytest.mark.parametrize("name", ["nash-mtl", "gradvac", "pcgrad"])
def test_state_dict_round_trip(name: str) -> None:
    j = conflicting_jacobian()
    a = make(name)
    a.aggregate(j)
    b = make(name, **({"seed": 99} if name != "nash-mtl" else {}))
    b.load_state_dict(a.state_dict())
    torch.testing.assert_close(b.aggregate(j), a.aggregate(j))


# -- differentiation ---------------------------------------------------------------------------
def test_batched_and_looped_jacobians_agree() -> None:
    m = model()
    losses, h = m.losses()
    inputs = [*shared(m), h]
    batched = jacobians(losses, inputs, retain_graph=True, batched=True)
    looped = jacobians(losses, inputs, retain_graph=True, batched=False)
    for a, b in zip(batched, looped, strict=True):
        torch.testing.assert_close(a, b)


class ItemInBackward(torch.autograd.Function):
    """Identity whose backward reads a Python number, which vmap cannot batch."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * (1.0 + 0.0 * float(grad.sum().item()))


def test_unbatchable_graph_falls_back_to_k_passes(caplog) -> None:
    m = model()
    losses, _ = m.losses()
    jac = loop_jacobian(losses, shared(m))
    m2 = model()  # same values, fresh graph with the unbatchable op
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(B, 4, generator=gen, dtype=torch.float64)
    y = torch.randn(B, K, generator=gen, dtype=torch.float64)
    h2 = ItemInBackward.apply(m2.encoder(x))
    losses2 = (m2.heads(h2) - y).pow(2).mean(dim=0)
    method = make("imtl-g")
    with caplog.at_level(logging.WARNING):
        method.backward(losses2, shared_parameters=shared(m2), task_parameters=tasks(m2))
    assert method._jacobian_state["batched"] is False
    assert "backward passes" in caplog.text
    torch.testing.assert_close(flat_grad(shared(m2)), make("imtl-g").aggregate(jac))


# -- bad input ---------------------------------------------------------------------------------
def test_bad_inputs_are_named() -> None:
    m = model()
    losses, _ = m.losses()
    with pytest.raises(ValueError, match="representation=h"):
        make("mgda-ub").backward(losses, shared_parameters=shared(m))
    with pytest.raises(ValueError, match="expected 3 task losses"):
        make("mgda").backward(losses[:2], shared_parameters=shared(m))
    with pytest.raises(FloatingPointError, match=r"task\(s\) \[1\]"):
        make("mgda").backward(
            losses * torch.tensor([1.0, float("nan"), 1.0]), shared_parameters=shared(m)
        )
    with pytest.raises(ValueError, match="do not require grad"):
        make("mgda").backward(losses.detach(), shared_parameters=shared(m))
    frozen = torch.zeros(2, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"shared_parameters\[0\].*does not require grad"):
        make("mgda").backward(losses, shared_parameters=[frozen])
    with pytest.raises(ValueError, match="both in shared_parameters and task_parameters"):
        make("mgda").backward(losses, shared_parameters=shared(m), task_parameters=shared(m)[:1])
    with pytest.raises(ValueError, match="shared_parameters is empty"):
        make("mgda").backward(losses, shared_parameters=[])


def test_cagrad_solver_failure_is_counted_and_logged(monkeypatch, caplog) -> None:
    cp = pytest.importorskip("cvxpy")

    def fail(self, *args, **kwargs):
        raise cp.SolverError("injected failure")

    monkeypatch.setattr(cp.Problem, "solve", fail)
    j = conflicting_jacobian()
    method = make("cagrad", c=0.4, rescale=0)
    with caplog.at_level(logging.WARNING):
        d = method.aggregate(j)
    assert method.solver_failures == 1 and "injected failure" in caplog.text
    torch.testing.assert_close(d, 1.4 * j.sum(dim=0))  # documented fallback: (1 + c) K g_0


@pytest.mark.parametrize("name", PARAMETER + REPRESENTATION + ["graddrop"])
def test_training_steps_lower_the_losses(name: str) -> None:
    """Several optimiser steps (the later ones without a retained graph) reduce the loss sum."""
    m = model()
    optimizer = torch.optim.SGD(m.parameters(), lr=0.02)
    method = make(name)
    first = None
    for _ in range(8):
        optimizer.zero_grad()
        losses, h = m.losses()
        first = float(losses.detach().sum()) if first is None else first
        method.backward(
            losses, shared_parameters=shared(m), task_parameters=tasks(m), representation=h
        )
        assert all(torch.isfinite(p.grad).all() for p in m.parameters())
        optimizer.step()
    assert method._jacobian_state["batched"] is True
    assert float(m.losses()[0].detach().sum()) < first


def test_excess_mtl_weights_the_task_gradients_too() -> None:
    """Official ExcessMTL backpropagates sum_i w_i L_i: heads get the weighted gradients."""
    m = model()
    method = make("excess-mtl")
    for seed in range(2):  # the first step only sets the baseline (weights stay 1)
        for p in m.parameters():
            p.grad = None
        losses, _ = m.losses(seed)
        per_task = loop_jacobian(losses, tasks(m))
        shared_jac = loop_jacobian(losses, shared(m))
        method.backward(losses, shared_parameters=shared(m), task_parameters=tasks(m))
        torch.testing.assert_close(flat_grad(tasks(m)), method.last_weights @ per_task)
        torch.testing.assert_close(flat_grad(shared(m)), method.last_weights @ shared_jac)
    assert not torch.allclose(method.last_weights, torch.ones(K, dtype=torch.float64))
