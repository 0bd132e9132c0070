"""The evidence approximation for a regression group's full-data fit: prior and noise from the data.

BayesAgg-MTL's full-data regression fit (paper Sec. 3.1, "Prior selection") is Bayesian linear
regression with a hand-set prior N(0, gamma I) and noise variance sigma^2 = 1. Nothing in the
paper ties either number to the data, and a prior that is too tight shrinks the heads the
encoder is trained against (QM9 ``quick``: docs/bayesagg.md, "Regression fits without a
hand-set prior: the evidence"; the formulas: docs/bayesagg-math.md, "The evidence"). This
module chooses both by type-II maximum likelihood: the prior precision ``alpha`` and the noise
precision ``beta`` that maximise the log marginal likelihood of the targets,

    ln p(y | alpha, beta) = P/2 ln alpha + N/2 ln beta - E(m) - 1/2 ln|A| - N/2 ln 2 pi,
    A = alpha I + beta H^T H,   m = beta A^-1 H^T y,
    E(m) = beta/2 ||y - H m||^2 + alpha/2 ||m||^2

(Bishop, *Pattern Recognition and Machine Learning*, 2006, Sec. 3.5, Eq. 3.86; MacKay,
"Bayesian interpolation", 1992), found by the fixed-point iteration of PRML Eqs. 3.91-3.95 on
the eigenvalues of H^T H: O(P^3) once per fit, then O(P O) per iteration.

Scope: one (alpha, beta) per *group*, shared by its O outputs, maximising the sum of their log
evidences (the outputs are independent given the features). A group's outputs share one
posterior precision in this library (:mod:`bayesagg.posterior`), which keeps every batch
posterior at one Cholesky per group; per-output hyper-parameters would give each output its own
precision. Declare one ``Regression`` group per output to have them. With shared (alpha, beta)
the stationarity conditions are those of PRML Eqs. 3.92 and 3.95 summed over the outputs:

    alpha = O g / sum_o ||m_o||^2,    1/beta = sum_o ||y_o - H m_o||^2 / (O (N - g)),
    g = sum_i beta l_i / (alpha + beta l_i)   (l_i: eigenvalues of H^T H; PRML Eq. 3.91).

Everything is computed from the sufficient statistics H^T H, H^T Y, the per-output sums of
squares y_o^T y_o and N, so a whole epoch is streamed batch by batch (:mod:`bayesagg.prior`).

Missing labels: when the outputs are labelled on different examples, each output o has its own
statistics H_o^T H_o [O, P, P] and count N_o [O], and the summed log evidence is that of one
regression with the block-diagonal H^T H = diag(H_o^T H_o), the stacked H_o^T y_o and
N = sum_o N_o (the log evidence of PRML Eq. 3.86 is additive over the blocks). The same fixed
point then reads

    alpha = sum_o g_o / sum_o ||m_o||^2,    1/beta = sum_o ||y_o - H_o m_o||^2 / sum_o (N_o - g_o),

which is the shared-statistics one above when every H_o^T H_o and N_o are equal. Each block is
eigen-decomposed on its own (O P^3 work, not (O P)^3).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from bayesagg.linalg import NumericalError, cholesky

__all__ = ["EvidenceFit", "log_evidence", "maximise_evidence"]

# A noise variance this many times below the targets' mean square is rounding error: the
# targets are an exact linear function of the features and beta has no finite maximiser.
_MAX_SIGNAL_TO_NOISE = 1e10


@dataclass(frozen=True)
class EvidenceFit:
    """The maximiser of a regression group's evidence and what it implies.

    ``prior_precision`` alpha (the prior is N(0, I / alpha)), ``noise_precision`` beta (noise
    variance 1 / beta), ``effective_parameters`` g of PRML Eq. 3.91 (how many of the P weights
    per output the data determine), ``log_evidence`` summed over the group's outputs at the
    maximiser, and the fixed-point ``iterations`` it took.
    """

    prior_precision: float
    noise_precision: float
    effective_parameters: float
    log_evidence: float
    iterations: int


def _check_statistics(hth: Tensor, hty: Tensor, yty: Tensor, count: float | Tensor) -> None:
    if hth.ndim == 3:  # one block per output (missing labels): per-output counts
        o = hth.shape[0]
        if hth.shape[1] != hth.shape[2] or tuple(hty.shape) != (hth.shape[1], o):
            raise ValueError(
                f"per-output statistics must have shapes hth [O, P, P] and hty [P, O], got "
                f"{list(hth.shape)} and {list(hty.shape)}"
            )
        if not isinstance(count, Tensor) or tuple(count.shape) != (o,):
            raise ValueError(f"per-output statistics need one count per output [O={o}]")
        if tuple(yty.shape) != (o,):
            raise ValueError(f"yty must have shape [O={o}], got {list(yty.shape)}")
        if not bool((count >= 0).all()) or not float(count.sum()) > 0:
            raise ValueError(f"the evidence needs examples, got counts {count.tolist()}")
        return
    if hth.ndim != 2 or hth.shape[0] != hth.shape[1]:
        raise ValueError(f"hth must have shape [P, P], got {list(hth.shape)}")
    if hty.ndim != 2 or hty.shape[0] != hth.shape[0]:
        raise ValueError(f"hty must have shape [P={hth.shape[0]}, O], got {list(hty.shape)}")
    if tuple(yty.shape) != (hty.shape[1],):
        raise ValueError(f"yty must have shape [O={hty.shape[1]}], got {list(yty.shape)}")
    if not count > 0:
        raise ValueError(f"the evidence needs examples, got count={count}")


def log_evidence(
    hth: Tensor,
    hty: Tensor,
    yty: Tensor,
    count: float | Tensor,
    prior_precision: float,
    noise_precision: float,
) -> Tensor:
    """Return ln p(y_o | alpha, beta) [O] of each output (PRML Eq. 3.86) from the statistics.

    ``hth`` H^T H [P, P], ``hty`` H^T Y [P, O], ``yty`` the sums of squares [O], ``count`` N
    (a float for exponentially forgotten sums); the model y_o = H w_o + noise, w_o ~ N(0, I / alpha), noise ~ N(0, I / beta). Computed in
    ``hth``'s dtype (use float64). Per-output statistics (missing labels, module docstring):
    ``hth`` [O, P, P] and ``count`` a tensor [O]; output o's evidence uses its own.
    """
    _check_statistics(hth, hty, yty, count)
    if not (prior_precision > 0 and noise_precision > 0):
        raise ValueError(
            f"precisions must be positive, got alpha={prior_precision}, beta={noise_precision}"
        )
    if hth.ndim == 3:
        assert isinstance(count, Tensor)  # checked above
        return torch.cat(
            [
                _log_evidence(
                    hth[o],
                    hty[:, o : o + 1],
                    yty[o : o + 1],
                    float(count[o]),
                    prior_precision,
                    noise_precision,
                )
                for o in range(hth.shape[0])
            ]
        )
    assert not isinstance(count, Tensor)
    return _log_evidence(hth, hty, yty, count, prior_precision, noise_precision)


def _log_evidence(
    hth: Tensor,
    hty: Tensor,
    yty: Tensor,
    count: float,
    prior_precision: float,
    noise_precision: float,
) -> Tensor:
    """:func:`log_evidence` of statistics shared by the outputs (checked by the caller)."""
    alpha, beta = float(prior_precision), float(noise_precision)
    p = hth.shape[0]
    a = beta * hth + alpha * torch.eye(p, dtype=hth.dtype, device=hth.device)
    factor = cholesky(0.5 * (a + a.mT), what="evidence precision alpha I + beta H^T H")
    m = beta * torch.cholesky_solve(hty.to(hth.dtype), factor)  # [P, O]
    squared_error = yty.to(hth.dtype) - 2 * (m * hty).sum(0) + (m * (hth @ m)).sum(0)
    energy = 0.5 * beta * squared_error + 0.5 * alpha * m.square().sum(0)
    log_det = 2 * factor.diagonal().log().sum()
    return (
        0.5 * p * math.log(alpha)
        + 0.5 * count * math.log(beta)
        - energy
        - 0.5 * log_det
        - 0.5 * count * math.log(2 * math.pi)
    )


def maximise_evidence(
    hth: Tensor,
    hty: Tensor,
    yty: Tensor,
    count: float | Tensor,
    *,
    initial: tuple[float, float] | None = None,
    tolerance: float = 1e-9,
    max_iterations: int = 1000,
    where: str = "evidence",
) -> EvidenceFit:
    """Return the (alpha, beta) shared by a group's outputs that maximise their summed evidence.

    MacKay's fixed point (PRML Eqs. 3.91-3.95, summed over the O outputs; module docstring) on
    the eigen-decomposition of ``hth`` (float64 inside), from ``initial`` (alpha, beta) or
    (1, O N / sum_o y_o^T y_o). Stops when both log-precisions move less than ``tolerance``;
    raises :class:`~bayesagg.linalg.NumericalError` naming ``where`` when the targets carry no
    signal the features can fit (alpha or beta without a finite maximiser: zero targets, or a
    fit with no residual) or when ``max_iterations`` pass without convergence.
    Per-output statistics (missing labels): ``hth`` [O, P, P] and ``count`` a tensor [O] of
    each output's labelled examples; the maximiser of the summed evidence (module docstring).
    """
    _check_statistics(hth, hty, yty, count)
    dtype = torch.float64
    hth64, hty64, yty64 = hth.to(dtype), hty.to(dtype), yty.to(dtype)
    if hth64.ndim == 3:
        # The block-diagonal regression of the module docstring: one output over the O blocks'
        # eigenvalues [O P], each block decomposed on its own.
        assert isinstance(count, Tensor)  # checked above
        counts = count.to(dtype)
        values, vectors = torch.linalg.eigh(0.5 * (hth64 + hth64.mT))  # [O, P], [O, P, P]
        blocks = (vectors.mT @ hty64.mT[:, :, None]).reshape(-1, 1)  # [O P, 1]
        alpha, beta, g, iteration = _fixed_point(
            values.clamp_min(0.0).reshape(-1),
            blocks,
            float(yty64.sum()),
            float(counts.sum()),
            1,
            initial=initial,
            tolerance=tolerance,
            max_iterations=max_iterations,
            where=where,
        )
        value = float(log_evidence(hth64, hty64, yty64, counts, alpha, beta).sum())
        return EvidenceFit(alpha, beta, g, value, iteration)
    assert not isinstance(count, Tensor)
    outputs = hty64.shape[1]
    eigenvalues, vectors = torch.linalg.eigh(0.5 * (hth64 + hth64.mT))
    eigenvalues = eigenvalues.clamp_min(0.0)
    z = vectors.mT @ hty64  # H^T Y in the eigenbasis [P, O]
    alpha, beta, g, iteration = _fixed_point(
        eigenvalues,
        z,
        float(yty64.sum()),
        count,
        outputs,
        initial=initial,
        tolerance=tolerance,
        max_iterations=max_iterations,
        where=where,
    )
    value = float(log_evidence(hth64, hty64, yty64, count, alpha, beta).sum())
    return EvidenceFit(alpha, beta, g, value, iteration)


def _fixed_point(
    eigenvalues: Tensor,
    z: Tensor,
    total: float,
    count: float,
    outputs: int,
    *,
    initial: tuple[float, float] | None,
    tolerance: float,
    max_iterations: int,
    where: str,
) -> tuple[float, float, float, int]:
    """Return (alpha, beta, g, iterations) of MacKay's fixed point on the eigen-statistics.

    ``eigenvalues`` [P] of H^T H, ``z`` [P, O] = H^T Y in its eigenbasis, ``total`` the sum of
    squares of all targets, ``count`` N (PRML Eqs. 3.91-3.95, summed over the O outputs).
    """
    if not total > 0 or not bool(z.abs().sum() > 0):
        raise NumericalError(
            f"{where}: the targets have no component the features can fit (sum of squares "
            f"{total:.3g}); the evidence has no finite maximiser"
        )
    if initial is None:
        alpha, beta = 1.0, outputs * count / total
    else:
        alpha, beta = (float(v) for v in initial)
        if not (alpha > 0 and beta > 0 and math.isfinite(alpha) and math.isfinite(beta)):
            raise ValueError(f"{where}: initial precisions must be positive, got {initial}")
    for iteration in range(1, max_iterations + 1):
        scale = beta / (alpha + beta * eigenvalues)  # [P]
        m = scale[:, None] * z  # posterior means in the eigenbasis
        g = float((scale * eigenvalues).sum())
        weight_norm = float(m.square().sum())
        residual = (
            total - 2 * float((m * z).sum()) + float((eigenvalues[:, None] * m.square()).sum())
        )
        if not (weight_norm > 0 and g > 1e-8 * eigenvalues.numel()):
            raise NumericalError(
                f"{where}: the evidence has no finite maximiser: it grows without bound as the "
                f"prior precision does (iteration {iteration}, alpha {alpha:.3g}, effective "
                f"parameters {g:.3g}): the features carry no linear signal for these targets. "
                "Train the encoder longer before the first fit (warm-up) or use "
                "regression_prior='fixed'"
            )
        if not (residual > 0 and count > g):
            raise NumericalError(
                f"{where}: the evidence has no finite maximiser: the features fit the targets "
                f"exactly (residual {residual:.3g}, N = {count}, effective parameters {g:.3g})"
            )
        new_alpha = outputs * g / weight_norm
        new_beta = outputs * (count - g) / residual
        if not (math.isfinite(new_alpha) and math.isfinite(new_beta) and new_alpha > 0):
            raise NumericalError(
                f"{where}: the fixed point left the finite range at iteration {iteration} "
                f"(alpha {new_alpha:.3g}, beta {new_beta:.3g})"
            )
        if new_beta * total / (outputs * count) > _MAX_SIGNAL_TO_NOISE:
            raise NumericalError(
                f"{where}: the evidence has no finite maximiser: the features fit the targets "
                f"to rounding error (noise variance {1 / new_beta:.3g} against a target mean "
                f"square {total / (outputs * count):.3g} at iteration {iteration})"
            )
        step = max(abs(math.log(new_alpha / alpha)), abs(math.log(new_beta / beta)))
        alpha, beta = new_alpha, new_beta
        if step < tolerance:
            scale = beta / (alpha + beta * eigenvalues)
            g = float((scale * eigenvalues).sum())
            return alpha, beta, g, iteration
    raise NumericalError(
        f"{where}: the evidence fixed point did not converge in {max_iterations} iterations "
        f"(last alpha {alpha:.4g}, beta {beta:.4g}, last relative step {step:.2g})"
    )
