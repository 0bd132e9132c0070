"""The representation-level ("-ub") variant of every gradient aggregator, on a tiny model.

The reference is computed here without the variant's code path: the per-example Jacobian of
the K mean losses w.r.t. h by K separate ``autograd.grad`` calls, the base method's
``aggregate`` on it (a twin built with the same seed and fresh state), and the result pushed
through the encoder with ``autograd.grad(h, encoder, direction)``.
"""

from __future__ import annotations

import pickle

import pytest
import torch
from torch import nn

from bayesagg.methods import Aggregator, create, describe, method_class, names, representation_forms
from bayesagg.methods.representation import representation_variant

K, B, D = 3, 7, 5
SEEDED = ("pcgrad", "gradvac", "graddrop")
UB = [n for n in names() if n.endswith("-ub")]


def base_name(name: str) -> str:
    return name[: -len("-ub")]


def make(name: str, **kwargs):
    if base_name(name) in SEEDED:
        kwargs.setdefault("seed", 0)
    return create(name, num_tasks=K, **kwargs)


class Model(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, D))
        self.heads = nn.Linear(D, K)

    def losses(self, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        gen = torch.Generator().manual_seed(seed)
        x = torch.randn(B, 4, generator=gen, dtype=torch.float64)
        y = torch.randn(B, K, generator=gen, dtype=torch.float64)
        y[:, 0] = -3.0 * y[:, 1]  # conflicting targets
        h = self.encoder(x)
        return (self.heads(h) - y).pow(2).mean(dim=0), h


def model() -> Model:
    torch.manual_seed(0)
    return Model().double()


def flat(grads) -> torch.Tensor:
    return torch.cat([g.reshape(-1) for g in grads])


def reference_step(twin, m: Model, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (encoder gradient, heads gradient) computed independently of the variant."""
    losses, h = m.losses(seed)
    rows = [torch.autograd.grad(loss, [h], retain_graph=True)[0].reshape(-1) for loss in losses]
    jac = torch.stack(rows)
    assert jac.shape == (K, B * D)
    if base_name(twin.name) == "mgda":
        direction = twin.aggregate(jac, losses.detach())
    else:
        direction = twin.aggregate(jac)
    enc = torch.autograd.grad(
        h, list(m.encoder.parameters()), direction.view_as(h), retain_graph=True
    )
    heads = torch.autograd.grad(losses.sum(), list(m.heads.parameters()))
    return flat(enc), flat(heads)


def variant_step(method, m: Model, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    for p in m.parameters():
        p.grad = None
    losses, h = m.losses(seed)
    method.backward(
        losses,
        shared_parameters=list(m.encoder.parameters()),
        task_parameters=list(m.heads.parameters()),
        representation=h,
    )
    return flat(p.grad for p in m.encoder.parameters()), flat(p.grad for p in m.heads.parameters())


def test_every_parameter_space_aggregator_has_a_representation_variant() -> None:
    for name in names():
        cls = method_class(name)
        if issubclass(cls, Aggregator) and cls.space == "parameters":
            if getattr(cls, "per_coordinate_state", False):  # ExcessMTL
                with pytest.raises(ValueError, match="per coordinate"):
                    representation_variant(cls, f"{name}-ub")
                continue
            assert f"{name}-ub" in names(), name
            assert method_class(f"{name}-ub").space == "representation"
    assert all(f"{base_name(n)}" in names() for n in UB)


@pytest.mark.parametrize("name", UB)
def test_variant_gradient_is_aggregate_of_representation_jacobian(name: str) -> None:
    """Three steps (stateful methods carry their state): encoder and heads gradients match."""
    m = model()
    method, twin = make(name), make(name)
    assert method.space == "representation" and method.name == name
    assert isinstance(method, method_class(base_name(name)))
    for seed in range(3):
        enc_ref, heads_ref = reference_step(twin, m, seed)
        enc, heads = variant_step(method, m, seed)
        torch.testing.assert_close(enc, enc_ref, rtol=1e-7, atol=1e-10)
        torch.testing.assert_close(heads, heads_ref)
        assert enc.norm() > 0
    if twin.last_weights is not None:
        torch.testing.assert_close(method.last_weights, twin.last_weights)


@pytest.mark.parametrize("name", list(representation_forms()))
def test_variant_differs_from_parameter_space_method(name: str) -> None:
    """A mutant that left space="parameters" would give the parameter-space update."""
    m = model()
    enc_rep, _ = variant_step(make(name), m, 0)
    enc_par, _ = variant_step(make(base_name(name)), m, 0)
    assert not torch.allclose(enc_rep, enc_par, rtol=1e-3, atol=0)


def test_nash_mtl_ub_between_weight_updates() -> None:
    """Steps that reuse the weights push the clipped ``sum alpha_i dL_i/dh`` through the encoder."""
    m = model()
    method = make("nash-mtl-ub", update_weights_every=2, max_norm=1e-3)
    variant_step(method, m, 0)
    alpha = torch.as_tensor(method.alpha)
    enc, heads = variant_step(method, m, 1)
    losses, h = m.losses(1)
    grad_h = torch.autograd.grad((alpha * losses).sum(), [h], retain_graph=True)[0]
    assert grad_h.norm() > 1e-3  # the clip is active
    direction = grad_h * 1e-3 / grad_h.norm()
    ref = torch.autograd.grad(h, list(m.encoder.parameters()), direction, retain_graph=True)
    torch.testing.assert_close(enc, flat(ref))
    torch.testing.assert_close(
        heads, flat(torch.autograd.grad(losses.sum(), list(m.heads.parameters())))
    )


@pytest.mark.parametrize("name", UB)
def test_variant_needs_the_representation(name: str) -> None:
    m = model()
    losses, _ = m.losses()
    with pytest.raises(ValueError, match="representation"):
        make(name).backward(losses, shared_parameters=list(m.encoder.parameters()))


def test_mechanism() -> None:
    cls = method_class("pcgrad-ub")
    assert (
        cls
        is method_class("PCGrad-UB".lower())
        is representation_variant(method_class("pcgrad"), "pcgrad-ub")
    )
    assert cls.__name__ == "PCGradUB" and "representation" in describe("pcgrad-ub")
    method = make("pcgrad-ub")
    assert pickle.loads(pickle.dumps(method)).space == "representation"
    with pytest.raises(ValueError, match="already works"):
        representation_variant(method_class("graddrop"), "graddrop-ub")
    with pytest.raises(TypeError, match="not an Aggregator"):
        representation_variant(method_class("ls"), "ls-ub")  # type: ignore[arg-type]
    with pytest.raises(KeyError, match="pcgrad-ub"):
        create("no-such-ub", num_tasks=2)


def test_ntkmtl_sr_backward_is_the_weighted_loss_gradient() -> None:
    """A loss weighting on every parameter, weights from the representation's NTK."""
    m = model()
    method = make("ntkmtl-sr")
    enc, heads = variant_step(method, m, 0)
    losses, _ = m.losses(0)
    w = method.last_weights
    assert not torch.allclose(w, torch.ones(K, dtype=w.dtype))
    objective = (w * losses).sum()
    torch.testing.assert_close(
        enc, flat(torch.autograd.grad(objective, list(m.encoder.parameters()), retain_graph=True))
    )
    torch.testing.assert_close(
        heads, flat(torch.autograd.grad(objective, list(m.heads.parameters())))
    )
