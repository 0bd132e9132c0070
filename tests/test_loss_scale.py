"""float16 mixed precision with a ``torch.amp.GradScaler``: ``backward(..., loss_scale=s)``.

- For every method of the registry that takes a loss scale, the gradients it fills are s times
  those of the unscaled step (s a power of two, so the products are exact) while its weights
  are the unscaled step's; every other method refuses the scale with an error naming it.
- A scaled step whose float16 gradients overflow fills NaN gradients, so the scaler skips it
  (as for a plain ``scaler.scale(loss).backward()``), instead of handing inf to a solver.
- A short float16-autocast run with a GradScaler on the CPU ends near the float32 run for one
  method of each family; the same run on CUDA where a GPU is present.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bayesagg import BayesAgg, methods
from bayesagg.tasks import task_losses
from precision_problem import GROUPS, create, problem, relative_difference

SCALE = 1024.0

#: Methods whose rule reads gradient norms or keeps running gradient state between steps: they
#: refuse a loss scale (bfloat16 autocast needs none).
REFUSING = {"famo", "gradnorm", "db-mtl"}


def _step(name: str, loss_scale: float | None):
    encoder, heads, x, targets = problem(2)
    method = create(name)
    torch.manual_seed(5)  # methods that draw (RLW, PCGrad, GradDrop) draw the same
    h = encoder(x)
    losses = task_losses(GROUPS, [head(h) for head in heads], targets)
    method.backward(
        losses,
        shared_parameters=list(encoder.parameters()),
        task_parameters=list(heads.parameters()),
        representation=h,
        heads=heads,
        targets=targets,
        loss_scale=loss_scale,
    )
    params = [*encoder.parameters(), *heads.parameters(), *method.parameters()]
    return [p.grad for p in params], method.last_weights


@pytest.mark.parametrize("name", methods.names())
def test_scaled_step_fills_the_scaled_gradients_with_the_same_weights(name):
    if name in REFUSING:
        with pytest.raises(ValueError, match=rf"{name}.*loss_scale"):
            _step(name, SCALE)
        return
    plain, plain_weights = _step(name, None)
    scaled, scaled_weights = _step(name, SCALE)
    assert any(g is not None for g in plain)
    for a, b in zip(plain, scaled, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(b, a * SCALE, rtol=1e-6, atol=1e-9 * SCALE)
    if plain_weights is not None:
        torch.testing.assert_close(scaled_weights, plain_weights, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("bad", [0.0, -2.0, float("inf"), float("nan")])
def test_bad_scale_is_named(bad):
    with pytest.raises(ValueError, match="loss_scale must be finite and > 0"):
        _step("ls", bad)


@pytest.mark.parametrize("name", ["upgrad", "mgda-ub"])
def test_overflow_gives_nan_gradients_for_the_scaler_to_skip(name):
    encoder, heads, x, targets = problem(2)
    method = create(name)
    with torch.autocast("cpu", dtype=torch.float16):
        h = encoder(x)
        losses = task_losses(GROUPS, [head(h) for head in heads], targets)
    method.backward(
        losses.float(),
        shared_parameters=list(encoder.parameters()),
        task_parameters=list(heads.parameters()),
        representation=h,
        loss_scale=2.0**40,  # far beyond float16's 65504: the scaled gradients overflow
    )
    grads = [p.grad for p in encoder.parameters()]
    assert all(g is not None and not bool(g.isfinite().all()) for g in grads)


#: float16 keeps 11 bits of mantissa (2^-11 = 0.05 %); 15 steps accumulate it.
FP16_TOLERANCE = 0.02


@pytest.mark.parametrize("name", ["ls", "uw", "mgda", "upgrad-ub", "bayesagg"])
def test_short_float16_run_with_a_grad_scaler_stays_near_float32_on_cpu(name):
    assert relative_difference(name, torch.float16, "cpu") < FP16_TOLERANCE


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("name", ["ls", "uw", "mgda", "upgrad-ub", "bayesagg"])
def test_short_float16_run_with_a_grad_scaler_stays_near_float32_on_cuda(name):
    assert relative_difference(name, torch.float16, "cuda") < FP16_TOLERANCE


def test_bayesagg_object_takes_the_scale_directly():
    """The drop-in ``BayesAgg`` object: the same contract as the registry's wrapper."""
    grads = []
    for scale in (None, SCALE):
        encoder, heads, x, targets = problem(4)
        agg = BayesAgg(GROUPS, warmup_epochs=0)
        agg.backward(encoder(x), list(heads), targets, loss_scale=scale)
        grads.append([p.grad for p in [*encoder.parameters(), *heads.parameters()]])
    for a, b in zip(*grads, strict=True):
        if a is None:
            assert b is None
        else:
            torch.testing.assert_close(b, a * SCALE, rtol=1e-6, atol=1e-9 * SCALE)
    assert isinstance(heads, nn.ModuleList)
