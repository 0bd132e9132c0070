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

from bayesagg import methods
from bayesagg.tasks import task_losses
from precision_problem import GROUPS, K, problem, relative_difference


def _gradients(name: str, autocast: bool) -> list[torch.Tensor | None]:
    encoder, heads, x, targets = problem()
    options = {"groups": GROUPS} if methods.needs_groups(name) else {}
    if name == "stl":
        options["task"] = 0
    method = methods.create(name, num_tasks=K, **options)
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


#: The largest relative difference allowed between the encoder's change in a bfloat16-autocast
#: run and in the float32 run (bfloat16 rounds to 2^-8 = 0.4 %; 15 steps accumulate it).
BF16_TOLERANCE = 0.05


@pytest.mark.parametrize("name", ["ls", "uw", "mgda", "upgrad-ub", "famo", "bayesagg"])
def test_short_bfloat16_run_stays_near_the_float32_run(name):
    assert relative_difference(name, torch.bfloat16) < BF16_TOLERANCE
