"""Stage 1 of BayesAgg-MTL: the Gaussian posterior over each task group's linear head.

Paper Section 3.1 (regression, Eq. 2) and Section 3.2 (classification, Eqs. 8-10);
docs/bayesagg-math.md, "Stage 1". Every function returns a :class:`Gaussian` holding the mean,
the precision and the precision's lower Cholesky factor (one factorisation per call; the
covariance is derived from the factor on demand).

Layouts (P = D, or D + 1 with the bias last):

=============  ==============  ==============================================
group          mean            precision
=============  ==============  ==============================================
regression     [O, P]          [P, P], shared by all O outputs (same features);
                               [O, P, P] when outputs miss labels (below)
binary         [O, P]          [O, P, P], one block per task (block-diagonal)
multiclass     [C, P]          [C*P, C*P] over the row-major flattened mean
=============  ==============  ==============================================

All functions accept one batch or the whole training set (the epoch-level prior): the
classification precisions are accumulated over chunks of examples so no intermediate grows
beyond about ``2**24`` elements. Computation happens in ``h``'s dtype and on its device.

Missing labels (:mod:`bayesagg.tasks`: a NaN regression target, a binary or multiclass target
-100). Every function takes an optional ``labelled`` mask ([B, O] for regression and binary, [B]
for multiclass; True where the label is present) and then fits each task on its labelled
examples only: the likelihood of paper Eq. 2 / Eq. 8 has no term for an example without a label.
A regression group then has one precision per output (its own H_o^T H_o), in the [O, P, P]
layout of the binary groups. ``labelled=None`` (every label present) runs the computation
without a mask, the same operations as before missing labels were accepted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from bayesagg.linalg import (
    Reduce,
    augment,
    check_finite,
    cholesky,
    class_ids,
    summed_over_processes,
)

__all__ = [
    "Gaussian",
    "binary",
    "effective_parameters",
    "isotropic_prior",
    "multiclass",
    "regression",
    "regression_from_statistics",
    "regression_statistics",
]

# Largest intermediate (in elements) built while accumulating a precision over examples.
_CHUNK_ELEMENTS = 2**24


@dataclass(frozen=True)
class Gaussian:
    """A Gaussian over head weights: ``mean``, ``precision`` and its lower ``cholesky`` factor."""

    mean: Tensor
    precision: Tensor
    cholesky: Tensor

    def covariance(self) -> Tensor:
        """Return the covariance (inverse precision), same shape as ``precision``, from the factor."""
        return torch.cholesky_inverse(self.cholesky)


def isotropic_prior(
    kind: Literal["regression", "binary", "multiclass"],
    outputs: int,
    width: int,
    gamma: float,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> tuple[Tensor, Tensor]:
    """Return (mean, precision) of the prior N(0, gamma I) in the layout of ``kind``.

    ``outputs`` is O (regression, binary) or C (multiclass); ``width`` is P, the number of
    weights per output including the bias. Paper Section 3.1 ("Prior selection"): this is the
    prior of the full-data fit at the end of each epoch. Layouts: regression ([O, P], [P, P]),
    binary ([O, P], [O, P, P]), multiclass ([C, P], [C*P, C*P]).
    """
    if not gamma > 0:
        raise ValueError(f"prior variance gamma must be positive, got {gamma}")
    if outputs < 1 or width < 1:
        raise ValueError(f"outputs and width must be >= 1, got {outputs} and {width}")
    options: dict[str, Any] = {"dtype": dtype, "device": device}
    mean = torch.zeros(outputs, width, **options)
    if kind == "regression":
        return mean, torch.eye(width, **options) / gamma
    if kind == "binary":
        return mean, torch.eye(width, **options).expand(outputs, width, width) / gamma
    if kind == "multiclass":
        return mean, torch.eye(outputs * width, **options) / gamma
    raise ValueError(f"unknown task kind {kind!r}: use 'regression', 'binary' or 'multiclass'")


def _expect(name: str, tensor: Tensor, shape: tuple[int, ...]) -> None:
    if tuple(tensor.shape) != shape:
        raise ValueError(f"{name} must have shape {list(shape)}, got {list(tensor.shape)}")


def _features(h: Tensor) -> tuple[int, int]:
    if h.ndim != 2:
        raise ValueError(f"h must have shape [B, D], got {list(h.shape)}")
    if not h.is_floating_point():
        raise TypeError(f"h must be a floating-point tensor, got {h.dtype}")
    if h.shape[0] < 1:
        raise ValueError("h holds no examples (B = 0)")
    return h.shape[0], h.shape[1]


def _chunk(chunk_size: int | None, per_example: int) -> int:
    if chunk_size is None:
        return max(1, _CHUNK_ELEMENTS // max(per_example, 1))
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    return chunk_size


def effective_parameters(posterior: Gaussian, prior_precision: float) -> Tensor:
    """Return how many weights the data determine, against an isotropic prior of this precision.

    With the prior N(0, I / alpha) the posterior precision is alpha I + A (A = H^T H / sigma^2
    for regression, paper Eq. 2), and the effective number of well-determined parameters is
    sum_i l_i / (l_i + alpha) over the eigenvalues l_i of A (Bishop, *Pattern Recognition and
    Machine Learning*, 2006, Eq. 3.91), i.e. P - alpha tr(precision^-1): near P when the data
    outweigh the prior, near 0 when the prior shrinks every direction to its mean. Computed
    from the Cholesky factor; a batch of precisions [..., P, P] gives one value each.
    """
    if not prior_precision > 0:
        raise ValueError(f"prior_precision must be positive, got {prior_precision}")
    size = posterior.precision.shape[-1]
    trace = posterior.covariance().diagonal(dim1=-2, dim2=-1).sum(-1)
    return size - prior_precision * trace


def regression_from_statistics(
    hth: Tensor,
    hty: Tensor,
    prior_mean: Tensor,
    prior_precision: Tensor,
    *,
    noise_var: float = 1.0,
    check: bool = True,
) -> Gaussian:
    """Return the exact Bayesian-linear-regression posterior from H~^T H~ [P, P] and H~^T Y [P, O].

    P = P0 + H~^T H~ / sigma^2 and m_o = P^-1 (P0 m0_o + H~^T y_o / sigma^2) (paper Eq. 2,
    docs/bayesagg-math.md stage 1); all outputs share P: one Cholesky, one
    multi-right-hand-side solve.
    The sufficient statistics let the epoch-level prior be accumulated batch by batch.
    ``check=False`` skips the finiteness checks of the values (shapes are always checked), for
    callers that validated their inputs already.
    """
    if hth.ndim not in (2, 3) or hth.shape[-1] != hth.shape[-2]:
        raise ValueError(f"hth must have shape [P, P] or [O, P, P], got {list(hth.shape)}")
    p = hth.shape[-1]
    if hty.ndim != 2 or hty.shape[0] != p:
        raise ValueError(f"hty must have shape [P={p}, O], got {list(hty.shape)}")
    o = hty.shape[1]
    if hth.ndim == 3:
        _expect("hth", hth, (o, p, p))
    _expect("prior_mean", prior_mean, (o, p))
    if tuple(prior_precision.shape) not in ((p, p), (o, p, p)):
        raise ValueError(
            f"prior_precision must have shape [{p}, {p}] or [{o}, {p}, {p}], "
            f"got {list(prior_precision.shape)}"
        )
    if not noise_var > 0:
        raise ValueError(f"noise_var must be positive, got {noise_var}")
    dtype = hth.dtype
    hty = hty.to(dtype)
    prior_mean = prior_mean.to(dtype)
    prior_precision = prior_precision.to(dtype)
    if check:
        check_finite(hth=hth, hty=hty, prior_mean=prior_mean, prior_precision=prior_precision)
    if hth.ndim == 3 or prior_precision.ndim == 3:
        return _regression_per_output(hth, hty, prior_mean, prior_precision, noise_var)
    precision = prior_precision + hth / noise_var
    precision = 0.5 * (precision + precision.mT)
    factor = cholesky(precision, what="regression posterior precision")
    rhs = prior_precision @ prior_mean.mT + hty / noise_var  # [P, O]
    mean = torch.cholesky_solve(rhs, factor).mT.contiguous()
    return Gaussian(mean=mean, precision=precision, cholesky=factor)


def _regression_per_output(
    hth: Tensor, hty: Tensor, prior_mean: Tensor, prior_precision: Tensor, noise_var: float
) -> Gaussian:
    """Return the posterior of Eq. 2 with one precision per output, [O, P, P].

    P_o = P0_o + H_o^T H_o / sigma^2 and m_o = P_o^-1 (P0_o m0_o + H_o^T y_o / sigma^2), where
    either statistic or the prior may be shared by the outputs ([P, P]) or per output: the
    layout of a group whose outputs are labelled on different examples (module docstring).
    """
    precision = prior_precision + hth / noise_var  # [O, P, P] by broadcasting
    precision = 0.5 * (precision + precision.mT)
    factor = cholesky(precision, what="regression posterior precision")
    rhs = prior_precision @ prior_mean[:, :, None] + hty.mT[:, :, None] / noise_var  # [O, P, 1]
    mean = torch.cholesky_solve(rhs, factor).squeeze(-1)
    return Gaussian(mean=mean, precision=precision, cholesky=factor)


def regression(
    h: Tensor,
    y: Tensor,
    prior_mean: Tensor,
    prior_precision: Tensor,
    *,
    noise_var: float = 1.0,
    bias: bool = False,
    check: bool = True,
    reduce: Reduce | None = None,
    labelled: Tensor | None = None,
) -> Gaussian:
    """Return the exact regression-head posterior (mean [O, P], precision [P, P] shared).

    Bayesian linear regression (paper Eq. 2, docs/bayesagg-math.md stage 1) on h [B, D]
    (H~ = [H, 1] with ``bias``), targets y [B, O], prior N(prior_mean [O, P],
    prior_precision^-1 [P, P]).
    The paper's code has no bias; ``bias=False`` reproduces it. ``check=False`` skips the
    finiteness checks (shapes are always checked). ``reduce`` (data parallelism): a sum over
    processes applied to the statistics H~^T H~ and H~^T Y of the local examples.
    ``labelled`` [B, O] (missing labels, module docstring): output o is fitted on the rows where
    it is True (the others' targets are ignored, NaN or not) and the precision is [O, P, P];
    a prior precision of that layout (a per-output epoch fit) also gives one.
    """
    b, d = _features(h)
    if y.ndim != 2 or y.shape[0] != b:
        raise ValueError(f"y must have shape [B={b}, O], got {list(y.shape)}")
    p = d + int(bias)
    y = y.to(h.dtype)
    o = y.shape[1]
    _expect("prior_mean", prior_mean, (o, p))
    if tuple(prior_precision.shape) not in ((p, p), (o, p, p)):
        raise ValueError(
            f"prior_precision must have shape [{p}, {p}] or [{o}, {p}, {p}], "
            f"got {list(prior_precision.shape)}"
        )
    if labelled is not None:
        _expect("labelled", labelled, (b, o))
        y = torch.where(labelled, y, torch.zeros_like(y))  # no NaN enters the sums
    if check:
        check_finite(h=h, y=y)
    statistics = regression_statistics(h, y, bias=bias, labelled=labelled)
    hth, hty = summed_over_processes(reduce, *statistics)
    return regression_from_statistics(
        hth, hty, prior_mean, prior_precision, noise_var=noise_var, check=check
    )


def regression_statistics(
    h: Tensor, y: Tensor, *, bias: bool = False, labelled: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Return the sufficient statistics (H~^T H~ [P, P], H~^T Y [P, O]) of h [B, D], y [B, O].

    Sums over examples: add them up batch by batch for the epoch-level full-data fit
    (:func:`regression_from_statistics`). h is not copied into an augmented [B, D+1] matrix.
    ``labelled`` [B, O] (missing labels): the sums of output o run over its labelled rows only,
    so H~^T H~ is per output, [O, P, P]; the targets of the other rows are ignored.
    """
    b, _ = _features(h)
    if y.ndim != 2 or y.shape[0] != b:
        raise ValueError(f"y must have shape [B={b}, O], got {list(y.shape)}")
    y = y.to(h.dtype)
    if labelled is not None:
        return _masked_statistics(h, y, labelled, bias)
    hth = h.mT @ h
    hty = h.mT @ y
    if not bias:
        return hth, hty
    s = h.sum(dim=0)
    n = h.new_tensor([[float(h.shape[0])]])
    hth = torch.cat([torch.cat([hth, s[:, None]], 1), torch.cat([s[None], n], 1)], 0)
    hty = torch.cat([hty, y.sum(dim=0, keepdim=True)], 0)
    return hth, hty


def _masked_statistics(h: Tensor, y: Tensor, labelled: Tensor, bias: bool) -> tuple[Tensor, Tensor]:
    """Return (H_o~^T H_o~ [O, P, P], H~^T Y [P, O]) over each output's labelled rows."""
    _expect("labelled", labelled, tuple(y.shape))
    weight = labelled.to(h.dtype)  # [B, O]: 1 where output o is labelled
    y = torch.where(labelled, y, torch.zeros_like(y))
    hth = (h.mT[None] * weight.mT[:, None, :]) @ h  # [O, D, D]
    hty = h.mT @ y
    if not bias:
        return hth, hty
    s = weight.mT @ h  # [O, D]: the labelled rows' feature sums
    n = weight.sum(dim=0)[:, None, None]  # [O, 1, 1]: the labelled counts
    hth = torch.cat([torch.cat([hth, s[:, :, None]], 2), torch.cat([s[:, None, :], n], 2)], 1)
    hty = torch.cat([hty, y.sum(dim=0, keepdim=True)], 0)
    return hth, hty


def _newton_checks(
    h: Tensor, weight: Tensor, bias: Tensor, outputs_name: str
) -> tuple[int, int, int]:
    b, d = _features(h)
    if weight.ndim != 2 or weight.shape[1] != d:
        raise ValueError(
            f"weight must have shape [{outputs_name}, D={d}], got {list(weight.shape)}"
        )
    o = weight.shape[0]
    _expect("bias", bias, (o,))
    return b, d, o


def binary(
    h: Tensor,
    y: Tensor,
    weight: Tensor,
    bias: Tensor,
    prior_mean: Tensor,
    prior_precision: Tensor,
    *,
    chunk_size: int | None = None,
    check: bool = True,
    reduce: Reduce | None = None,
    labelled: Tensor | None = None,
) -> Gaussian:
    """Return the one-Newton-step posterior of O binary heads (mean [O, P], precision [O, P, P]).

    Second-order Taylor expansion of the summed BCE loss plus the prior around
    theta_hat = [weight, bias] (paper Eqs. 8-10, docs/bayesagg-math.md stage 1): with
    p = sigmoid(a),
        P_o = sum_i p_io (1 - p_io) h~_i h~_i^T + P0_o,
        m_o = theta_hat_o - P_o^-1 (sum_i (p_io - y_io) h~_i + P0_o (theta_hat_o - m0_o)).
    The GGN is the exact Hessian for a linear head. Tasks are independent, so the precision is
    block-diagonal: O blocks of size P = D + 1, built with one batched matmul per chunk of
    ``chunk_size`` examples and factorised with one batched Cholesky. ``check=False`` skips the
    value checks (finiteness, 0/1 targets) for callers that made them already. ``reduce``
    (data parallelism): a sum over processes applied to the data sums of the gradient and GGN.
    ``labelled`` [B, O] (missing labels): the sums of task o run over its labelled rows only
    (the others' targets, -100 or anything, are ignored).
    """
    b, d, o = _newton_checks(h, weight, bias, "O")
    p = d + 1
    if y.shape != (b, o):
        raise ValueError(f"y must have shape [B={b}, O={o}], got {list(y.shape)}")
    _expect("prior_mean", prior_mean, (o, p))
    _expect("prior_precision", prior_precision, (o, p, p))
    dtype = h.dtype
    mask = None
    if labelled is not None:
        _expect("labelled", labelled, (b, o))
        y = torch.where(labelled, y, torch.zeros_like(y))
        mask = labelled.to(dtype)
    y, weight, bias = y.to(dtype), weight.to(dtype), bias.to(dtype)
    prior_mean, prior_precision = prior_mean.to(dtype), prior_precision.to(dtype)
    if check:
        check_finite(
            h=h,
            y=y,
            weight=weight,
            bias=bias,
            prior_mean=prior_mean,
            prior_precision=prior_precision,
        )
        if not bool(((y == 0) | (y == 1)).all()):
            raise ValueError("y (binary targets) must hold only 0 and 1")
    theta = torch.cat([weight, bias[:, None]], dim=1)  # [O, P]
    gradient = torch.zeros(o, p, dtype=dtype, device=h.device)
    ggn = torch.zeros(o, p, p, dtype=dtype, device=h.device)
    step = _chunk(chunk_size, o * p)
    for start in range(0, b, step):
        hc = augment(h[start : start + step], True)  # [b, P]
        prob = torch.sigmoid(hc @ theta.mT)  # [b, O]
        if mask is None:
            gradient += (prob - y[start : start + step]).mT @ hc
            curvature = prob * (1 - prob)
        else:  # an unlabelled (example, task) adds neither gradient nor curvature
            rows = mask[start : start + step]
            gradient += ((prob - y[start : start + step]) * rows).mT @ hc
            curvature = prob * (1 - prob) * rows
        # [O, P, b] @ [b, P]: the O blocks sum_i c_io h~_i h~_i^T in one batched matmul.
        ggn += (curvature.mT[:, None, :] * hc.mT[None]) @ hc
    gradient, ggn = summed_over_processes(reduce, gradient, ggn)
    precision = prior_precision + ggn
    precision = 0.5 * (precision + precision.mT)
    gradient += (prior_precision @ (theta - prior_mean)[:, :, None]).squeeze(-1)
    factor = cholesky(precision, what="binary posterior precision")
    mean = theta - torch.cholesky_solve(gradient[:, :, None], factor).squeeze(-1)
    return Gaussian(mean=mean, precision=precision, cholesky=factor)


def multiclass(
    h: Tensor,
    y: Tensor,
    weight: Tensor,
    bias: Tensor,
    prior_mean: Tensor,
    prior_precision: Tensor,
    *,
    chunk_size: int | None = None,
    check: bool = True,
    reduce: Reduce | None = None,
    labelled: Tensor | None = None,
) -> Gaussian:
    """Return the one-Newton-step posterior of a C-class head (mean [C, P], precision [C*P, C*P]).

    Second-order Taylor expansion of the summed cross-entropy plus the prior around
    theta_hat = [weight, bias] (paper Eqs. 8-10, docs/bayesagg-math.md stage 1), with the full logit
    Hessian H_i = diag(p_i) - p_i p_i^T, so P = sum_i kron(H_i, h~_i h~_i^T) + P0 over the
    row-major flattened [C, P] mean. Built block by block,
        P[(c, d), (c', e)] = sum_i (delta_cc' p_ic - p_ic p_ic') h~_id h~_ie + P0,
    the C(C+1)/2 blocks c >= c' as one batched matmul per chunk of examples (the upper blocks
    are their transposes): never a [B, C*P, C*P] tensor. ``check=False`` skips the value
    checks (finiteness, class-id range; shapes are always checked). ``reduce`` (data
    parallelism): a sum over processes applied to the data sums of the gradient and GGN blocks.
    ``labelled`` [B] (missing labels): the sums run over the rows where it is True only (the
    others' class ids, -100 or anything, are ignored).
    """
    b, d, c = _newton_checks(h, weight, bias, "C")
    if c < 2:
        raise ValueError(f"weight must have at least 2 classes, got {c}")
    p = d + 1
    rows_kept = None
    if labelled is not None:
        _expect("labelled", labelled, (b,))
        y = torch.where(labelled, y, torch.zeros_like(y))
        rows_kept = labelled.to(h.dtype)[:, None]  # [B, 1]
    y = class_ids(y, b, c) if check else y.long()
    _expect("prior_mean", prior_mean, (c, p))
    _expect("prior_precision", prior_precision, (c * p, c * p))
    dtype = h.dtype
    weight, bias = weight.to(dtype), bias.to(dtype)
    prior_mean, prior_precision = prior_mean.to(dtype), prior_precision.to(dtype)
    if check:
        check_finite(
            h=h, weight=weight, bias=bias, prior_mean=prior_mean, prior_precision=prior_precision
        )
    theta = torch.cat([weight, bias[:, None]], dim=1)  # [C, P]
    gradient = torch.zeros(c, p, dtype=dtype, device=h.device)
    # The precision is symmetric: only the C(C+1)/2 class pairs c >= c' are computed, block
    # (c, c') = sum_i (delta_cc' p_ic - p_ic p_ic') h~_i h~_i^T, all in one batched matmul.
    first, second = torch.tril_indices(c, c, device=h.device)
    same = (first == second).to(dtype)
    pair_blocks = torch.zeros(first.numel(), p, p, dtype=dtype, device=h.device)
    step = _chunk(chunk_size, first.numel() * p)
    for start in range(0, b, step):
        hc = augment(h[start : start + step], True)  # [b, P]
        prob = torch.softmax(hc @ theta.mT, dim=1)  # [b, C]
        residual = prob - F.one_hot(y[start : start + step], c).to(dtype)
        curvature = prob[:, first] * (same - prob[:, second])  # [b, pairs]: H_i[c, c']
        if rows_kept is not None:  # an unlabelled row adds neither gradient nor curvature
            residual = residual * rows_kept[start : start + step]
            curvature = curvature * rows_kept[start : start + step]
        gradient += residual.mT @ hc
        pair_blocks += (curvature.mT[:, None, :] * hc.mT[None]) @ hc  # [pairs, P, P]
    gradient, pair_blocks = summed_over_processes(reduce, gradient, pair_blocks)
    # Contiguous, so the [C, P, C, P] view below is valid whatever the prior's strides.
    precision = prior_precision.clone(memory_format=torch.contiguous_format)
    blocks = precision.view(c, p, c, p)
    blocks[first, :, second, :] += pair_blocks
    upper = first != second
    blocks[second[upper], :, first[upper], :] += pair_blocks[upper].mT
    precision = 0.5 * (precision + precision.mT)
    gradient = gradient.reshape(-1) + prior_precision @ (theta - prior_mean).reshape(-1)
    factor = cholesky(precision, what="multiclass posterior precision")
    step_vector = torch.cholesky_solve(gradient[:, None], factor).squeeze(-1)
    mean = theta - step_vector.reshape(c, p)
    return Gaussian(mean=mean, precision=precision, cholesky=factor)
