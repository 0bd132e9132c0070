"""Every aggregator's properties, from the registry: the claims each class declares, checked.

Each aggregator declares with its class the properties it guarantees for every Jacobian
(``Aggregator.properties``, refined by its hyper-parameters in ``claims()``); this module
checks every claim of every registered aggregator on the same inputs, in float32 and
float64, and checks the structural properties every aggregator must have whatever it
claims: the shape and dtype of the direction, finite values, a zero direction for a zero
Jacobian, weights that reproduce the direction for a Gramian weighting, and a direction that
keeps the Jacobian's graph.

The inputs are built to be hard: exactly rank-1 Jacobians, collinear rows, opposite rows,
a zero row, Jacobians whose rows have the origin in (or just outside) their convex hull, and
scales from 1e-10 to 1e15.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from bayesagg.methods import Aggregator, create, gramian_based, method_class, names

K, P = 3, 8
DTYPES = [torch.float32, torch.float64]
SEEDED = {"pcgrad", "gradvac", "graddrop"}

# every registered aggregator with its defaults, and the settings whose claims differ
AGGREGATORS = [n for n in names() if issubclass(method_class(n), Aggregator)]
CASES = [(n, {}) for n in AGGREGATORS]
CASES += [("cagrad", {"c": 1.0}), ("cagrad", {"c": 2.0}), ("mgda-ub", {"normalization": "none"})]
IDS = [n + "".join(f"-{k}={v}" for k, v in o.items()) for n, o in CASES]


def build(name: str, options: dict) -> Aggregator:
    options = dict(options)
    if name in SEEDED or name.removesuffix("-ub") in SEEDED:
        options.setdefault("seed", 0)
    method = create(name, num_tasks=K, **options)
    assert isinstance(method, Aggregator)
    return method


def claims(name: str, options: dict) -> frozenset[str]:
    return build(name, options).claims()


def run(method: Aggregator, jacobian: Tensor) -> Tensor:
    """The direction of one step; the losses (MGDA's normalisations) are fixed and positive."""
    losses = torch.tensor([0.5, 1.0, 2.0], dtype=jacobian.dtype)[: jacobian.shape[0]]
    if getattr(method, "uses_losses", False):
        return method.aggregate(jacobian, losses)
    return method.aggregate(jacobian)


def _inputs() -> dict[str, Tensor]:
    """Hard Jacobians [K, P] in float64 (cast per test)."""
    gen = torch.Generator().manual_seed(1234)
    base = torch.randn(K, P, generator=gen, dtype=torch.float64)
    v = base[0] / base[0].norm()
    w = base[1] - (base[1] @ v) * v
    w = w / w.norm()
    out = {
        "random": base,
        "rank1-mixed-signs": torch.outer(torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64), v),
        "collinear-positive": torch.outer(torch.tensor([1.0, 3.0, 0.25], dtype=torch.float64), v),
        "opposite-pair": torch.stack([v + 0.5 * w, -(v + 0.5 * w), w]),
        "zero-row": torch.stack([base[0], torch.zeros(P, dtype=torch.float64), base[2]]),
        # the origin in the convex hull (Pareto-stationary): g3 = -(g1 + g2)
        "stationary": torch.stack([v, w, -(v + w)]),
        # just outside: a small common component along a third direction
        "near-stationary": torch.stack([v, w, -(v + w)]) + 1e-6 * base[2] / base[2].norm(),
        "near-stationary-1e-3": torch.stack([v, w, -(v + w)]) + 1e-3 * base[2] / base[2].norm(),
    }
    for e in (-10, -5, 5, 15):
        out[f"scale-1e{e}"] = base * 10.0**e
    return out


INPUTS = _inputs()


def _tol(dtype: torch.dtype, name: str = "") -> float:
    """Relative rounding allowed: the dtype's, or the method's solver accuracy if larger."""
    accuracy = method_class(name).accuracy if name else 0.0
    return max(1e-10 if dtype == torch.float64 else 1e-6, accuracy)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", list(INPUTS))
@pytest.mark.parametrize(("name", "options"), CASES, ids=IDS)
def test_structure(name: str, options: dict, case: str, dtype: torch.dtype) -> None:
    """Shape and dtype of the direction, finite values, finite weights of the right shape."""
    jac = INPUTS[case].to(dtype)
    method = build(name, options)
    d = run(method, jac)
    assert d.shape == (P,) and d.dtype == dtype
    assert torch.isfinite(d).all(), f"{name} on {case}: {d}"
    if method.last_weights is not None:
        assert method.last_weights.shape == (K,)
        assert torch.isfinite(method.last_weights).all(), method.last_weights


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("name", "options"), CASES, ids=IDS)
def test_zero_jacobian_gives_zero_direction(name: str, options: dict, dtype: torch.dtype) -> None:
    """Stationarity: no gradient, no step (twice, so that stateful rules see a second step)."""
    method = build(name, options)
    for _ in range(2):
        d = run(method, torch.zeros(K, P, dtype=dtype))
        assert torch.count_nonzero(d) == 0, d


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", list(INPUTS))
@pytest.mark.parametrize(
    ("name", "options"),
    [c for c in CASES if "non_conflicting" in claims(*c)],
    ids=[i for i, c in zip(IDS, CASES, strict=True) if "non_conflicting" in claims(*c)],
)
def test_non_conflicting(name: str, options: dict, case: str, dtype: torch.dtype) -> None:
    """min_i g_i . d >= 0: no task's loss increases to first order (up to rounding)."""
    jac = INPUTS[case].to(dtype)
    d = run(build(name, options), jac)
    products = (jac.double() @ d.double()) / (jac.double().norm(dim=1).max() * jac.double().norm())
    assert float(products.min()) >= -_tol(dtype, name), (products, d)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", list(INPUTS))
