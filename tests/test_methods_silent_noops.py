"""No silent no-ops: a forgotten hook or an unoptimised parameter warns once, with the fix.

FAMO without ``after_step`` and UW without its log-variances in the optimiser would otherwise
train as a fixed weighting without a word; ``aggregate`` on a matrix alone either works or
says in one line what else it needs.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from bayesagg import methods
from bayesagg.methods import Aggregator

F64 = torch.float64


def _problem(seed: int = 0, k: int = 2):
    """A shared linear layer and K scalar heads; ``losses()`` recomputes the K losses."""
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(8, 3, generator=g, dtype=F64), torch.randn(8, k, generator=g, dtype=F64)
    shared = torch.randn(4, 3, generator=g, dtype=F64).requires_grad_(True)
    heads = [torch.randn(4, generator=g, dtype=F64).requires_grad_(True) for _ in range(k)]

    def losses() -> torch.Tensor:
        h = torch.tanh(x @ shared.T)
        return ((torch.stack([h @ v for v in heads], 1) - y) ** 2).mean(0)

    return shared, heads, losses


def _steps(method, n: int, *, after_step: bool, optimise_method: bool = True) -> list:
    """Train ``n`` SGD steps; return the warnings raised."""
    shared, heads, losses = _problem(k=method.num_tasks)
    params = [shared, *heads] + (method.parameters() if optimise_method else [])
    opt = torch.optim.SGD(params, lr=0.05)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(n):
            opt.zero_grad()
            method.backward(losses(), shared_parameters=[shared], task_parameters=heads)
            opt.step()
            if after_step:
                with torch.no_grad():
                    method.after_step(losses())
    return [w for w in caught if issubclass(w.category, UserWarning)]


def test_famo_without_after_step_warns_once_with_the_fix():
    famo = methods.create("famo", num_tasks=2)
    caught = _steps(famo, 5, after_step=False)
    assert len(caught) == 1
    text = str(caught[0].message)
    assert text.startswith("famo: backward was called again without after_step")
    assert "method.after_step(new_losses)" in text
    assert caught[0].filename == __file__  # points at the caller's backward


def test_famo_with_after_step_is_quiet_and_moves_its_logits():
    famo = methods.create("famo", num_tasks=2)
    assert _steps(famo, 5, after_step=True) == []
    assert famo.logits.abs().sum() > 0


def test_uw_outside_the_optimiser_warns_once_with_the_fix():
    uw = methods.create("uw", num_tasks=2)
    caught = _steps(uw, 3 * uw.stale_backwards, after_step=False, optimise_method=False)
    assert len(caught) == 1
    text = str(caught[0].message)
    assert text.startswith("uw: log_variance has not changed in")
    assert "add method.parameters() to the optimiser" in text
    assert torch.all(uw.log_variance == 0)  # what the warning is about


def test_uw_in_the_optimiser_is_quiet():
    uw = methods.create("uw", num_tasks=2)
    assert _steps(uw, 3 * uw.stale_backwards, after_step=False) == []
    assert uw.log_variance.abs().sum() > 0


def test_uw_tolerates_gradient_accumulation_below_its_threshold():
    """Several backward calls per optimiser step leave s unchanged in between: no alarm."""
    uw = methods.create("uw", num_tasks=2)
    shared, heads, losses = _problem()
    opt = torch.optim.SGD([shared, *heads, *uw.parameters()], lr=0.05)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(5):
            opt.zero_grad()
            for _ in range(uw.stale_backwards - 1):
                uw.backward(losses(), shared_parameters=[shared], task_parameters=heads)
            opt.step()


def test_uw_watches_again_after_reset_and_load():
    uw = methods.create("uw", num_tasks=2)
    _steps(uw, 3, after_step=False)  # optimised: it moved, the watch stops
    assert uw._moved
    uw.load_state_dict(uw.state_dict())
    assert not uw._moved
    uw.reset()
    assert not uw._moved


def _aggregators() -> list[str]:
    out = []
    for name in methods.names():
        try:
            method = methods.create(name, num_tasks=3)
        except TypeError:  # needs more than num_tasks (stl: task, bayesagg: groups)
            continue
        if isinstance(method, Aggregator):
            out.append(name)
    return out


#: The aggregators whose default ``aggregate`` needs the K losses besides the matrix (the
#: README names them).
NEED_LOSSES = {"mgda-ub"}


@pytest.mark.parametrize("name", _aggregators())
def test_aggregate_on_a_matrix_alone(name):
    jacobian = torch.randn(3, 20, generator=torch.Generator().manual_seed(0), dtype=F64)
    method = methods.create(name, num_tasks=3)
    if name not in NEED_LOSSES:
        assert method.aggregate(jacobian).shape == (20,)
        return
    with pytest.raises(ValueError) as err:
        method.aggregate(jacobian)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"{name}: normalization='loss+' needs the task losses")
    assert "aggregate(jacobian, losses)" in message and "normalization='none'" in message
    # both fixes the message names work
    losses = torch.tensor([0.5, 1.0, 2.0], dtype=F64)
    assert method.aggregate(jacobian, losses).shape == (20,)
    plain = methods.create(name, num_tasks=3, normalization="none")
    assert plain.aggregate(jacobian).shape == (20,)
