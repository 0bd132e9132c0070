"""Loss weightings over many steps: hard inputs, task order, resuming, resetting, training.

Every method runs through the same small driver (float64, seeded): losses -> ``backward`` ->
plain SGD step on the model (and on the method's own parameters) -> ``after_step`` where the
method needs it -> ``end_epoch`` with the epoch's mean losses.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import Tensor

from bayesagg.methods import Method, create

F64 = torch.float64
WEIGHTINGS = ["ls", "stl", "si", "rlw", "dwa", "uw", "gradnorm", "igbv2", "famo", "db-mtl"]
WEIGHTINGS += ["uw-so"]
STATEFUL = ["rlw", "dwa", "uw", "gradnorm", "igbv2", "famo", "db-mtl"]
DETERMINISTIC_SYMMETRIC = ["ls", "si", "dwa", "uw", "gradnorm", "famo", "db-mtl", "uw-so"]


def config(name: str) -> dict[str, object]:
    """Small, seeded configurations (IGBv2 reaches its SAC phase within a few epochs)."""
    return {
        "stl": {"task": 0},
        "rlw": {"seed": 0},
        "uw": {"dtype": F64},
        "igbv2": {
            "seed": 0,
            "hidden": (16, 16),
            "batch_size": 8,
            "random_epochs": 1,
            "base_epoch": 0,
            "update_after_epochs": 1,
            "update_every": 3,
        },
    }.get(name, {})


def build(name: str, K: int = 2) -> Method:
    return create(name, num_tasks=K, **config(name))


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@dataclass
class Model:
    X: Tensor
    Y: Tensor
    W: Tensor
    b: Tensor
    heads: list[Tensor]
    activation: bool = True

    @property
    def shared(self) -> list[Tensor]:
        return [self.W, self.b]

    @property
    def params(self) -> list[Tensor]:
        return [*self.shared, *self.heads]

    def losses(self) -> Tensor:
        h = self.X @ self.W.T + self.b
        h = torch.tanh(h) if self.activation else h
        out = torch.stack([h @ v for v in self.heads], dim=1)
        return ((out - self.Y) ** 2).mean(0)

    def clone(self) -> Model:
        def c(t: Tensor) -> Tensor:
            return t.detach().clone().requires_grad_(t.requires_grad)

        return Model(
            self.X, self.Y, c(self.W), c(self.b), [c(v) for v in self.heads], self.activation
        )


def model(seed: int = 0, K: int = 2, B: int = 16, activation: bool = True) -> Model:
    g = torch.Generator().manual_seed(seed)

    def randn(*shape: int, grad: bool = False) -> Tensor:
        return torch.randn(*shape, generator=g, dtype=F64).requires_grad_(grad)

    X = randn(B, 3)
    Y = torch.stack([X @ randn(3) for _ in range(K)], dim=1) + 0.1 * randn(B, K)
    return Model(
        X, Y, randn(4, 3, grad=True), randn(4, grad=True), [randn(4, grad=True) for _ in range(K)],
        activation,
    )  # fmt: skip


LossFn = Callable[[Tensor], Tensor]


def drive(
    method: Method,
    m: Model,
    steps: int,
    *,
    start: int = 0,
    lr: float = 0.05,
    epoch_len: int = 2,
    transform: LossFn = lambda L: L,
) -> list[Tensor]:
    """Run ``steps`` training steps; return the gradient vector of every step."""
    out = []
    epoch_sum = None
    for i in range(start, start + steps):
        for p in [*m.params, *method.parameters()]:
            p.grad = None
        L = transform(m.losses())
        method.backward(L, shared_parameters=m.shared, task_parameters=m.heads)
        grads = torch.cat(
            [(torch.zeros_like(p) if p.grad is None else p.grad).reshape(-1) for p in m.params]
        )
        out.append(grads.clone())
        with torch.no_grad():
            for p in [*m.params, *method.parameters()]:
                if p.grad is not None:
                    p -= lr * p.grad
        if method.needs_after_step:
            with torch.no_grad():
                method.after_step(transform(m.losses()))
        epoch_sum = L.detach() if epoch_sum is None else epoch_sum + L.detach()
        if (i + 1) % epoch_len == 0:
            method.end_epoch(epoch_sum / epoch_len)
            epoch_sum = None
    return out


def all_finite(grads: list[Tensor], method: Method) -> None:
    for step, g in enumerate(grads):
        assert torch.isfinite(g).all(), f"{method!r}: non-finite gradient at step {step}"
    assert method.last_weights is not None and torch.isfinite(method.last_weights).all()


# --------------------------------------------------------------------------- hard inputs
@pytest.mark.parametrize("name", WEIGHTINGS)
@pytest.mark.parametrize("scales", [(1e-10, 1e10), (1e10, 1e-10), (1e-10, 1e-10)])
def test_finite_under_badly_scaled_losses(name: str, scales: tuple[float, float]) -> None:
    method = build(name)
    c = torch.tensor(scales, dtype=F64)
    grads = drive(method, model(), 8, lr=1e-12, transform=lambda L: L * c)
    all_finite(grads, method)


@pytest.mark.parametrize("name", [n for n in WEIGHTINGS if n not in ("si", "igbv2", "gradnorm")])
def test_finite_with_an_exactly_zero_loss(name: str) -> None:
    # task 1's loss is exactly 0 (and so is its gradient); log-loss methods refuse it (tested
    # in test_methods_weighting.py), GradNorm needs L_k(0) > 0 and is checked below.
    method = build(name)
    mask = torch.tensor([1.0, 0.0], dtype=F64)
    grads = drive(method, model(), 6, epoch_len=100, transform=lambda L: L * mask)
    all_finite(grads, method)


def test_gradnorm_finite_when_a_loss_reaches_zero_later() -> None:
    method = build("gradnorm")
    m = model()
    drive(method, m, 2)
    mask = torch.tensor([1.0, 0.0], dtype=F64)
    all_finite(drive(method, m, 4, start=2, transform=lambda L: L * mask), method)
    all_finite(drive(method, m, 2, start=6, transform=lambda L: L * 0), method)


@pytest.mark.parametrize("name", WEIGHTINGS)
def test_finite_with_rank_deficient_gradients(name: str) -> None:
    # two identical tasks (rank-1 Jacobian), then a task whose loss has zero gradient
    method = build(name, K=3)
    m = model(K=3)
    with torch.no_grad():
        m.heads[1].copy_(m.heads[0])
        m.Y[:, 1] = m.Y[:, 0]

    def constant_third(L: Tensor) -> Tensor:
        return torch.stack([L[0], L[1], L[2] * 0 + 1.0])

    all_finite(drive(method, m, 6, transform=constant_third), method)


# --------------------------------------------------------------------------- task order
@pytest.mark.parametrize("name", DETERMINISTIC_SYMMETRIC)
def test_task_order_does_not_change_the_update(name: str) -> None:
    perm = torch.tensor([2, 0, 1])
    a, b = build(name, K=3), build(name, K=3)
    m = model(K=3)
    ga = drive(a, m.clone(), 6)
    gb = drive(b, m.clone(), 6, transform=lambda L: L[perm])
    for step, (x, y) in enumerate(zip(ga, gb, strict=True)):
        torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-12, msg=f"{name} step {step}")
    if b.last_weights is not None and name not in ("ls", "si"):
        torch.testing.assert_close(b.last_weights, a.last_weights[perm], rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------- state
@pytest.mark.parametrize("name", STATEFUL)
def test_state_dict_round_trip_resumes_identically(name: str) -> None:
    a = build(name)
    m = model()
    drive(a, m, 5)  # odd count: resume mid-epoch
    buffer = io.BytesIO()
    torch.save(a.state_dict(), buffer)
    resumed_model = m.clone()
    continued = drive(a, m, 6, start=5)

    b = build(name)
    buffer.seek(0)
    b.load_state_dict(torch.load(buffer, weights_only=True))
    resumed = drive(b, resumed_model, 6, start=5)
    for step, (x, y) in enumerate(zip(continued, resumed, strict=True)):
        assert torch.equal(x, y), f"{name}: resumed run differs at step {step}"
    assert torch.equal(a.last_weights, b.last_weights)


@pytest.mark.parametrize("name", STATEFUL)
def test_reset_restores_fresh_behaviour(name: str) -> None:
    used = build(name)
    m = model()
    drive(used, m.clone(), 5)
    used.reset()
    fresh = build(name)
    g_used = drive(used, m.clone(), 4)
    g_fresh = drive(fresh, m.clone(), 4)
    for x, y in zip(g_used, g_fresh, strict=True):
        assert torch.equal(x, y), f"{name}: reset did not restore the initial state"


def test_state_for_other_task_count_is_refused() -> None:
    with pytest.raises(ValueError, match="tasks"):
        build("famo", K=3).load_state_dict(build("famo", K=2).state_dict())
    with pytest.raises(ValueError, match="task"):
        create("stl", num_tasks=2, task=1).load_state_dict(build("stl").state_dict())


# --------------------------------------------------------------------------- contract
@pytest.mark.parametrize("name", WEIGHTINGS)
def test_common_contract(name: str) -> None:
    method = build(name)
    m = model()
    with pytest.raises(ValueError, match="expected 2 task losses"):
        method.backward(m.losses()[:1], shared_parameters=m.shared)
    L = m.losses() * torch.tensor([1.0, float("nan")], dtype=F64)
    with pytest.raises(FloatingPointError, match=r"task\(s\) \[1\]"):
        method.backward(L, shared_parameters=m.shared)
    drive(method, m, 1)
    assert method.last_weights is not None and method.last_weights.shape == (2,)


# --------------------------------------------------------------------------- training
@pytest.mark.parametrize("name", WEIGHTINGS)
def test_fifty_steps_reduce_the_total_loss(name: str) -> None:
    torch.manual_seed(0)  # IGBv2/RLW have their own seeds; this fixes nothing else by accident
    method = build(name)
    m = model(seed=1, B=64, activation=False)
    params = [*m.params, *method.parameters()]
    opt = torch.optim.Adam(params, lr=0.02)
    before = m.losses().detach()
    for step in range(50):
        opt.zero_grad()
        L = m.losses()
        method.backward(L, shared_parameters=m.shared, task_parameters=m.heads)
        opt.step()
        if method.needs_after_step:
            with torch.no_grad():
                method.after_step(m.losses())
        if (step + 1) % 10 == 0:
            method.end_epoch(m.losses().detach())
    after = m.losses().detach()
    if name == "stl":  # one task trained: its own loss must fall
        assert after[0] < 0.7 * before[0]
    else:
        assert after.sum() < 0.7 * before.sum(), f"{name}: {before.tolist()} -> {after.tolist()}"


# --------------------------------------------------------------------------- docs
def test_docs_example_runs() -> None:
    text = (Path(__file__).resolve().parents[1] / "docs" / "methods.md").read_text()
    blocks = [
        b
        for b in re.findall(r"```python\n(.*?)```", text, re.S)
        if "# example: loss weightings" in b
    ]
    assert len(blocks) == 1
    namespace: dict[str, object] = {}
    exec(compile(blocks[0], "docs/methods.md", "exec"), namespace)
    assert namespace["method"].last_weights is not None  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("name", "bad"),
    [
        ("famo", {"lr": float("inf")}),
        ("famo", {"gamma": float("nan")}),
        ("gradnorm", {"lr": float("nan")}),
        ("gradnorm", {"alpha": float("inf")}),
        ("dwa", {"temperature": float("inf")}),
        ("db-mtl", {"beta_sigma": float("nan")}),
        ("db-mtl", {"beta": float("nan")}),
        ("igbv2", {"sac_lr": float("inf")}),
        ("uw", {"init_log_variance": float("nan")}),
    ],
)
def test_non_finite_hyper_parameters_are_refused(name: str, bad: dict[str, float]) -> None:
    key = next(iter(bad))
    with pytest.raises(ValueError, match=f"{name}: {key}"):
        create(name, num_tasks=2, **bad)
