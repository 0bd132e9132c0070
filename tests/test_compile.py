"""Every method of the registry with an encoder compiled by ``torch.compile`` (inductor, CPU).

A method that differentiates the K task losses through the shared parameters one by one takes
K backward passes over one graph. Through a compiled graph the second pass raised (torch's
default donated buffers) or, without donated buffers, returned wrong gradients on one of this
project's machines (torch 2.14.1 on the CPU: the first task's gradient right, the next ones
not) and was right on another (scripts/studies/compile_second_pass.py says what a machine
does). So every method either gives the eager model's gradients or refuses the compiled graph
with an error that names what to use instead, never a silent wrong gradient; the
representation forms ("-ub"), the loss weightings and BayesAgg-MTL, one backward pass through
the encoder, work.
"""

from __future__ import annotations

import pytest
import torch
import torch._functorch.config
from torch import nn

from bayesagg import Binary, Multiclass, Regression, methods
from bayesagg.tasks import task_losses

GROUPS = (Regression("r", 2), Binary("b", 1), Multiclass("m", 3))
K = 4


def _encoder() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.ELU(), nn.Linear(8, 8), nn.ELU())


def _data():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(16, 6, generator=g)
    targets = [
        torch.randn(16, 2, generator=g),
        torch.randint(0, 2, (16, 1), generator=g).float(),
        torch.randint(0, 3, (16,), generator=g),
    ]
    return x, targets


@pytest.fixture(scope="module")
def compiled():
    """An eager encoder and its compiled twin (same weights), without donated buffers (the
    setting is read when the backward graph is compiled, at the first backward pass)."""
    with torch._functorch.config.patch(donated_buffer=False):
        yield _encoder(), torch.compile(_encoder())


def _gradients(name: str, encoder: nn.Module, parameters: list[nn.Parameter]):
    torch.manual_seed(2)
    heads = nn.ModuleList([nn.Linear(8, 2), nn.Linear(8, 1), nn.Linear(8, 3)])
    options = {"groups": GROUPS} if methods.needs_groups(name) else {}
    if name == "stl":
        options["task"] = 0
    method = methods.create(name, num_tasks=K, **options)
    x, targets = _data()
    for p in [*parameters, *heads.parameters()]:
        p.grad = None
    h = encoder(x)
    losses = task_losses(GROUPS, [head(h) for head in heads], targets)
    method.backward(
        losses,
        shared_parameters=parameters,
        task_parameters=list(heads.parameters()),
        representation=h,
        heads=heads,
        targets=targets,
    )
    return [p.grad.clone() for p in parameters]


#: One backward pass through the encoder: these must work on a compiled model.
ONE_PASS = ("ls", "uw", "famo", "dwa", "mgda-ub", "upgrad-ub", "nash-mtl-ub", "bayesagg")


@pytest.mark.parametrize("name", methods.names())
def test_every_method_through_a_compiled_encoder(compiled, name):
    eager, model = compiled
    want = _gradients(name, eager, list(eager.parameters()))
    try:
        got = _gradients(name, model, list(model.parameters()))
    except RuntimeError as err:
        assert name not in ONE_PASS
        assert "compiled by torch.compile" in str(err) and "'-ub'" in str(err)
        return
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_default_compile_refuses_the_parameter_methods_and_runs_the_others():
    with torch._functorch.config.patch(donated_buffer=True):  # torch's default
        model = torch.compile(_encoder())
        with pytest.raises(RuntimeError, match=r"compiled by torch\.compile"):
            _gradients("mgda", model, list(model.parameters()))
        _gradients("mgda-ub", model, list(model.parameters()))  # one pass through the encoder
