"""Loss weightings, one step at a time, against the papers' formulas worked out by hand.

Each test builds a tiny two-layer model (shared ``W, b``; one linear head per task), takes the
per-task gradients ``g_k`` of the task losses separately with autograd, forms the expected
update from the paper's formula in the test itself, and compares it with what the method
accumulated into ``.grad``. Everything is float64 and seeded.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import torch
from torch import Tensor

from bayesagg.methods import Method, create
from bayesagg.methods.weighting._common import Adam
from bayesagg.methods.weighting.db_mtl import DBMTL
from bayesagg.methods.weighting.dwa import DynamicWeightAverage
from bayesagg.methods.weighting.famo import FAMO
from bayesagg.methods.weighting.gradnorm import GradNorm
from bayesagg.methods.weighting.igbv2 import IGBv2
from bayesagg.methods.weighting.ls import LinearScalarization
from bayesagg.methods.weighting.rlw import RandomLossWeighting
from bayesagg.methods.weighting.si import ScaleInvariant
from bayesagg.methods.weighting.stl import SingleTask
from bayesagg.methods.weighting.uw import UncertaintyWeighting

F64 = torch.float64


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    # The test machine is shared; tiny problems run fastest on one thread.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@dataclass
class Problem:
    X: Tensor
    Y: Tensor
    W: Tensor
    b: Tensor
    heads: list[Tensor]

    @property
    def shared(self) -> list[Tensor]:
        return [self.W, self.b]

    @property
    def params(self) -> list[Tensor]:
        return [*self.shared, *self.heads]

    def losses(self, scale: Tensor | None = None) -> Tensor:
        h = torch.tanh(self.X @ self.W.T + self.b)
        out = torch.stack([h @ v for v in self.heads], dim=1)
        L = ((out - self.Y) ** 2).mean(0)
        return L if scale is None else L * scale

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def grad_vector(self) -> Tensor:
        return torch.cat(
            [(torch.zeros_like(p) if p.grad is None else p.grad).reshape(-1) for p in self.params]
        )

    def shared_grad_vector(self) -> Tensor:
        return self.grad_vector()[: self.W.numel() + self.b.numel()]

    def jacobian(self, losses: Tensor) -> Tensor:
        """Per-task gradients [K, P] over all parameters, each task on its own."""
        rows = []
        for k in range(losses.shape[0]):
            gs = torch.autograd.grad(losses[k], self.params, retain_graph=True, allow_unused=True)
            rows.append(
                torch.cat(
                    [
                        (torch.zeros_like(p) if g is None else g).reshape(-1)
                        for p, g in zip(self.params, gs, strict=True)
                    ]
                )
            )
        return torch.stack(rows)

    def step(self, lr: float = 0.1) -> None:
        with torch.no_grad():
            for p in self.params:
                if p.grad is not None:
                    p -= lr * p.grad


def problem(seed: int = 0, K: int = 2, B: int = 6) -> Problem:
    g = torch.Generator().manual_seed(seed)

    def randn(*shape: int, grad: bool = False) -> Tensor:
        return torch.randn(*shape, generator=g, dtype=F64).requires_grad_(grad)

    return Problem(
        X=randn(B, 3),
        Y=randn(B, K),
        W=randn(4, 3, grad=True),
        b=randn(4, grad=True),
        heads=[randn(4, grad=True) for _ in range(K)],
    )


def run(method: Method, p: Problem, losses: Tensor) -> Tensor:
    p.zero_grad()
    method.backward(losses, shared_parameters=p.shared, task_parameters=p.heads)
    return p.grad_vector()


# --------------------------------------------------------------------------- LS, STL, SI, RLW
def test_ls_is_sum_of_task_gradients_and_accumulates() -> None:
    p = problem()
    L = p.losses()
    J = p.jacobian(L)
    got = run(LinearScalarization(2), p, L)
    torch.testing.assert_close(got, J.sum(0), rtol=1e-12, atol=1e-14)
    # a second backward adds to .grad, like Tensor.backward
    LinearScalarization(2).backward(p.losses(), shared_parameters=p.shared, task_parameters=p.heads)
    torch.testing.assert_close(p.grad_vector(), 2 * J.sum(0), rtol=1e-12, atol=1e-14)


def test_stl_uses_one_task_and_leaves_other_heads_alone() -> None:
    p = problem(K=3)
    L = p.losses()
    J = p.jacobian(L)
    m = SingleTask(3, task=1)
    got = run(m, p, L)
    torch.testing.assert_close(got, J[1], rtol=1e-12, atol=1e-14)
    for other in (p.heads[0], p.heads[2]):  # no gradient (None, or zeros through the stack)
        assert other.grad is None or not other.grad.any()
    assert m.last_weights.tolist() == [0.0, 1.0, 0.0]
    with pytest.raises(ValueError, match="task"):
        SingleTask(3, task=3)
    with pytest.raises(ValueError, match="task"):
        SingleTask(3, task=-1)


def test_si_gradient_is_sum_of_g_over_L_and_scale_invariant() -> None:
    p = problem()
    L = p.losses()
    J = p.jacobian(L)
    got = run(ScaleInvariant(2), p, L)
    expected = J[0] / L[0].item() + J[1] / L[1].item()
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-14)
    for c in (1e-10, 1e10):
        scaled = run(ScaleInvariant(2), p, p.losses(torch.tensor([c, 1 / c], dtype=F64)))
        torch.testing.assert_close(scaled, expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("bad", [0.0, -1.0])
def test_si_rejects_non_positive_loss_naming_the_task(bad: float) -> None:
    p = problem()
    L = p.losses() * torch.tensor([1.0, 0.0], dtype=F64) + torch.tensor([0.0, bad], dtype=F64)
    with pytest.raises(ValueError, match=r"task\(s\) \[1\]"):
        run(ScaleInvariant(2), p, L)


def test_rlw_weights_are_softmax_of_standard_normal_draws() -> None:
    p = problem(K=3)
    L = p.losses()
    J = p.jacobian(L)
    m = RandomLossWeighting(3, seed=7)
    z = torch.randn(3, generator=torch.Generator().manual_seed(7), dtype=F64)
    w = torch.exp(z) / torch.exp(z).sum()
    got = run(m, p, L)
    torch.testing.assert_close(m.last_weights, w, rtol=1e-12, atol=0)
    torch.testing.assert_close(got, w @ J, rtol=1e-12, atol=1e-14)
    # fresh weights every step
    run(m, p, p.losses())
    assert not torch.equal(m.last_weights, w)
    m_k = RandomLossWeighting(3, seed=7, sum_to_num_tasks=True)
    run(m_k, p, p.losses())
    torch.testing.assert_close(m_k.last_weights, 3 * w, rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match="seed"):
        RandomLossWeighting(3, seed=1.5)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- DWA
def test_dwa_uniform_for_two_epochs_then_softmax_of_loss_ratios() -> None:
    p = problem()
    m = DynamicWeightAverage(2)  # T = 2
    L = p.losses()
    J = p.jacobian(L)
    torch.testing.assert_close(run(m, p, L), J.sum(0), rtol=1e-12, atol=1e-14)
    m.end_epoch(torch.tensor([2.0, 1.0], dtype=F64))
    torch.testing.assert_close(run(m, p, p.losses()), J.sum(0), rtol=1e-12, atol=1e-14)
    m.end_epoch(torch.tensor([1.0, 1.0], dtype=F64))
    # r = (1/2, 1/1); w_k = 2 exp(r_k / 2) / (exp(1/4) + exp(1/2))
    e1, e2 = math.exp(0.25), math.exp(0.5)
    w = torch.tensor([2 * e1 / (e1 + e2), 2 * e2 / (e1 + e2)], dtype=F64)
    torch.testing.assert_close(run(m, p, p.losses()), w @ J, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(m.last_weights, w, rtol=1e-12, atol=0)
    # only the last two epochs count: (1, 1) -> (4, 1) gives r = (4, 1)
    m.end_epoch(torch.tensor([4.0, 1.0], dtype=F64))
    e1, e2 = math.exp(2.0), math.exp(0.5)
    w = torch.tensor([2 * e1 / (e1 + e2), 2 * e2 / (e1 + e2)], dtype=F64)
    torch.testing.assert_close(run(m, p, p.losses()), w @ J, rtol=1e-12, atol=1e-14)


def test_dwa_errors() -> None:
    m = DynamicWeightAverage(2)
    with pytest.raises(ValueError, match="end_epoch"):
        m.end_epoch(None)
    with pytest.raises(ValueError, match=r"> 0.*\[1\]"):
        m.end_epoch(torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match="shape"):
        m.end_epoch(torch.tensor([1.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="temperature"):
        DynamicWeightAverage(2, temperature=-1.0)


# --------------------------------------------------------------------------- UW
def test_uw_model_and_log_variance_gradients() -> None:
    p = problem()
    m = UncertaintyWeighting(2, init_log_variance=0.3, dtype=F64)
    assert m.parameters() == [m.log_variance]
    L = p.losses()
    J = p.jacobian(L)
    got = run(m, p, L)
    torch.testing.assert_close(got, math.exp(-0.3) * J.sum(0), rtol=1e-12, atol=1e-14)
    # d/ds_k [exp(-s_k) L_k + s_k] = 1 - exp(-s_k) L_k
    expected_s = 1 - math.exp(-0.3) * L.detach()
    torch.testing.assert_close(m.log_variance.grad, expected_s, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(m.last_weights, torch.full((2,), math.exp(-0.3), dtype=F64))
    # the caller's optimiser moves s; reset puts it back in place
    with torch.no_grad():
        m.log_variance -= 0.1 * m.log_variance.grad
    s_obj = m.log_variance
    m.reset()
    assert m.log_variance is s_obj and torch.equal(s_obj, torch.full((2,), 0.3, dtype=F64))


def test_uw_device_mismatch_and_bad_init() -> None:
    with pytest.raises(ValueError, match="init_log_variance"):
        UncertaintyWeighting(2, init_log_variance=float("inf"))
    if torch.cuda.is_available():  # pragma: no cover - CPU-only test machines
        m = UncertaintyWeighting(2, device="cuda")
        p = problem()
        with pytest.raises(ValueError, match="device"):
            run(m, p, p.losses())


# --------------------------------------------------------------------------- GradNorm
def last_layer_norms(p: Problem, L: Tensor) -> Tensor:
    """||grad_b L_k|| for the last shared tensor b, by autograd, one task at a time."""
    return torch.stack(
        [torch.autograd.grad(L[k], p.b, retain_graph=True)[0].norm() for k in range(L.shape[0])]
    )


def test_gradnorm_two_steps_by_hand_sgd() -> None:
    p = problem(K=3)
    lr, alpha = 0.05, 1.5
    m = GradNorm(3, alpha=alpha, lr=lr, optimizer="sgd")
    L0 = p.losses()
    J0 = p.jacobian(L0)
    n0 = last_layer_norms(p, L0)
    torch.testing.assert_close(run(m, p, L0), J0.sum(0), rtol=1e-12, atol=1e-14)  # w = 1
    # step 1: L~ = 1 so r = 1, target = mean G; grad_w = sign(G_k - mean G) n_k
    grad_w = torch.sign(n0 - n0.mean()) * n0
    w1 = 1 - lr * grad_w
    w1 = 3 * w1 / w1.sum()
    torch.testing.assert_close(m.weights, w1, rtol=1e-12, atol=1e-14)

    p.step(0.2)
    L1 = p.losses()
    J1 = p.jacobian(L1)
    n1 = last_layer_norms(p, L1)
    torch.testing.assert_close(run(m, p, L1), w1 @ J1, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(m.last_weights, w1, rtol=1e-12, atol=0)
    ratio = L1.detach() / L0.detach()
    r = ratio / ratio.mean()
    G = w1 * n1
    grad_w = torch.sign(G - G.mean() * r**alpha) * n1
    w2 = w1 - lr * grad_w
    w2 = 3 * w2 / w2.sum()
    torch.testing.assert_close(m.weights, w2, rtol=1e-12, atol=1e-14)


def test_gradnorm_adam_first_step_moves_each_weight_by_lr() -> None:
    p = problem(K=2)
    m = GradNorm(2, lr=0.025)  # Adam: first step is lr * g / (|g| + eps)
    L = p.losses()
    n = last_layer_norms(p, L)
    run(m, p, L)
    g = torch.sign(n - n.mean()) * n
    w = 1 - 0.025 * g / (g.abs() + 1e-8)
    torch.testing.assert_close(m.weights, 2 * w / w.sum(), rtol=1e-12, atol=1e-14)
    assert m.weights.sum().item() == pytest.approx(2.0, abs=1e-12)


def test_gradnorm_keeps_weights_positive_and_summing_to_k() -> None:
    p = problem(K=2)
    m = GradNorm(2, lr=5.0, optimizer="sgd", min_weight=1e-3)
    for _ in range(5):
        run(m, p, p.losses())
        assert (m.weights > 0).all()
        assert m.weights.sum().item() == pytest.approx(2.0, abs=1e-12)


def test_gradnorm_errors() -> None:
    p = problem()
    with pytest.raises(ValueError, match="alpha"):
        GradNorm(2, alpha=-1.0)
    with pytest.raises(ValueError, match="optimizer"):
        GradNorm(2, optimizer="rmsprop")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="last_shared_tensors"):
        GradNorm(2, last_shared_tensors=0)
    with pytest.raises(ValueError, match="needs the last 3"):
        run(GradNorm(2, last_shared_tensors=3), p, p.losses())
    with pytest.raises(ValueError, match=r"L_k\(0\) must be > 0"):
        run(GradNorm(2), p, p.losses(torch.tensor([0.0, 1.0], dtype=F64)))
    with pytest.raises(ValueError, match="graph"):
        run(GradNorm(2), p, p.losses().detach())


# --------------------------------------------------------------------------- FAMO
def test_famo_step_and_logit_update_by_hand() -> None:
    p = problem(K=3)
    lr, gamma = 0.025, 0.01
    m = FAMO(3, lr=lr, gamma=gamma)
    assert m.needs_after_step
    L = p.losses()
    J = p.jacobian(L)
    D = L.detach() + 1e-8
    z = torch.full((3,), 1 / 3, dtype=F64)  # xi = 0
    c = (z / D).sum()
    eff = z / (c * D)  # weights on the raw loss gradients, sum 1
    assert eff.sum().item() == pytest.approx(1.0, abs=1e-12)
    torch.testing.assert_close(run(m, p, L), eff @ J, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(m.last_weights, z)

    p.step(0.1)
    new = p.losses().detach()
    m.after_step(new)
    delta = torch.log(D) - torch.log(new + 1e-8)
    # J_softmax(xi)^T delta at xi = 0: (I/3 - 1/9) delta; weight decay adds gamma * xi = 0
    jac = torch.eye(3, dtype=F64) / 3 - torch.full((3, 3), 1 / 9, dtype=F64)
    g = jac @ delta
    xi = -lr * g / (g.abs() + 1e-8)  # first Adam step
    torch.testing.assert_close(m.logits, xi, rtol=1e-12, atol=1e-15)
    # the next backward uses z = softmax(xi)
    L2 = p.losses()
    J2 = p.jacobian(L2)
    z2 = torch.softmax(xi, 0)
    D2 = L2.detach() + 1e-8
    eff2 = z2 / ((z2 / D2).sum() * D2)
    torch.testing.assert_close(run(m, p, L2), eff2 @ J2, rtol=1e-12, atol=1e-14)


def test_famo_min_losses_and_errors() -> None:
    p = problem()
    L = p.losses()
    m = FAMO(2, min_losses=[0.5 * L[0].item(), 0.0])
    J = p.jacobian(L)
    D = L.detach() - torch.tensor([0.5 * L[0].item(), 0.0], dtype=F64) + 1e-8
    z = torch.tensor([0.5, 0.5], dtype=F64)
    eff = z / ((z / D).sum() * D)
    torch.testing.assert_close(run(m, p, L), eff @ J, rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError, match=r"tasks \[0\]"):
        run(FAMO(2, min_losses=[10 * L[0].item(), 0.0]), p, p.losses())
    with pytest.raises(RuntimeError, match="without a preceding backward"):
        FAMO(2).after_step(L.detach())
    with pytest.raises(ValueError, match="min_losses"):
        FAMO(2, min_losses=[0.0])
    with pytest.raises(ValueError, match="lr"):
        FAMO(2, lr=0.0)
    with pytest.raises(ValueError, match="gamma"):
        FAMO(2, gamma=-1.0)


def test_famo_max_norm_clips_this_steps_shared_gradient() -> None:
    p = problem()
    L = p.losses()
    J = p.jacobian(L)
    z = torch.tensor([0.5, 0.5], dtype=F64)
    D = L.detach() + 1e-8
    full = (z / ((z / D).sum() * D)) @ J
    n_shared = p.W.numel() + p.b.numel()
    norm = full[:n_shared].norm()
    max_norm = 0.5 * norm.item()
    got = run(FAMO(2, max_norm=max_norm), p, L)
    torch.testing.assert_close(got[:n_shared], full[:n_shared] * max_norm / (norm + 1e-6))
    torch.testing.assert_close(got[n_shared:], full[n_shared:])  # heads are not clipped


def test_own_adam_matches_torch_adam_with_weight_decay() -> None:
    g = torch.Generator().manual_seed(3)
    x0 = torch.randn(5, generator=g, dtype=F64)
    ours = Adam(0.025, weight_decay=0.01)
    ref = torch.nn.Parameter(x0.clone())
    opt = torch.optim.Adam([ref], lr=0.025, weight_decay=0.01)
    x = x0.clone()
    for _ in range(20):
        grad = torch.randn(5, generator=g, dtype=F64) * 10 ** torch.randint(
            -6, 6, (1,), generator=g
        )
        x = ours.step(x, grad)
        ref.grad = grad.clone()
        opt.step()
    torch.testing.assert_close(x, ref.detach(), rtol=1e-12, atol=1e-14)


# --------------------------------------------------------------------------- DB-MTL
def test_db_mtl_two_steps_by_hand() -> None:
    p = problem(K=3)
    beta = 0.9
    m = DBMTL(3)
    n_shared = p.W.numel() + p.b.numel()
    L = p.losses()
    J = p.jacobian(L)
    G = J[:, :n_shared] / (L.detach() + 1e-8)[:, None]  # grads of log(L_k + eps), shared part
    heads_grad = (J[:, n_shared:] / (L.detach() + 1e-8)[:, None]).sum(0)
    buf = (1 - beta) * G  # EMA from zero, beta_t = beta / 1^0
    norms = buf.norm(dim=1)
    a = norms.max() / (norms + 1e-8)
    got = run(m, p, L)
    torch.testing.assert_close(got[:n_shared], a @ buf, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(got[n_shared:], heads_grad, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(m.last_weights, a)
    # every balanced task gradient has the largest norm
    torch.testing.assert_close(
        (a[:, None] * buf).norm(dim=1), norms.max().expand(3), rtol=1e-6, atol=0
    )

    p.step(0.1)
    L2 = p.losses()
    J2 = p.jacobian(L2)
    G2 = J2[:, :n_shared] / (L2.detach() + 1e-8)[:, None]
    buf2 = beta * buf + (1 - beta) * G2
    n2 = buf2.norm(dim=1)
    a2 = n2.max() / (n2 + 1e-8)
    got2 = run(m, p, L2)
    torch.testing.assert_close(got2[:n_shared], a2 @ buf2, rtol=1e-12, atol=1e-14)


def test_db_mtl_beta_sigma_decays_the_ema_rate() -> None:
    p = problem()
    m = DBMTL(2, beta=0.8, beta_sigma=0.5)
    n_shared = p.W.numel() + p.b.numel()
    L = p.losses()
    G1 = p.jacobian(L)[:, :n_shared] / (L.detach() + 1e-8)[:, None]
    run(m, p, L)
    L2 = p.losses()
    G2 = p.jacobian(L2)[:, :n_shared] / (L2.detach() + 1e-8)[:, None]
    run(m, p, L2)
    b1 = 0.2 * G1  # t = 1: beta_1 = 0.8
    bt = 0.8 / math.sqrt(2)  # t = 2
    torch.testing.assert_close(m.buffer, bt * b1 + (1 - bt) * G2, rtol=1e-12, atol=1e-14)


def test_db_mtl_errors() -> None:
    p = problem()
    with pytest.raises(ValueError, match="beta"):
        DBMTL(2, beta=1.5)
    with pytest.raises(ValueError, match="beta_sigma"):
        DBMTL(2, beta_sigma=-1.0)
    with pytest.raises(ValueError, match=r"tasks \[1\]"):
        run(DBMTL(2), p, p.losses() - torch.tensor([0.0, 100.0], dtype=F64))
    m = DBMTL(2)
    run(m, p, p.losses())
    with pytest.raises(ValueError, match="changed size"):
        m.backward(p.losses(), shared_parameters=[p.W], task_parameters=p.heads)


# --------------------------------------------------------------------------- IGBv2
def igb(**kw: object) -> IGBv2:
    config: dict[str, object] = {"seed": 0, "hidden": (16, 16), "batch_size": 8}
    config.update(kw)
    return IGBv2(2, **config)  # type: ignore[arg-type]


def test_igbv2_random_phase_trains_on_weighted_log_losses() -> None:
    p = problem()
    m = igb()
    L = p.losses()
    J = p.jacobian(L)
    got = run(m, p, L)
    w = m.last_weights
    assert w.sum().item() == pytest.approx(2.0, abs=1e-6) and (w > 0).all()
    torch.testing.assert_close(got, (w / L.detach()) @ J, rtol=1e-12, atol=1e-14)
    # the RLW phase draws K softmax(z), z ~ N(0, I), from the method's own seeded stream
    again = igb()
    run(again, p, p.losses())
    torch.testing.assert_close(again.last_weights, w, rtol=0, atol=0)


def test_igbv2_stores_transitions_with_min_normalised_decrease_reward() -> None:
    p = problem()
    m = igb(base_epoch=0, random_epochs=100, update_after_epochs=100)
    run(m, p, p.losses())
    assert m.buffer_fill == 0  # no L^base yet
    base = torch.tensor([2.0, 0.5], dtype=F64)
    m.end_epoch(base)
    L1 = torch.tensor([1.0, 0.30], dtype=F64, requires_grad=True)
    L2 = torch.tensor([0.8, 0.28], dtype=F64, requires_grad=True)
    m.backward(L1, shared_parameters=[L1])
    w1 = m.last_weights.clone()
    m.backward(L2, shared_parameters=[L2])
    assert m.buffer_fill == 2  # (last step of epoch 0 -> L1) and (L1 -> L2)
    t = m.transition(1)
    torch.testing.assert_close(t["state"], L1.detach().float())
    torch.testing.assert_close(t["action"], w1.float())
    torch.testing.assert_close(t["next_state"], L2.detach().float())
    # decreases / base = (0.2 / 2, 0.02 / 0.5) = (0.1, 0.04): the reward is the minimum
    assert t["reward"].item() == pytest.approx(0.04, rel=1e-5)
    # the weighted log-loss gradient w.r.t. the losses themselves is w_k / L_k
    torch.testing.assert_close(L2.grad, m.last_weights / L2.detach(), rtol=1e-12, atol=0)


def test_igbv2_schedule_policy_phase_and_sac_updates() -> None:
    p = problem()
    m = igb(random_epochs=1, base_epoch=0, update_after_epochs=1, update_every=4)
    for _ in range(3):
        run(m, p, p.losses())
        p.step(0.05)
    m.end_epoch(p.losses().detach())
    assert m.sac_updates == 0 and m.epoch == 1
    actor_before = [q.detach().clone() for q in m.actor.parameters()]
    run(m, p, p.losses())  # step 3: not a multiple of update_every
    assert m.sac_updates == 0
    run(m, p, p.losses())  # step 4: update_every * k / 2 updates, k = 1 + fill / size
    k = 1 + 2 / 10_000
    assert m.sac_updates == int(4 * k / 2)
    assert any(
        not torch.equal(a, q) for a, q in zip(actor_before, m.actor.parameters(), strict=True)
    )
    w = m.last_weights
    assert torch.isfinite(w).all() and (w > 0).all()
    assert w.sum().item() == pytest.approx(2.0, abs=1e-5)


def test_igbv2_errors() -> None:
    p = problem()
    with pytest.raises(ValueError, match=r"task\(s\) \[0\]"):
        run(igb(), p, p.losses(torch.tensor([0.0, 1.0], dtype=F64)))
    m = igb(base_epoch=0)
    with pytest.raises(ValueError, match="needs the mean task losses"):
        m.end_epoch(None)
    for bad in (
        {"update_every": 0},
        {"tau": 2.0},
        {"discount": 1.0},
        {"hidden": ()},
        {"log_prob": "x"},
    ):
        with pytest.raises(ValueError, match="igbv2"):
            igb(**bad)


@pytest.mark.parametrize("name", ["igbv2", "famo", "gradnorm", "db-mtl", "dwa", "uw", "rlw", "si"])
def test_repr_shows_configuration(name: str) -> None:
    text = repr(create(name, num_tasks=2))
    assert "num_tasks=2" in text


def test_gradnorm_weight_gradient_matches_autograd_through_the_gradient_norms() -> None:
    # Brute force: G_k = ||grad_W (w_k L_k)|| with create_graph, L_grad differentiated in w.
    p = problem(K=3)
    m = GradNorm(3, optimizer="sgd", lr=1.0, alpha=0.7)
    assert m.parameters() == []  # GradNorm updates its weights internally
    run(m, p, p.losses())  # sets L(0)
    p.step(0.3)
    w_before = m.weights.clone()
    L = p.losses()
    w = w_before.clone().requires_grad_(True)
    G = torch.stack(
        [torch.autograd.grad(w[k] * L[k], p.b, create_graph=True)[0].norm() for k in range(3)]
    )
    ratio = L.detach() / m.initial_losses
    target = (G.mean() * (ratio / ratio.mean()) ** 0.7).detach()
    (grad_w,) = torch.autograd.grad((G - target).abs().sum(), w)
    run(m, p, p.losses())
    expected = w_before - grad_w
    expected = 3 * expected.clamp_min(1e-3) / expected.clamp_min(1e-3).sum()
    torch.testing.assert_close(m.weights, expected, rtol=1e-12, atol=1e-14)


def test_igbv2_policy_log_density_and_target_update() -> None:
    m = igb(log_prob="gaussian")
    state = torch.tensor([[0.7, 1.3]])
    rng = m._generator.get_state()
    action, logp = m._policy(state)
    m._generator.set_state(rng)
    noise = torch.randn(1, 2, generator=m._generator)
    mu, log_std = m.actor(state)
    u = mu + log_std.exp() * noise
    normal = torch.distributions.Normal(mu, log_std.exp())
    torch.testing.assert_close(logp, normal.log_prob(u).sum(1, keepdim=True))
    torch.testing.assert_close(action, 2 * torch.softmax(u, dim=1))
    # the official variant subtracts sum log(1 - tanh(u)^2), written stably
    official = igb()
    official.actor.load_state_dict(m.actor.state_dict())
    official._generator.set_state(rng)
    _, logp_official = official._policy(state)
    u64 = u.double()
    correction = torch.log(1 - torch.tanh(u64) ** 2).sum(1, keepdim=True)
    torch.testing.assert_close(
        logp_official.double(), logp.double() - correction, rtol=1e-5, atol=1e-5
    )


def test_igbv2_sac_update_polyak_targets_and_fits_the_critic() -> None:
    m = igb(tau=0.005)
    g = torch.Generator().manual_seed(1)
    for _ in range(32):
        s = torch.rand(2, generator=g) + 0.5
        a = 2 * torch.softmax(torch.randn(2, generator=g), 0)
        m._store(s, a, float(s.sum()), s)
    old_target = [t.detach().clone() for t in m.critic_target.parameters()]
    m.sac_update(8)
    for old, new_c, new_t in zip(
        old_target, m.critic.parameters(), m.critic_target.parameters(), strict=True
    ):
        torch.testing.assert_close(new_t, 0.995 * old + 0.005 * new_c.detach())

    def td_error() -> float:
        s, a, r, s2 = (m._buffer[k][:32] for k in ("state", "action", "reward", "next_state"))
        with torch.no_grad():
            a2, logp2 = m._policy(s2)
            y = r + m.discount * (torch.min(*m.critic_target(s2, a2)) - m.temperature * logp2)
            q1, q2 = m.critic(s, a)
        return float(((q1 - y) ** 2).mean() + ((q2 - y) ** 2).mean())

    before = td_error()
    for _ in range(200):
        m.sac_update(32)
    assert td_error() < before
    assert m.sac_updates == 201
