"""The small multi-task problem and short training run the mixed-precision tests share.

``short_run`` trains an encoder and three heads (regression, binary, multiclass) for a few SGD
steps with one method of the registry, the forward passes optionally under ``torch.autocast``;
with float16 a ``torch.amp.GradScaler`` scales the step (``backward(..., loss_scale=...)``) and
steps the optimiser, as a user's float16 loop does. The tests compare its result with and
without autocast.
"""

from __future__ import annotations

import torch
from torch import nn

from bayesagg import Binary, Multiclass, Regression, methods
from bayesagg.tasks import task_losses

GROUPS = (Regression("r", 2), Binary("b", 1), Multiclass("m", 3))
K = 4


def problem(seed: int = 0):
    """Return (encoder, heads, x, targets) of a 16-example batch, seeded."""
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


def create(name: str) -> methods.Method:
    """Return the registry's method ``name`` for :data:`GROUPS` (BayesAgg-MTL without warm-up,
    so that every step is an aggregated one)."""
    options = {"groups": GROUPS} if methods.needs_groups(name) else {}
    if name == "stl":
        options["task"] = 0
    if name == "bayesagg":
        options["warmup_epochs"] = 0
    return methods.create(name, num_tasks=K, **options)


def short_run(
    name: str,
    *,
    dtype: torch.dtype,
    autocast: bool,
    device: str = "cpu",
    steps: int = 15,
) -> list[torch.Tensor]:
    """Return the encoder's change over ``steps`` SGD steps of method ``name`` (on the CPU).

    ``autocast``: the forward passes under ``torch.autocast(device, dtype)``; with float16 a
    GradScaler (enabled only then) scales the step and steps the optimiser.
    """
    encoder, heads, x, targets = problem(3)
    encoder, heads = encoder.to(device), heads.to(device)
    x, targets = x.to(device), [t.to(device) for t in targets]
    start = [p.detach().clone() for p in encoder.parameters()]
    method = create(name)
    params = [*encoder.parameters(), *heads.parameters(), *method.parameters()]
    optimizer = torch.optim.SGD(params, lr=0.05)
    # A starting scale that does not overflow here: the default 2^16 overflows on the first
    # steps, which the scaler then skips (correct, but no longer the float32 run's steps).
    scaled = autocast and dtype == torch.float16
    scaler = torch.amp.GradScaler(device, init_scale=2.0**10, enabled=scaled)
    for _ in range(steps):
        optimizer.zero_grad()
        with torch.autocast(device, dtype=dtype, enabled=autocast):
            h = encoder(x)
            losses = task_losses(GROUPS, [head(h) for head in heads], targets)
        method.backward(
            losses.float(),
            shared_parameters=list(encoder.parameters()),
            task_parameters=list(heads.parameters()),
            representation=h,
            heads=heads,
            targets=targets,
            # scaler.scale() starts the scaler's bookkeeping and returns its scale
            loss_scale=scaler.scale(torch.ones((), device=device)) if scaled else None,
        )
        scaler.step(optimizer)  # a plain optimizer.step() when the scaler is disabled
        scaler.update()
        if method.needs_after_step:
            with torch.no_grad(), torch.autocast(device, dtype=dtype, enabled=autocast):
                h = encoder(x)
                after = task_losses(GROUPS, [head(h) for head in heads], targets)
            method.after_step(after.float())
    return [(p.detach() - s).cpu() for p, s in zip(encoder.parameters(), start, strict=True)]


def relative_difference(name: str, dtype: torch.dtype, device: str = "cpu") -> float:
    """Return ||change under autocast - float32 change|| / ||float32 change|| of ``short_run``."""
    exact = short_run(name, dtype=dtype, autocast=False, device=device)
    mixed = short_run(name, dtype=dtype, autocast=True, device=device)
    change = torch.cat([d.flatten() for d in exact])
    difference = torch.cat([(m - e).flatten() for m, e in zip(mixed, exact, strict=True)])
    return float(difference.norm() / change.norm())
