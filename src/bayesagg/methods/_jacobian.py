"""Differentiation for the gradient aggregators: per-task Jacobians and applying a direction.

Kept apart from the aggregators (as in torchjd): an aggregator is a pure function of a K x P
matrix, and this module is the only place that touches autograd.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["accumulate_grad", "check_inputs", "jacobians", "jacobians_auto"]

_log = logging.getLogger(__name__)


def check_inputs(tensors: Sequence[Tensor], what: str) -> list[Tensor]:
    """Return ``tensors`` as a list after checking that each one requires a gradient."""
    tensors = list(tensors)
    for i, t in enumerate(tensors):
        if not isinstance(t, Tensor):
            raise TypeError(f"{what}[{i}] is a {type(t).__name__}, not a tensor")
        if not t.requires_grad:
            raise ValueError(
                f"{what}[{i}] (shape {tuple(t.shape)}) does not require grad; "
                "pass only trainable tensors"
            )
    return tensors


#: Why a method that differentiates the task losses one by one refuses a compiled model.
COMPILED_MODEL = (
    "the losses' graph runs through a model compiled by torch.compile, and this method "
    "differentiates the K task losses through the shared parameters one by one (K backward "
    "passes over one graph); compiled graphs do not support that reliably: with torch 2.14 on "
    "one CPU the second pass raised (default donated buffers) or returned wrong gradients "
    "(without them), on another it was right, so it is refused everywhere. Use the "
    "method's representation form (its '-ub' name: one backward pass through the encoder), a "
    "loss weighting or BayesAgg-MTL, or leave the shared encoder uncompiled"
)


def check_not_compiled(losses: Tensor, inputs: Sequence[Tensor], state: dict[str, bool]) -> None:
    """Raise ``RuntimeError`` if the backward passes from ``losses`` to ``inputs`` would run
    through a ``torch.compile`` graph.

    For methods that take several backward passes over one graph. The walk stops at the inputs
    (a representation's producer, e.g. a compiled encoder, is never traversed). It runs on the
    first call only (``state`` remembers it), so a step costs nothing after.
    """
    if state.get("graph_checked"):
        return
    seen: set[Any] = {t.grad_fn for t in inputs if t.grad_fn is not None}
    stack = [losses.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if "CompiledFunction" in type(node).__name__:
            raise RuntimeError(COMPILED_MODEL)
        stack.extend(next_node for next_node, _ in node.next_functions)
    state["graph_checked"] = True


def jacobians(
    losses: Tensor,
    inputs: Sequence[Tensor],
    *,
    retain_graph: bool,
    batched: bool = True,
) -> list[Tensor]:
    """Return, for every input of shape S, the Jacobian [K, *S] of the K losses w.r.t. it.

    One batched backward pass (``is_grads_batched``, i.e. ``vmap`` over the K unit
    cotangents) when ``batched``; otherwise K backward passes. Inputs that no loss depends on
    get zero rows. ``retain_graph`` keeps the graph for a later backward (the encoder part of
    the graph is never traversed when the inputs are the representation, so it survives anyway).
    """
    k = losses.shape[0]
    if not losses.requires_grad:
        raise ValueError("the losses do not require grad: compute them with the graph attached")
    if batched:
        eye = torch.eye(k, dtype=losses.dtype, device=losses.device)
        grads = torch.autograd.grad(
            losses,
            list(inputs),
            grad_outputs=eye,
            is_grads_batched=True,
            retain_graph=retain_graph,
            allow_unused=True,
            materialize_grads=True,
        )
        return list(grads)
    rows: list[tuple[Tensor, ...]] = []
    for i in range(k):
        rows.append(
            torch.autograd.grad(
                losses[i],
                list(inputs),
                retain_graph=retain_graph or i < k - 1,
                allow_unused=True,
                materialize_grads=True,
            )
        )
    return [torch.stack(per_input) for per_input in zip(*rows, strict=True)]


def jacobians_auto(
    losses: Tensor, inputs: Sequence[Tensor], *, retain_graph: bool, state: dict[str, bool]
) -> list[Tensor]:
    """Return :func:`jacobians`, batched when the graph allows it, remembering the outcome.

    The first call tries the batched pass with the graph retained, so that if ``vmap`` cannot
    batch some backward op of the model (e.g. an RNN kernel) the same graph can still be
    differentiated with K plain passes; the fallback is logged once and kept in ``state``.
    """
    check_not_compiled(losses, inputs, state)
    mode = state.get("batched")
    if mode is None:
        try:
            out = jacobians(losses, inputs, retain_graph=True, batched=True)
        except RuntimeError as err:
            _log.warning(
                "batched Jacobian (is_grads_batched) failed (%s); using %d backward passes",
                str(err).splitlines()[0],
                losses.shape[0],
            )
            state["batched"] = False
            return jacobians(losses, inputs, retain_graph=retain_graph, batched=False)
        state["batched"] = True
        return out
    return jacobians(losses, inputs, retain_graph=retain_graph, batched=mode)


def accumulate_grad(tensors: Sequence[Tensor], flat: Tensor) -> None:
    """Add the flat vector ``flat`` into the ``.grad`` of ``tensors`` (in order), like backward."""
    sizes = [t.numel() for t in tensors]
    if flat.numel() != sum(sizes):
        raise ValueError(f"direction has {flat.numel()} entries, parameters have {sum(sizes)}")
    for t, g in zip(tensors, torch.split(flat, sizes), strict=True):
        g = g.view_as(t).to(t.dtype)
        if t.grad is None:
            t.grad = g.clone()
        else:
            t.grad.add_(g)
