"""Missing labels (NaN regression targets, -100 binary and multiclass targets) in the task losses
and every method of the registry.

References drop the unlabelled examples by hand and compute each task's mean loss on the rest
(independent of :mod:`bayesagg.tasks`' masking); a task with no label in the batch has loss 0
and gradient 0, never NaN. BayesAgg-MTL takes them too (its numbers:
tests/test_bayesagg_missing_labels.py); malformed labels still raise an error naming the group.
"""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bayesagg import BayesAgg, Binary, Multiclass, Regression, methods
from bayesagg.tasks import MISSING, task_losses

GROUPS = (Regression("r", 2), Binary("b", 2), Multiclass("m", 3))
K = 5


def _batch(seed: int = 0, empty_task: bool = False):
    g = torch.Generator().manual_seed(seed)
    b = 12
    predictions = [
        torch.randn(b, 2, generator=g, dtype=torch.float64, requires_grad=True),
        torch.randn(b, 2, generator=g, dtype=torch.float64, requires_grad=True),
        torch.randn(b, 3, generator=g, dtype=torch.float64, requires_grad=True),
    ]
    y_r = torch.randn(b, 2, generator=g, dtype=torch.float64)
    y_b = torch.randint(0, 2, (b, 2), generator=g).double()
    y_m = torch.randint(0, 3, (b,), generator=g)
    y_r[torch.rand(b, 2, generator=g) < 0.4] = float("nan")
    y_b[torch.rand(b, 2, generator=g) < 0.4] = MISSING
    y_m[torch.rand(b, generator=g) < 0.4] = MISSING
    if empty_task:
        y_r[:, 1] = float("nan")  # task r[1] has no label in this batch
        y_m[:] = MISSING
    return predictions, [y_r, y_b, y_m]


def _reference(predictions, targets) -> torch.Tensor:
    """Each task's mean loss over its labelled examples, from explicit row selections."""
    out = []
    p_r, p_b, p_m = predictions
    y_r, y_b, y_m = targets
    for o in range(2):
        rows = ~torch.isnan(y_r[:, o])
        out.append(((p_r[rows, o] - y_r[rows, o]) ** 2).mean() if rows.any() else p_r.sum() * 0)
    for o in range(2):
        rows = y_b[:, o] != MISSING
        out.append(F.binary_cross_entropy_with_logits(p_b[rows, o], y_b[rows, o]))
    rows = y_m != MISSING
    out.append(F.cross_entropy(p_m[rows], y_m[rows]) if rows.any() else p_m.sum() * 0)
    return torch.stack(out)


@pytest.mark.parametrize("empty_task", [False, True])
def test_task_losses_average_over_the_labelled_examples(empty_task):
    predictions, targets = _batch(empty_task=empty_task)
    got = task_losses(GROUPS, predictions, targets)
    want = _reference(predictions, targets)
    torch.testing.assert_close(got, want)
    grads = torch.autograd.grad(got.sum(), predictions)
    want_grads = torch.autograd.grad(want.sum(), predictions)
    for a, b in zip(grads, want_grads, strict=True):
        assert bool(a.isfinite().all())
        torch.testing.assert_close(a, b)


def test_an_unlabelled_task_is_said_once(caplog, monkeypatch):
    import bayesagg.tasks

    monkeypatch.setattr(bayesagg.tasks, "_said_unlabelled", set())  # a fresh process
    predictions, targets = _batch(3, empty_task=True)
    with caplog.at_level(logging.WARNING, logger="bayesagg"):
        task_losses(GROUPS, predictions, targets)
        task_losses(GROUPS, predictions, targets)
    said = [r.getMessage() for r in caplog.records if "has no label" in r.getMessage()]
    assert len(said) == 2, said  # r[1] and m, once each
    assert any("'r[1]'" in m for m in said) and any("'m'" in m for m in said)