@pytest.mark.parametrize(
    ("name", "options"),
    [c for c in CASES if "permutation_invariant" in claims(*c)],
    ids=[i for i, c in zip(IDS, CASES, strict=True) if "permutation_invariant" in claims(*c)],
)
def test_permutation_invariant(name: str, options: dict, case: str, dtype: torch.dtype) -> None:
    """Reordering the tasks leaves the direction unchanged (and permutes the weights)."""
    jac = INPUTS[case].to(dtype)
    perm = torch.tensor([2, 0, 1])
    one, other = build(name, options), build(name, options)
    d = run(one, jac)
    if getattr(one, "uses_losses", False):  # the losses follow their tasks
        losses = torch.tensor([0.5, 1.0, 2.0], dtype=dtype)
        d_perm = other.aggregate(jac[perm], losses[perm])
    else:
        d_perm = run(other, jac[perm])
    scale = float(jac.double().norm()) * max(1.0, float(d.double().norm()) / float(jac.norm()))
    assert float((d - d_perm).double().norm()) <= 10 * _tol(dtype, name) * scale, (d, d_perm)


@pytest.mark.parametrize("scale", [1e-10, 1e-5, 1e5, 1e15])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", ["random", "opposite-pair", "near-stationary-1e-3"])
@pytest.mark.parametrize(
    ("name", "options"),
    [c for c in CASES if "scale_homogeneous" in claims(*c)],
    ids=[i for i, c in zip(IDS, CASES, strict=True) if "scale_homogeneous" in claims(*c)],
)
def test_scale_homogeneous(
    name: str, options: dict, case: str, dtype: torch.dtype, scale: float
) -> None:
    """d(s J) = s d(J) for s > 0, over two steps (stateful rules included)."""
    one, other = build(name, options), build(name, options)
    for step in range(2):
        jac = (INPUTS[case] * (1.0 + step)).to(dtype)
        d, d_scaled = run(one, jac), run(other, (jac.double() * scale).to(dtype))
        err = float((d_scaled.double() / scale - d.double()).norm())
        assert err <= 10 * _tol(dtype, name) * float(jac.double().norm()), (step, d, d_scaled)


GRAMIAN = [(n, o) for n, o in CASES if gramian_based(n)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", list(INPUTS))
@pytest.mark.parametrize(("name", "options"), GRAMIAN)
def test_weights_reproduce_the_direction(
    name: str, options: dict, case: str, dtype: torch.dtype
) -> None:
    """A Gramian weighting's direction is last_weights @ J (what data parallelism applies)."""
    jac = INPUTS[case].to(dtype)
    method = build(name, options)
    d = run(method, jac)
    expected = method.last_weights.to(dtype) @ jac
    size = float(method.last_weights.double().abs().sum()) * float(jac.double().norm())
    assert float((d - expected).double().norm()) <= 10 * _tol(dtype) * (size + 1e-300)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("name", "options"), CASES, ids=IDS)
def test_direction_keeps_the_jacobians_graph(name: str, options: dict, dtype: torch.dtype) -> None:
    """aggregate of a Jacobian that requires grad: the same value, differentiable as w @ J.

    The weights are computed from the detached Jacobian: the gradient of ``v . d`` w.r.t. J
    is ``outer(w, v)`` with ``w`` the recorded weights (GradDrop and ExcessMTL, whose
    directions are not a weighted sum of the rows alone, only have to keep the graph).
    """
    jac = INPUTS["random"].to(dtype)
    plain = run(build(name, options), jac)
    leaf = jac.clone().requires_grad_(True)
    method = build(name, options)
    d = run(method, leaf)
    assert torch.equal(d.detach(), plain)
    assert d.requires_grad
    v = torch.linspace(-1.0, 1.0, P, dtype=dtype)
    (grad,) = torch.autograd.grad(d @ v, leaf)
    if gramian_based(name) or name == "ntkmtl-sr":
        torch.testing.assert_close(grad, torch.outer(method.last_weights.to(dtype), v))


def test_every_aggregator_declares_known_properties() -> None:
    known = {"non_conflicting", "permutation_invariant", "scale_homogeneous"}
    for name in AGGREGATORS:
        assert method_class(name).properties <= known, name
