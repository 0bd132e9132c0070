"""Communication helpers that make BayesAgg-MTL and the registry methods exact under DDP.

Data parallelism splits a global batch of B examples over N processes (ranks), B/N each. The
one-process quantities of the global batch are recovered from per-rank sums with
``torch.distributed`` collectives:

- a mean over the global batch is the mean over ranks of the per-rank means (equal B/N);
- a sum over the global batch (BayesAgg-MTL's ``H~^T H~``, ``H~^T Y``, the Newton step's gradient
  and GGN sums) is the sum over ranks of the per-rank sums.

Every function here is a no-op (returns its input) when the resolved process group is ``None``,
so library code calls them unconditionally. See docs/distributed.md.

Process-group resolution (:func:`resolve_group`): an explicit group is used as given; ``None``
means torch.distributed's default group when it is initialised with more than one process, and
no communication otherwise; ``False`` means no communication even when it is initialised.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "ProcessGroupLike",
    "all_gather_cat",
    "all_reduce_mean",
    "all_reduce_sum",
    "average_gradients",
    "global_losses",
    "rank",
    "resolve_group",
    "world_size",
]

#: What a ``process_group`` argument accepts: a ``ProcessGroup``, ``None`` (auto) or ``False``.
ProcessGroupLike = Any


def resolve_group(process_group: ProcessGroupLike = None) -> Any | None:
    """Return the process group to communicate over, or ``None`` for single-process behaviour.

    ``process_group``: a ``torch.distributed.ProcessGroup`` (used as given); ``None``: the
    default group if ``torch.distributed`` is initialised, else none; ``False``: none.
    A group of one process is returned as ``None`` (nothing to communicate).
    """
    if process_group is False:
        return None
    import torch.distributed as dist

    if process_group is None:
        if not (dist.is_available() and dist.is_initialized()):
            return None
        process_group = dist.group.WORLD
    elif not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(
            "a process_group was given but torch.distributed is not initialised "
            "(call torch.distributed.init_process_group first)"
        )
    if dist.get_world_size(process_group) == 1:
        return None
    return process_group


def world_size(group: Any | None) -> int:
    """Return the number of processes of a resolved group (1 for ``None``)."""
    if group is None:
        return 1
    import torch.distributed as dist

    return dist.get_world_size(group)


def rank(group: Any | None) -> int:
    """Return this process's rank in a resolved group (0 for ``None``)."""
    if group is None:
        return 0
    import torch.distributed as dist

    return dist.get_rank(group)


def all_reduce_sum(tensor: Tensor, group: Any | None) -> Tensor:
    """Return the sum over the group's processes of ``tensor`` (a new tensor, no autograd)."""
    if group is None:
        return tensor
    import torch.distributed as dist

    out = tensor.detach().clone(memory_format=torch.contiguous_format)
    dist.all_reduce(out, op=dist.ReduceOp.SUM, group=group)
    return out


def all_reduce_mean(tensor: Tensor, group: Any | None) -> Tensor:
    """Return the mean over the group's processes of ``tensor`` (a new tensor, no autograd)."""
    if group is None:
        return tensor
    return all_reduce_sum(tensor, group) / world_size(group)


def all_gather_cat(tensor: Tensor, group: Any | None) -> Tensor:
    """Return the ranks' tensors concatenated along dim 0, in rank order (sizes may differ)."""
    if group is None:
        return tensor
    import torch.distributed as dist

    n = world_size(group)
    tensor = tensor.detach().contiguous()
    sizes = torch.zeros(n, dtype=torch.int64, device=tensor.device)
    sizes[rank(group)] = tensor.shape[0]
    dist.all_reduce(sizes, group=group)
    longest = int(sizes.max())
    padded = tensor.new_zeros((longest, *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    parts = [torch.empty_like(padded) for _ in range(n)]
    dist.all_gather(parts, padded, group=group)
    return torch.cat([p[: int(s)] for p, s in zip(parts, sizes.tolist(), strict=True)])


def global_losses(losses: Tensor, group: Any | None) -> Tensor:
    """Return the K task losses with the global batch's values and this rank's gradient.

    Value: the mean over ranks of the per-rank mean losses, i.e. the global batch's mean
    losses (equal per-rank batches). Gradient: that of the local losses. So for any
    differentiable objective f of the losses, the local gradient of ``f(global_losses(L))``
    is ``sum_k f'_k(L_global) grad L_local_k``, whose mean over ranks is exactly the
    one-process gradient of ``f(L_global)``: loss weightings whose weights depend on the losses
    (SI, FAMO, IGBv2, GradNorm, DB-MTL) become exact with one K-float all-reduce.
    """
    if group is None:
        return losses
    total = all_reduce_mean(losses.detach(), group)
    return losses + (total - losses.detach())


def average_gradients(
    parameters: Iterable[Tensor],
    process_group: ProcessGroupLike = None,
    *,
    skip: Sequence[Tensor] = (),
) -> None:
    """Replace every ``.grad`` by its mean over ranks, in one flattened all-reduce.

    ``process_group`` as in :func:`resolve_group` (default: torch.distributed's default group
    when initialised, else nothing to do).

    What DDP's reducer does at the end of ``backward``, done by the caller after
    ``method.backward`` (the registry methods fill ``.grad`` with ``torch.autograd.grad``,
    which DDP's hooks do not see). Parameters whose ``.grad`` is ``None`` are left alone (the
    methods decide that identically on every rank); ``skip`` names tensors whose gradients are
    already reduced (a parameter-space aggregator's shared parameters).
    """
    group = resolve_group(process_group)
    if group is None:
        return
    skipped = {id(t) for t in skip}
    seen: set[int] = set()
    grads: list[Tensor] = []
    for p in parameters:
        if id(p) in seen or id(p) in skipped or p.grad is None:
            continue
        seen.add(id(p))
        grads.append(p.grad)
    if not grads:
        return
    by_dtype: dict[tuple[torch.dtype, torch.device], list[Tensor]] = {}
    for g in grads:
        by_dtype.setdefault((g.dtype, g.device), []).append(g)
    for same in by_dtype.values():
        flat = all_reduce_mean(torch.cat([g.reshape(-1) for g in same]), group)
        for g, part in zip(same, torch.split(flat, [g.numel() for g in same]), strict=True):
            g.copy_(part.view_as(g))