def test_complete_labels_keep_the_unmasked_computation():
    """Without a missing label the losses are the plain means, bit for bit."""
    g = torch.Generator().manual_seed(4)
    p = torch.randn(8, 2, generator=g)
    y = torch.randn(8, 2, generator=g)
    assert torch.equal(Regression("r", 2).losses(p, y), (p - y).pow(2).mean(dim=0))
    yb = torch.randint(0, 2, (8, 2), generator=g).float()
    assert torch.equal(
        Binary("b", 2).losses(p, yb),
        F.binary_cross_entropy_with_logits(p, yb, reduction="none").mean(dim=0),
    )


#: Methods that take the log of every task's loss (or divide by it): a task whose loss is 0
#: (no label in the batch) is an error for them, naming the tasks.
LOG_LOSS_METHODS = ("si", "gradnorm", "igbv2", "stch", "go4align")


@pytest.mark.parametrize("name", [n for n in methods.names() if not methods.needs_groups(n)])
def test_every_method_with_an_absent_task_gives_finite_gradients(name):
    """A batch where one regression output and the multiclass task have no label at all: every
    method's gradients are finite (the absent tasks' losses are 0 with zero gradients)."""
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Linear(4, 6), nn.ELU()).double()
    heads = nn.ModuleList([nn.Linear(6, 2), nn.Linear(6, 2), nn.Linear(6, 3)]).double()
    _, targets = _batch(5, empty_task=True)
    x = torch.randn(12, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    h = encoder(x)
    losses = task_losses(GROUPS, [head(h) for head in heads], targets)
    options = {"task": 0} if name == "stl" else {}
    method = methods.create(name, num_tasks=K, **options)
    try:
        method.backward(
            losses,
            shared_parameters=list(encoder.parameters()),
            task_parameters=list(heads.parameters()),
            representation=h,
        )
    except ValueError as err:  # methods of log-losses: a one-line error naming the tasks
        assert name in LOG_LOSS_METHODS and "[1, 4]" in str(err), (name, err)
        return
    assert name not in LOG_LOSS_METHODS
    for p in [*encoder.parameters(), *heads.parameters()]:
        assert p.grad is None or bool(p.grad.isfinite().all()), name


@pytest.mark.parametrize("empty_task", [False, True])
def test_bayesagg_takes_missing_labels(empty_task):
    """BayesAgg-MTL fits each task on its labelled examples (tests/test_bayesagg_missing_labels.py
    checks the numbers): a step with missing labels, one task absent from the batch or not,
    returns the masked mean losses and finite gradients."""
    torch.manual_seed(0)
    agg = BayesAgg(list(GROUPS))
    heads = [nn.Linear(4, 2).double(), nn.Linear(4, 2).double(), nn.Linear(4, 3).double()]
    h = torch.randn(12, 4, dtype=torch.float64, requires_grad=True)
    _, targets = _batch(7, empty_task=empty_task)
    losses = agg.backward(h, heads, targets)
    with torch.no_grad():
        want = _reference([head(h) for head in heads], targets)
    torch.testing.assert_close(losses, want)
    assert h.grad is not None and bool(h.grad.isfinite().all())
    for head in heads[1:]:  # the classification heads are trained; the regression head fitted
        assert all(bool(p.grad.isfinite().all()) for p in head.parameters())


def test_bayesagg_still_refuses_malformed_labels_naming_the_group():
    agg = BayesAgg(list(GROUPS))
    heads = [nn.Linear(4, 2), nn.Linear(4, 2), nn.Linear(4, 3)]
    h = torch.randn(12, 4, requires_grad=True)
    _, targets = _batch(7)
    targets = [t.float() if t.is_floating_point() else t for t in targets]
    for index, value, error, match in [
        (0, float("inf"), FloatingPointError, r"'r'.*infinit.*missing label is NaN"),
        (1, 0.5, ValueError, r"'b'.*0 or 1.*-100"),
        (1, float("nan"), FloatingPointError, r"'b'.*NaN or infinite.*-100"),
        (2, 7, ValueError, r"'m'.*class ids must be in \[0, 3\).*-100"),
        (2, -1, ValueError, r"'m'.*class ids"),
    ]:
        bad = [t.clone() for t in targets]
        bad[index][3] = value
        with pytest.raises(error, match=match):
            agg.backward(h, heads, bad)
