"""Every method of the registry under a caller's mixed precision (``torch.autocast``, bfloat16 on
the CPU).

- Called inside an autocast region, ``method.backward`` fills exactly the gradients it fills
  outside one (its Gramians, solvers, weights and BayesAgg-MTL's posteriors and moments run
  with autocast off), for every method of the registry.
- A short training run whose forward passes run under bfloat16 autocast ends near the float32
  run, for one method of each family (loss weighting, Gramian on the parameters, Gramian on the
  representation, FAMO's after-step, BayesAgg-MTL): bfloat16 keeps 8 bits of mantissa, so the
  tolerance is a few per cent of the weights' change, stated below.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bayesagg import Binary, Multiclass, Regression, methods
from bayesagg.tasks import task_losses

GROUPS = (Regression("r", 2), Binary("b", 1), Multiclass("m", 3))
K = 4


def _problem(seed: int = 0):
    torch.manual_seed(seed)
    encoder = nn.Sequential(nn.Linear(6, 8), nn.ELU())
    heads = nn.ModuleList([nn.Linear(8, 2), nn.Linear(8, 1), nn.Linear(8, 3)])
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(16, 6, generator=g)
    targets = [
        torch.randn(16, 2, generator=g),
        torch.randint(0, 2, (16, 1), generator=g).float(),
        torch.randint(0, 3, (16,), generator=g),
    ]
    return encoder, heads, x, targets


def _method(name: str) -> methods.Method:
    options = {"groups": GROUPS} if methods.needs_groups(name) else {}
    if name == "stl":
        options["task"] = 0
    return methods.create(name, num_tasks=K, **options)


def _gradients(name: str, autocast: bool) -> list[torch.Tensor | None]:
    encoder, heads, x, targets = _problem()
    method = _method(name)
    h = encoder(x)
    losses = task_losses(GROUPS, [head(h) for head in heads], targets)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        method.backward(
            losses,
            shared_parameters=list(encoder.parameters()),
            task_parameters=list(heads.parameters()),
            representation=h,
            heads=heads,
            targets=targets,
        )
    return [p.grad for p in [*encoder.parameters(), *heads.parameters()]]


@pytest.mark.parametrize("name", methods.names())
def test_backward_inside_autocast_is_the_float32_backward(name):
    plain, inside = _gradients(name, False), _gradients(name, True)
    for a, b in zip(plain, inside, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(b, a, rtol=0, atol=0)


def _train(name: str, autocast: bool, steps: int = 15) -> list[torch.Tensor]:
    encoder, heads, x, targets = _problem(3)
    start = [p.detach().clone() for p in encoder.parameters()]
    method = _method(name)
    params = [*encoder.parameters(), *heads.parameters(), *method.parameters()]
    optimizer = torch.optim.SGD(params, lr=0.05)
    for _ in range(steps):
        optimizer.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            h = encoder(x)
            losses = task_losses(GROUPS, [head(h) for head in heads], targets)
        method.backward(
            losses.float(),
            shared_parameters=list(encoder.parameters()),
            task_parameters=list(heads.parameters()),
            representation=h,
            heads=heads,
            targets=targets,
        )
        optimizer.step()
        if method.needs_after_step:
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                h = encoder(x)
                after = task_losses(GROUPS, [head(h) for head in heads], targets)
            method.after_step(after.float())
    return [p.detach() - s for p, s in zip(encoder.parameters(), start, strict=True)]


#: The largest relative difference allowed between the encoder's change in a bfloat16-autocast
#: run and in the float32 run (bfloat16 rounds to 2^-8 = 0.4 %; 15 steps accumulate it).
BF16_TOLERANCE = 0.05


@pytest.mark.parametrize("name", ["ls", "uw", "mgda", "upgrad-ub", "famo", "bayesagg"])
def test_short_bfloat16_run_stays_near_the_float32_run(name):
    exact, mixed = _train(name, False), _train(name, True)
    change = torch.cat([d.flatten() for d in exact])
    difference = torch.cat([(m - e).flatten() for m, e in zip(mixed, exact, strict=True)])
    assert float(difference.norm() / change.norm()) < BF16_TOLERANCE
