"""Numerical helpers shared by the posterior and moment stages of BayesAgg-MTL.

A bounded-jitter Cholesky factorisation (the only matrix factorisation the method needs), the
error it raises, counters of how often it had to repair a matrix, input checks, and the sum over
processes that makes every fit exact under data parallelism.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from torch import Tensor

__all__ = [
    "NumericalError",
    "Reduce",
    "augment",
    "check_finite",
    "cholesky",
    "class_ids",
    "float64_fallbacks",
    "jitter_events",
    "reset_events",
    "summed_over_processes",
]

logger = logging.getLogger("bayesagg")

# How often `cholesky` had to add jitter / fall back to float64 since the last reset.
_EVENTS = {"jitter": 0, "float64": 0}


#: A sum over processes (data parallelism), e.g. ``lambda t: all_reduce_sum(t, group)``.
Reduce = Callable[[Tensor], Tensor]


def summed_over_processes(reduce: Reduce | None, *tensors: Tensor) -> tuple[Tensor, ...]:
    """Return ``tensors`` after ``reduce`` (a sum over processes), in one flattened call.

    The hook that makes the batch posteriors exact under data parallelism: the sums over the
    examples (never the prior terms) are summed over the processes, so every process holds the
    posterior of the global batch (docs/distributed.md).
    """
    if reduce is None:
        return tensors
    flat = reduce(torch.cat([t.reshape(-1) for t in tensors]))
    return tuple(
        part.view_as(t)
        for t, part in zip(tensors, flat.split([t.numel() for t in tensors]), strict=True)
    )


class NumericalError(FloatingPointError):
    """A matrix that should be symmetric positive-definite could not be factorised."""


def jitter_events() -> int:
    """Return how many (call, jitter level) pairs `cholesky` needed since the last reset."""
    return _EVENTS["jitter"]


def float64_fallbacks() -> int:
    """Return how many `cholesky` calls had to factorise in float64 since the last reset."""
    return _EVENTS["float64"]


def reset_events() -> None:
    """Set the jitter and float64-fallback counters back to zero."""
    _EVENTS["jitter"] = 0
    _EVENTS["float64"] = 0


def check_finite(**tensors: Tensor) -> None:
    """Raise ``FloatingPointError`` naming the first argument holding a NaN or an infinity.

    All checks are reduced on the device first, so a GPU caller pays one synchronisation.
    Fast path: a NaN or an infinity makes a tensor's sum non-finite, so one sum per tensor
    clears the common case; only a non-finite sum (a bad value, or finite values whose sum
    overflows) is followed by the exact element-wise test.
    """
    if not tensors:
        return
    if bool(torch.stack([_sum_is_finite(t) for t in tensors.values()]).all()):
        return
    flags = torch.stack([t.isfinite().all() for t in tensors.values()]).tolist()
    for name, ok in zip(tensors, flags, strict=True):
        if not ok:
            raise FloatingPointError(f"{name} contains NaN or infinite values")


def _sum_is_finite(t: Tensor) -> Tensor:
    """Return a 0-d bool: True only if every element of ``t`` is finite (may be False otherwise)."""
    if not (t.is_floating_point() or t.is_complex()):
        return torch.ones((), dtype=torch.bool, device=t.device)
    return t.sum().isfinite()


def class_ids(y: Tensor, batch: int, classes: int) -> Tensor:
    """Return ``y`` as int64 class ids [batch], after checking shape, integrality and range.

    Raises ``ValueError`` (naming y) for a wrong shape, non-integer values or ids outside
    [0, classes - 1]; ``FloatingPointError`` for non-finite float ids.
    """
    if tuple(y.shape) != (batch,):
        raise ValueError(f"y must have shape [B={batch}] (class ids), got {list(y.shape)}")
    if y.dtype == torch.bool or y.is_complex():
        raise TypeError(f"y (class ids) must be an integer tensor, got {y.dtype}")
    if y.is_floating_point():
        check_finite(y=y)
        if not bool((y == y.round()).all()):
            raise ValueError("y (class ids) must hold integers")
    y = y.long()
    outside = (y < 0) | (y >= classes)
    if bool(outside.any()):
        raise ValueError(
            f"y (class ids) must lie in [0, {classes - 1}], found {y[outside][0].item()}"
        )
    return y


def augment(h: Tensor, bias: bool) -> Tensor:
    """Return h~ = [h, 1] (``bias``) or ``h`` itself: the features a linear head with bias sees."""
    if not bias:
        return h
    return torch.cat([h, h.new_ones(*h.shape[:-1], 1)], dim=-1)


def _schedule(max_tries: int) -> list[float]:
    # Relative jitters 0, 1e-10, 1e-8, ..., capped at 1e-2 of the mean diagonal: beyond that the
    # "repair" would change the posterior materially, so we give up instead.
    return [0.0] + [10.0 ** (-10 + 2 * k) for k in range(min(max_tries - 1, 5))]


def _factorise(matrix: Tensor, max_tries: int, what: str) -> tuple[Tensor, Tensor]:
    """Return (factor, failed) over the flattened batch, repairing failures by jitter."""
    factor, info = torch.linalg.cholesky_ex(matrix)
    failed = info != 0
    if not bool(failed.any()):
        return factor, failed
    n = matrix.shape[-1]
    eye = torch.eye(n, dtype=matrix.dtype, device=matrix.device)
    scale = matrix.diagonal(dim1=-2, dim2=-1).abs().mean(dim=-1)
    # A zero matrix has no scale of its own; an absolute jitter still makes it PD.
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    for relative in _schedule(max_tries)[1:]:
        index = failed.nonzero().squeeze(-1)
        jitter = relative * scale[index]
        trial, trial_info = torch.linalg.cholesky_ex(matrix[index] + jitter[:, None, None] * eye)
        _EVENTS["jitter"] += 1
        logger.warning(
            "cholesky of %s: retrying %d of %d matrices with jitter %.0e x mean diagonal",
            what,
            index.numel(),
            matrix.shape[0],
            relative,
        )
        ok = trial_info == 0
        factor[index[ok]] = trial[ok]
        failed[index[ok]] = False
        if not bool(failed.any()):
            break
    return factor, failed


def cholesky(matrix: Tensor, *, what: str, max_tries: int = 6) -> Tensor:
    """Return the lower Cholesky factor of a (batched) symmetric positive-definite ``matrix``.

    Only the lower triangle is read. A matrix that fails is retried with a bounded jitter
    schedule (1e-10, 1e-8, ..., 1e-2 times its mean diagonal; ``max_tries`` attempts in all,
    the first without jitter, at most 6), then in float64 (cast back); each repair is logged on the
    ``bayesagg`` logger and counted (:func:`jitter_events`, :func:`float64_fallbacks`).
    Only the failing matrices of a batch are repaired. ``what`` names the matrix in messages.

    Raises ``NumericalError`` naming ``what`` for non-finite input or when every attempt fails.
    """
    if matrix.ndim < 2 or matrix.shape[-1] != matrix.shape[-2]:
        raise ValueError(f"{what}: expected a (batch of) square matrix, got {tuple(matrix.shape)}")
    if max_tries < 1:
        raise ValueError(f"{what}: max_tries must be >= 1, got {max_tries}")
    # The sum is finite only if every entry is (cheap); the exact test runs only otherwise.
    if not bool(_sum_is_finite(matrix)) and not bool(matrix.isfinite().all()):
        raise NumericalError(f"{what}: matrix contains NaN or infinite values")
    batch_shape = matrix.shape[:-2]
    flat = matrix.reshape(-1, *matrix.shape[-2:])
    factor, failed = _factorise(flat, max_tries, what)
    if bool(failed.any()) and flat.dtype != torch.float64:
        index = failed.nonzero().squeeze(-1)
        _EVENTS["float64"] += 1
        logger.warning(
            "cholesky of %s: %d of %d matrices factorised in float64 after %s failed",
            what,
            index.numel(),
            flat.shape[0],
            flat.dtype,
        )
        trial, trial_failed = _factorise(flat[index].double(), max_tries, what)
        ok = ~trial_failed
        factor[index[ok]] = trial[ok].to(flat.dtype)
        failed[index[ok]] = False
    if bool(failed.any()):
        raise NumericalError(
            f"{what}: not positive-definite ({int(failed.sum())} of {flat.shape[0]} matrices "
            f"failed Cholesky even with jitter up to {_schedule(max_tries)[-1]:.0e} x mean "
            "diagonal and in float64)"
        )
    return factor.reshape(*batch_shape, *matrix.shape[-2:])
