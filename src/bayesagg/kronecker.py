"""A Kronecker-factored posterior for multiclass heads, and its gradient moments.

The dense multiclass posterior of :func:`bayesagg.posterior.multiclass` keeps a
(C P) x (C P) precision (P = D + 1 weights per class, the bias last): 510 x 510 for a 10-class
head on 50 features, 2.6 G entries for 100 classes on 512 features. This module keeps the same
Gaussian in a structured form whose cost grows as C^3 + P^3 instead of (C P)^3;
docs/bayesagg-math.md, "A Kronecker-factored multiclass posterior", derives every formula.

Precision. The cross-entropy's generalised Gauss-Newton over n examples,
sum_i kron(H_i, h~_i h~_i^T) with H_i = diag(p_i) - p_i p_i^T, is approximated as in K-FAC
(Martens & Grosse 2015, Sec. 3; Ritter et al. 2018 for the Laplace posterior) by
kron(U, A) with U = (1/n) sum_i H_i and A = sum_i h~_i h~_i^T, exact when every example has
the same probability vector. The isotropic prior precision tau I is added exactly: with the
eigendecompositions U = Q_c diag(lambda) Q_c^T and A = Q_f diag(mu) Q_f^T,

    kron(U, A) + tau I = kron(Q_c, Q_f) diag(lambda_i mu_j + tau) kron(Q_c, Q_f)^T,

so solves, the covariance and its blocks need only the two factors' eigendecompositions. A
batch posterior whose prior is last epoch's full-data posterior (paper Sec. 3.1) treats the
epoch's examples and the batch as one data set: U is the count-weighted mean of the two U's,
A their sum (the K-FAC approximation of the union; exact again when all H_i are equal).

Moments. With W_d the d-th column of the weights (one weight per class), the covariance of
W_d, the cross-covariance of W_d with the logits a and the logits' covariance V are all
diagonal in the basis Q_c, with per-example scales; the logit draw a = mu_a + Q_c (sqrt(nu) * z)
makes E[g_d | a] = m_d^T r + c_d^T (Q_c^T r * z), linear in x = [r, Q_c^T r * z] (2C numbers per
node), so the fixed quasi-Monte-Carlo rule of :func:`bayesagg.moments.multiclass` integrates it
with O(N C^2 + D C^2 + D P R) work per example instead of O(C^2 P^2 + N D C^2), R the numerical
rank of the covariance's eigenvalues w [C, P] (a Cauchy-like matrix: a few directions).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from bayesagg.linalg import (
    NumericalError,
    Reduce,
    augment,
    check_finite,
    class_ids,
    summed_over_processes,
)
from bayesagg.moments import QMC_LEVELS, qmc_base_count, qmc_node_counts, qmc_nodes

__all__ = [
    "KroneckerGaussian",
    "KroneckerPrecision",
    "moments",
    "posterior",
    "stacked_moments",
    "stacked_posterior",
]

# Target size (in elements) of each per-block intermediate of the moments (as in moments.py).
_BLOCK_ELEMENTS = 2**18
# Largest intermediate (in elements) built while summing over the examples of a fit.
_CHUNK_ELEMENTS = 2**24


@dataclass(frozen=True)
class KroneckerPrecision:
    """The precision ``kron(classes, features) + tau I`` over a row-major flattened [C, P] head.

    ``classes`` [C, C] is the mean logit Hessian U of ``count`` examples and ``features``
    [P, P] the sum A of their h~ h~^T (:mod:`bayesagg.kronecker`); ``count = 0`` with zero
    factors is the isotropic prior N(., I / tau).
    """

    classes: Tensor
    features: Tensor
    count: float
    tau: float

    @classmethod
    def isotropic(
        cls,
        classes: int,
        width: int,
        gamma: float,
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> KroneckerPrecision:
        """Return the precision I / gamma of the prior N(0, gamma I) of a C x P head."""
        if not gamma > 0:
            raise ValueError(f"prior variance gamma must be positive, got {gamma}")
        if classes < 2 or width < 1:
            raise ValueError(f"need classes >= 2 and width >= 1, got {classes} and {width}")
        return cls(
            classes=torch.zeros(classes, classes, dtype=dtype, device=device),
            features=torch.zeros(width, width, dtype=dtype, device=device),
            count=0.0,
            tau=1.0 / gamma,
        )

    def to(
        self, dtype: torch.dtype, device: torch.device | str | None = None
    ) -> KroneckerPrecision:
        """Return the same precision with its factors in ``dtype`` on ``device``."""
        return KroneckerPrecision(
            self.classes.to(dtype=dtype, device=device),
            self.features.to(dtype=dtype, device=device),
            self.count,
            self.tau,
        )

    def times(self, v: Tensor) -> Tensor:
        """Return the precision times a [C, P] matrix ``v`` (flattened row-major), as [C, P].

        kron(U, A) vec(v) = vec(U v A) for symmetric A, so no (C P) x (C P) matrix is built.
        """
        return self.classes @ v @ self.features + self.tau * v

    def dense(self) -> Tensor:
        """Return the (C P) x (C P) precision (for checks and small heads)."""
        c, p = self.classes.shape[0], self.features.shape[0]
        eye = torch.eye(c * p, dtype=self.classes.dtype, device=self.classes.device)
        return torch.kron(self.classes, self.features) + self.tau * eye


@dataclass(frozen=True)
class KroneckerGaussian:
    """A Gaussian over a C x P head: ``mean`` [C, P] and a :class:`KroneckerPrecision`.

    Built by :meth:`decompose`, which also holds the eigendecompositions of the two factors:
    ``class_basis`` Q_c [C, C], ``feature_basis`` Q_f [P, P] and ``variances`` [C, P], the
    covariance's eigenvalues 1 / (lambda_i mu_j + tau), so that
    Cov = kron(Q_c, Q_f) diag(vec(variances)) kron(Q_c, Q_f)^T.
    """

    mean: Tensor
    precision: KroneckerPrecision
    class_basis: Tensor
    feature_basis: Tensor
    variances: Tensor

    @classmethod
    def decompose(cls, mean: Tensor, precision: KroneckerPrecision) -> KroneckerGaussian:
        """Return the Gaussian N(mean, precision^-1), factorising the precision's factors.

        The factors are positive semi-definite; eigenvalues below 0 (rounding) are set to 0, so
        every variance is at most 1 / tau.
        """
        if not precision.tau > 0:
            raise ValueError(f"the isotropic precision tau must be positive, got {precision.tau}")
        tau = torch.tensor([precision.tau], dtype=mean.dtype, device=mean.device)
        class_basis, feature_basis, variances = _eigen(
            precision.classes[None], precision.features[None], tau
        )
        return cls(mean, precision, class_basis[0], feature_basis[0], variances[0])

    def solve(self, v: Tensor) -> Tensor:
        """Return the precision's inverse times a [C, P] matrix ``v`` (row-major), as [C, P]."""
        return _solve(self.class_basis, self.feature_basis, self.variances, v)

    def covariance(self) -> Tensor:
        """Return the dense (C P) x (C P) covariance (for checks and small heads)."""
        basis = torch.kron(self.class_basis, self.feature_basis)
        return (basis * self.variances.reshape(-1)) @ basis.mT


def _check_prior(prior_mean: Tensor, prior_precision: KroneckerPrecision, c: int, p: int) -> None:
    if tuple(prior_mean.shape) != (c, p):
        raise ValueError(f"prior_mean must have shape [{c}, {p}], got {list(prior_mean.shape)}")
    shapes = (tuple(prior_precision.classes.shape), tuple(prior_precision.features.shape))
    if shapes != ((c, c), (p, p)):
        raise ValueError(
            f"prior_precision factors must have shapes [{c}, {c}] and [{p}, {p}], got "
            f"{list(shapes[0])} and {list(shapes[1])}"
        )
    if prior_precision.count < 0:
        raise ValueError(f"prior_precision.count must be >= 0, got {prior_precision.count}")


def posterior(
    h: Tensor,
    y: Tensor,
    weight: Tensor,
    bias: Tensor,
    prior_mean: Tensor,
    prior_precision: KroneckerPrecision,
    *,
    chunk_size: int | None = None,
    check: bool = True,
    reduce: Reduce | None = None,
    labelled: Tensor | None = None,
) -> KroneckerGaussian:
    """Return the one-Newton-step posterior of a C-class head in Kronecker-factored form.

    The Newton step of :func:`bayesagg.posterior.multiclass` (paper Eqs. 8-10) with the
    generalised Gauss-Newton replaced by its K-FAC factors (module docstring): with
    p_i = softmax(theta_hat h~_i), U_b = sum_i H_i and A_b = sum_i h~_i h~_i^T over the n
    examples, the posterior precision is kron(U, A) + tau I with

        U = (n0 U0 + U_b) / (n0 + n),   A = A0 + A_b,

    (U0, A0, n0, tau) the prior's, and the mean is
    theta_hat - P^-1 (sum_i (p_i - e_yi) h~_i^T + P0 (theta_hat - m0)), P0 the prior's exact
    precision. Arguments and checks as :func:`bayesagg.posterior.multiclass`; ``reduce`` (data
    parallelism) sums the gradient, both factors' data sums and n over the processes.
    ``labelled`` [B] (missing labels): the rows where it is False (class id -100) are dropped
    from the gradient, from both factors and from n.
    """
    if h.ndim != 2 or not h.is_floating_point() or h.shape[0] < 1:
        raise ValueError(f"h must be a floating-point [B >= 1, D] tensor, got {list(h.shape)}")
    b, d = h.shape
    if weight.ndim != 2 or weight.shape[1] != d or weight.shape[0] < 2:
        raise ValueError(f"weight must have shape [C >= 2, D={d}], got {list(weight.shape)}")
    c = weight.shape[0]
    if tuple(bias.shape) != (c,):
        raise ValueError(f"bias must have shape [{c}], got {list(bias.shape)}")
    _check_prior(prior_mean, prior_precision, c, d + 1)
    if labelled is not None and tuple(labelled.shape) != (b,):
        raise ValueError(f"labelled must have shape [{b}], got {list(labelled.shape)}")
    _check_class_ids(y, b)
    return stacked_posterior(
        h,
        y[None],
        weight[None],
        bias[None],
        prior_mean[None],
        [prior_precision],
        chunk_size=chunk_size,
        check=check,
        reduce=reduce,
        labelled=None if labelled is None else labelled[None],
    )[0]


def _check_class_ids(y: Tensor, b: int) -> None:
    """Raise ``ValueError`` unless ``y`` holds one class id per example, [B]."""
    if tuple(y.shape) != (b,):
        raise ValueError(f"y must have shape [B={b}] (class ids), got {list(y.shape)}")


def stacked_posterior(
    h: Tensor,
    y: Tensor,
    weight: Tensor,
    bias: Tensor,
    prior_mean: Tensor,
    prior_precision: Sequence[KroneckerPrecision],
    *,
    chunk_size: int | None = None,
    check: bool = True,
    reduce: Reduce | None = None,
    labelled: Tensor | None = None,
) -> list[KroneckerGaussian]:
    """Return :func:`posterior` of G heads of one shape on the same features, as G posteriors.

    ``y`` [G, B], ``weight`` [G, C, D], ``bias`` [G, C], ``prior_mean`` [G, C, D + 1], one prior
    precision per head, ``labelled`` [G, B] or None. The numbers are those of G calls of
    :func:`posterior` (to rounding); the heads' sums, all-reductions and eigendecompositions
    are stacked (batched) operations, and with every label present and equal prior feature
    factors (an epoch prior fitted on the same features) the heads share one feature factor
    and its eigendecomposition.
    """
    if h.ndim != 2 or not h.is_floating_point() or h.shape[0] < 1:
        raise ValueError(f"h must be a floating-point [B >= 1, D] tensor, got {list(h.shape)}")
    b, d = h.shape
    if weight.ndim != 3 or weight.shape[2] != d or weight.shape[1] < 2:
        raise ValueError(f"weight must have shape [G, C >= 2, D={d}], got {list(weight.shape)}")
    g, c, p = weight.shape[0], weight.shape[1], d + 1
    for name, value, shape in (
        ("y", y, (g, b)),
        ("bias", bias, (g, c)),
        ("prior_mean", prior_mean, (g, c, p)),
    ):
        if tuple(value.shape) != shape:
            raise ValueError(f"{name} must have shape {list(shape)}, got {list(value.shape)}")
    if len(prior_precision) != g:
        raise ValueError(f"need one prior precision per head ({g}), got {len(prior_precision)}")
    for i in range(g):
        _check_prior(prior_mean[i], prior_precision[i], c, p)
    rows_kept = None
    if labelled is not None:
        if tuple(labelled.shape) != (g, b):
            raise ValueError(f"labelled must have shape [{g}, {b}], got {list(labelled.shape)}")
        y = torch.where(labelled, y, torch.zeros_like(y))
        rows_kept = labelled.to(h.dtype)[..., None]  # [G, B, 1]
    y = torch.stack([class_ids(row, b, c) for row in y]) if check else y.long()
    dtype = h.dtype
    weight, bias, prior_mean = weight.to(dtype), bias.to(dtype), prior_mean.to(dtype)
    priors = [prior.to(dtype, h.device) for prior in prior_precision]
    prior_classes = torch.stack([prior.classes for prior in priors])  # [G, C, C]
    prior_features = torch.stack([prior.features for prior in priors])  # [G, P, P]
    if check:
        check_finite(
            h=h,
            weight=weight,
            bias=bias,
            prior_mean=prior_mean,
            prior_classes=prior_classes,
            prior_features=prior_features,
        )
    theta = torch.cat([weight, bias[..., None]], dim=2)  # [G, C, P]
    gradient = torch.zeros(g, c, p, dtype=dtype, device=h.device)
    hessians = torch.zeros(g, c, c, dtype=dtype, device=h.device)
    # With every label present the data's feature factor is the same for every head.
    scatter = torch.zeros(*(() if rows_kept is None else (g,)), p, p, dtype=dtype, device=h.device)
    step = chunk_size or max(1, _CHUNK_ELEMENTS // (g * max(c * c, p)))
    for start in range(0, b, step):
        hc = augment(h[start : start + step], True)  # [b, P]
        prob = torch.softmax(hc @ theta.mT, dim=2)  # [G, b, C]
        residual = prob - F.one_hot(y[:, start : start + step], c).to(dtype)
        if rows_kept is None:
            gradient += residual.mT @ hc
            # sum_i H_i = diag(sum_i p_i) - sum_i p_i p_i^T
            hessians += torch.diag_embed(prob.sum(dim=1)) - prob.mT @ prob
            scatter += hc.mT @ hc
        else:  # the same sums over the labelled rows: weight 0 drops a row
            kept = rows_kept[:, start : start + step]  # [G, b, 1]
            gradient += (residual * kept).mT @ hc
            hessians += torch.diag_embed((prob * kept).sum(dim=1)) - (prob * kept).mT @ prob
            scatter += (hc * kept).mT @ hc
    if rows_kept is None:
        count = torch.full((g,), float(b), dtype=dtype, device=h.device)
    else:
        count = rows_kept.sum(dim=(1, 2))
    gradient, hessians, scatter, count = summed_over_processes(
        reduce, gradient, hessians, scatter, count
    )
    # No labelled example yet, anywhere: the class factor stays the prior's (total 1).
    totals = [
        (prior.count + n) if prior.count + n > 0 else 1.0
        for prior, n in zip(priors, count.tolist(), strict=True)
    ]
    n0 = torch.tensor([prior.count for prior in priors], dtype=dtype, device=h.device)
    total = torch.tensor(totals, dtype=dtype, device=h.device)
    classes = (n0[:, None, None] * prior_classes + hessians) / total[:, None, None]
    classes = 0.5 * (classes + classes.mT)
    shared = rows_kept is None and all(
        torch.equal(prior.features, priors[0].features) for prior in priors[1:]
    )
    features = (prior_features[:1] if shared else prior_features) + scatter
    features = 0.5 * (features + features.mT)
    tau = torch.tensor([prior.tau for prior in priors], dtype=dtype, device=h.device)
    if not bool((tau > 0).all()):
        raise ValueError(f"the isotropic precision tau must be positive, got {tau.tolist()}")
    class_basis, feature_basis, variances = _eigen(classes, features, tau)
    features = features.expand(g, p, p)
    feature_basis = feature_basis.expand(g, p, p)
    moved = theta - prior_mean
    gradient = gradient + prior_classes @ moved @ prior_features + tau[:, None, None] * moved
    mean = theta - _solve(class_basis, feature_basis, variances, gradient)
    return [
        KroneckerGaussian(
            mean[i],
            KroneckerPrecision(classes[i], features[i], totals[i], priors[i].tau),
            class_basis[i],
            feature_basis[i],
            variances[i],
        )
        for i in range(g)
    ]


def _eigen(classes: Tensor, features: Tensor, tau: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Return (Q_c [G, C, C], Q_f [G or 1, P, P], variances [G, C, P]) of G precisions
    kron(classes_g, features_g) + tau_g I (``features`` [1, P, P]: one factor for all heads).

    The factors are positive semi-definite; eigenvalues below 0 (rounding) are set to 0, so
    every variance is at most 1 / tau."""
    try:
        class_values, class_basis = torch.linalg.eigh(classes)
        feature_values, feature_basis = torch.linalg.eigh(features)
    except RuntimeError as err:  # torch.linalg.LinAlgError: non-finite factors
        raise NumericalError(f"Kronecker posterior factors could not be decomposed: {err}") from err
    scales = class_values.clamp_min(0)[:, :, None] * feature_values.clamp_min(0)[:, None, :]
    return class_basis, feature_basis, 1.0 / (scales + tau[:, None, None])


def _solve(class_basis: Tensor, feature_basis: Tensor, variances: Tensor, v: Tensor) -> Tensor:
    """Return the inverse of the precision(s) with these eigendecompositions times v [..., C, P]."""
    rotated = class_basis.mT @ v @ feature_basis
    return class_basis @ (rotated * variances) @ feature_basis.mT


def moments(
    h: Tensor,
    y: Tensor,
    post: KroneckerGaussian,
    *,
    num_samples: int | None = None,
    chunk_size: int | None = None,
    check: bool = True,
    rank_tolerance: float | None = None,
    max_nodes: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Return (mu, var) [B, 1, D] of the cross-entropy gradient g = W^T (softmax(a) - e_y).

    The quantity of :func:`bayesagg.moments.multiclass` for a :class:`KroneckerGaussian`
    (mean [C, D + 1], bias last), with its ``"qmc"`` rule (same nodes and node counts;
    ``num_samples`` fixes the count, even and >= 2C). With Q_c, Q_f and the variances w [C, P]
    of the posterior, and q = Q_f^T h~ (docs/bayesagg-math.md):

    - logit covariance V = Q_c diag(nu) Q_c^T, nu_i = sum_j w_ij q_j^2;
    - Cov(W_d, a) = Q_c diag(kappa_d) Q_c^T, kappa_di = sum_j w_ij Q_f[d, j] q_j;
    - Cov(W_d) = Q_c diag(sigma_d) Q_c^T, sigma_di = sum_j w_ij Q_f[d, j]^2;

    so with a = mu_a + Q_c (sqrt(nu) * z') for z' = Q_c^T z (z a node of the rule),
    r = softmax(a) - e_y and r' = Q_c^T r,
    E[g_d | a] = m_d^T r + sum_i (kappa_di / sqrt(nu_i)) r'_i z'_i and
    Var(g_d | a) = sum_i (sigma_di - kappa_di^2 / nu_i) r'_i^2; mu_d and var_d follow by the
    laws of total expectation and variance over the rule's nodes.

    The variances are used through their truncated singular value decomposition
    w ~ U diag(s) V^T of rank R, so that kappa_d = diag(s) U^T (V^T (q * Q_f[d])) costs
    O(P R) per dimension instead of O(P C) and the rule's node sums are projected onto R
    directions instead of C. ``rank_tolerance`` is the largest discarded singular value
    relative to the largest one; the default, max(C, P) times the dtype's machine epsilon, is
    the matrix's numerical rank (what is discarded is at the level of the rounding of w
    itself), so the result is the untruncated rule's to round-off.

    ``max_nodes`` (even, >= 2C; default: no limit) caps every example's node count, trading
    accuracy for time (the cost grows as the count): the rule stays exact for polynomials of
    degree <= 3 in the logits at any count >= 2C, but wide logits need the rule's larger counts;
    at 100 classes, against 10^6 draws, a cap of 4C kept the errors near 1 % where the rule
    takes 1024-2048 nodes and let the variance's grow to 5-13 % where it takes 8192
    (docs/bayesagg-math.md).
    """
    if h.ndim == 2:
        _check_class_ids(y, h.shape[0])
    mu, var = stacked_moments(
        h,
        y[None],
        [post],
        num_samples=num_samples,
        chunk_size=chunk_size,
        check=check,
        rank_tolerance=rank_tolerance,
        max_nodes=max_nodes,
    )
    return mu, var


def stacked_moments(
    h: Tensor,
    y: Tensor,
    posts: Sequence[KroneckerGaussian],
    *,
    num_samples: int | None = None,
    chunk_size: int | None = None,
    check: bool = True,
    rank_tolerance: float | None = None,
    max_nodes: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Return (mu, var) [B, G, D]: :func:`moments` of G heads of one shape on the same features.

    ``y`` [G, B] holds each head's class ids and ``posts`` its G posteriors, all [C, D + 1]. The
    numbers are those of G calls of :func:`moments` (to rounding); the heads' work is done as
    stacked (batched) operations, so a step with several equal heads pays the fixed cost of
    one call (about a hundred small operations, most of a 10-class head's moments at small
    batches; docs/speed.md). When the examples need several node counts, each count runs once
    for all heads on the examples where any head takes it, unless that wastes more than a
    quarter of the work, in which case each head runs on its own (docs/bayesagg-math.md).
    """
    if h.ndim != 2 or not h.is_floating_point() or h.shape[0] < 1:
        raise ValueError(f"h must be a floating-point [B >= 1, D] tensor, got {list(h.shape)}")
    b, d = h.shape
    if not posts:
        raise ValueError("posts must hold at least one posterior")
    c, p = posts[0].mean.shape
    if p != d + 1:
        raise ValueError(f"the posterior has {p} weights per class, expected D + 1 = {d + 1}")
    if any(tuple(post.mean.shape) != (c, p) for post in posts):
        shapes = [list(post.mean.shape) for post in posts]
        raise ValueError(f"stacked posteriors must share one shape [C, D + 1], got {shapes}")
    g = len(posts)
    if tuple(y.shape) != (g, b):
        raise ValueError(f"y must have shape [G={g}, B={b}], got {list(y.shape)}")
    if num_samples is not None and (num_samples < 2 * c or num_samples % 2):
        raise ValueError(
            f"num_samples of the qmc rule must be even and >= 2 C = {2 * c}, got {num_samples}"
        )
    if max_nodes is not None and (max_nodes < 2 * c or max_nodes % 2):
        raise ValueError(f"max_nodes must be even and >= 2 C = {2 * c}, got {max_nodes}")
    if rank_tolerance is not None and not 0 <= rank_tolerance < 1:
        raise ValueError(f"rank_tolerance must be in [0, 1), got {rank_tolerance}")
    y = torch.stack([class_ids(row, b, c) for row in y]) if check else y.long()
    dtype = h.dtype
    # Contiguous copies: eigh returns column-major bases, and the batched products below
    # against strided operands were measured several times slower.
    mean = torch.stack([post.mean for post in posts]).to(dtype)  # [G, C, P]
    basis = torch.stack([post.class_basis for post in posts]).to(dtype)  # [G, C, C]
    feature_basis = torch.stack([post.feature_basis for post in posts]).to(dtype)  # [G, P, P]
    w = torch.stack([post.variances for post in posts]).to(dtype)  # [G, C, P]
    if check:
        check_finite(h=h, mean=mean, variances=w)
    ht = augment(h, True)
    q = ht @ feature_basis  # [G, B, P]: h~ in each feature basis
    nu = q.square() @ w.mT  # [G, B, C]
    sigma = feature_basis[:, :d].square() @ w.mT  # [G, D, C]
    logit_mean = ht @ mean.mT  # [G, B, C]
    classes, features = _low_rank(w, rank_tolerance)  # [G, R, C] = diag(s) U^T, [G, R, P] = V^T
    # Node counts from the logits' width (the dense rule's), V built a block of rows at a time;
    # not needed when the cap is below the rule's smallest count (every example gets the cap),
    # nor when every example is narrower than the rule's first level. The width squared,
    # max_ij Var(a_i - a_j) / 2 with Var(a_i - a_j) = sum_k nu_k (Q_ik - Q_jk)^2, is at most
    # max_k nu_k (the rows of Q_c are orthonormal) and at most 1/2 sum_k nu_k c_k, c_k the
    # squared range of column k of Q_c, 0 for the softmax-invariant direction of all ones,
    # whose variance is the prior's; the smaller bound decides, with a 1 % margin for rounding.
    first_bound, first_factor = QMC_LEVELS[0]
    if num_samples is None and max_nodes is not None and max_nodes <= qmc_base_count(c):
        counts = torch.full((g, b), max_nodes, dtype=torch.long)
    elif num_samples is None and float(_width_bound(nu, basis).amax()) < 0.99 * first_bound:
        counts = torch.full((g, b), qmc_base_count(c) * first_factor, dtype=torch.long)
    elif num_samples is None:
        counts = torch.empty(g, b, dtype=torch.long)
        rows = max(1, _BLOCK_ELEMENTS // (g * c * c))
        for start in range(0, b, rows):
            scaled = basis[:, None] * nu[:, start : start + rows, None, :]  # [G, n, C, C]
            logit_cov = (scaled @ basis[:, None].mT).reshape(-1, c, c)
            counts[:, start : start + rows] = qmc_node_counts(logit_cov, c).reshape(g, -1).cpu()
    else:
        counts = torch.full((g, b), num_samples, dtype=torch.long)
    if max_nodes is not None:
        counts = counts.clamp_max(max_nodes)
    onehot = F.one_hot(y, c).to(dtype)  # [G, B, C]
    m = mean[:, :, :d].contiguous()  # [G, C, D]
    feature_rows = feature_basis[:, :d].mT.contiguous()  # [G, P, D]
    levels = counts.unique().tolist()
    args = (q, logit_mean, nu, onehot, m, basis, classes, features, feature_rows, sigma)
    if len(levels) == 1:  # one node count for every head and example (the usual case)
        return _transposed(*_level(levels[0], None, args, chunk_size))
    mu = ht.new_empty(g, b, d)
    var = ht.new_empty(g, b, d)
    # Several levels: each level once for all heads on the examples where any head takes it,
    # keeping each head's own rows, when that wastes little work (examples' levels agreeing
    # across heads, as on one batch); otherwise each head on its own, a level at a time.
    at = [counts == count for count in levels]  # [G, B] each
    union = sum(
        count * int(mask.any(dim=0).sum()) * g for count, mask in zip(levels, at, strict=True)
    )
    own = int(counts.sum())
    if union <= 1.25 * own:
        for count, mask in zip(levels, at, strict=True):
            rows = mask.any(dim=0).nonzero().squeeze(-1)
            level_mu, level_var = _level(count, rows.to(h.device), args, chunk_size)
            heads, kept = mask[:, rows].nonzero(as_tuple=True)
            heads, kept = heads.to(h.device), kept.to(h.device)
            targets = rows.to(h.device)[kept]
            mu[heads, targets] = level_mu[heads, kept]
            var[heads, targets] = level_var[heads, kept]
        return _transposed(mu, var)
    for i in range(g):
        head = slice(i, i + 1)
        for count in counts[i].unique().tolist():
            which = (counts[i] == count).nonzero().squeeze(-1).to(h.device)
            mu[head, which], var[head, which] = _level(
                count, which, tuple(a[head] for a in args), chunk_size
            )
    return _transposed(mu, var)


def _transposed(mu: Tensor, var: Tensor) -> tuple[Tensor, Tensor]:
    """Return the [G, B, D] moments as [B, G, D], the variances clamped at 0 (rounding)."""
    return mu.transpose(0, 1), var.clamp_min(0).transpose(0, 1)


def _width_bound(nu: Tensor, basis: Tensor) -> Tensor:
    """Return an upper bound [G, B] on each example's logit width max_ij sqrt(Var(a_i - a_j) / 2)
    from the logit covariance's eigenvalues nu [G, B, C] and eigenvectors ``basis`` [G, C, C]
    (see :func:`stacked_moments`), without building the covariance."""
    ranges = (basis.amax(dim=1) - basis.amin(dim=1)).square()  # [G, C]: c_k per column
    spread = 0.5 * (nu * ranges[:, None, :]).sum(dim=2)
    return torch.minimum(nu.amax(dim=2), spread).clamp_min(0).sqrt()


def _level(
    count: int,
    which: Tensor | None,
    tensors: tuple[Tensor, ...],
    chunk_size: int | None,
) -> tuple[Tensor, Tensor]:
    """Return (mu, var) [G, n, D] of the examples ``which`` (None: all, read by slices) of G
    stacked heads, all integrated with ``count`` nodes, a block of rows at a time; ``tensors``
    are :func:`stacked_moments`'s (q, logit_mean, nu, onehot, m, basis, classes, features,
    feature_rows, sigma)."""
    q, logit_mean, nu, onehot, m, basis, classes, features, feature_rows, sigma = tensors
    g, _, c = nu.shape
    d = m.shape[2]
    rank, p = features.shape[1:]
    n_rows = nu.shape[1] if which is None else which.numel()
    # The nodes enter as Q_c^T z: the logits are then drawn through the symmetric square
    # root Q_c diag(sqrt(nu)) Q_c^T of V, as accurate as the dense rule's Cholesky factor
    # (the eigenbasis root Q_c diag(sqrt(nu)) was measured 3x less accurate on narrow
    # posteriors: it aligns one node axis with the logits' softmax-invariant common shift).
    nodes = qmc_nodes(count, c, dtype=nu.dtype, device=nu.device)
    z = basis.mT @ nodes.mT  # [G, C, N]
    per_example = g * max(c * count, c * d, c * c, rank * p, _direct(c, d, count) * d * count)
    rows = chunk_size or max(1, _BLOCK_ELEMENTS // per_example)
    mu = nu.new_empty(g, n_rows, d)
    var = nu.new_empty(g, n_rows, d)
    for start in range(0, n_rows, rows):
        block = slice(start, start + rows)
        index = block if which is None else which[block]
        n = mu[:, block].shape[1]
        # The cross-covariances' coordinates on the R directions: kappa_d = classes^T k_d,
        # k_d = features (q * Q_f[d]), one [n R, P] x [P, D] product per head.
        scaled = q[:, index, None, :] * features[:, None]  # [G, n, R, P]
        k = (scaled.reshape(g, n * rank, p) @ feature_rows).reshape(g, n, rank, d)
        mu[:, block], var[:, block] = _block(
            z, logit_mean[:, index], nu[:, index], k, onehot[:, index], m, basis, classes, sigma
        )
    return mu, var


def _low_rank(w: Tensor, tolerance: float | None) -> tuple[Tensor, Tensor]:
    """Return (diag(s) U^T [G, R, C], V^T [G, R, P]) of the SVDs of G stacked w [G, C, P], each
    truncated at ``tolerance`` (relative to its largest singular value; default: max(C, P) times
    w's machine epsilon); R is the largest of the G ranks, and a head of lower rank has zero
    directions beyond its own (they add nothing to the moments).

    The decomposition runs in at least float32 (the SVD has no half-precision kernels)."""
    u, s, vh = torch.linalg.svd(w.to(torch.promote_types(w.dtype, torch.float32)), False)
    if tolerance is None:
        tolerance = max(w.shape[1:]) * torch.finfo(w.dtype).eps
    kept = s > tolerance * s[:, :1]  # [G, K]
    rank = max(1, int(kept.sum(dim=1).max()))
    s = torch.where(kept, s, torch.zeros_like(s))
    classes = (s[:, :rank, None] * u[:, :, :rank].mT).to(w.dtype)
    return classes, vh[:, :rank].to(w.dtype).contiguous()


def _direct(c: int, d: int, count: int) -> bool:
    """Whether m_d^T Cov(r) m_d is cheaper from m_d^T r at the N nodes (D C N multiplications)
    than through the nodes' covariance (C^2 N + D C^2): fewer dimensions than classes."""
    return d * c * count < c * c * count + d * c * c


def _block(
    z: Tensor,
    logit_mean: Tensor,
    nu: Tensor,
    k: Tensor,
    onehot: Tensor,
    m: Tensor,
    basis: Tensor,
    classes: Tensor,
    sigma: Tensor,
) -> tuple[Tensor, Tensor]:
    """Return (mu, var) [G, n, D] of n examples of G stacked heads from the rule's nodes
    z [G, C, N] (equal weights; Q_c^T z per head).

    ``k`` [G, n, R, D] holds the cross-covariances kappa_d = classes^T k_d (``classes`` [G, R, C]).
    """
    g, n, c = nu.shape
    d = m.shape[2]
    count = z.shape[2]
    root = nu.sqrt()  # [G, n, C]
    # a = mu_a + (Q_c diag(sqrt(nu))) z' for all examples as one [n C, C] x [C, N] product per
    # head with the means added in the same call (measured 5-12 % faster than scaling the
    # [n, C, N] nodes and a batched product against the broadcast basis).
    scaled = (basis[:, None] * root[:, :, None, :]).reshape(g, n * c, c)
    logits = torch.baddbmm(logit_mean.reshape(g, n * c, 1), scaled, z).reshape(g, n, c, count)
    r = torch.softmax(logits, dim=2).sub_(onehot[..., None])  # [G, n, C, N]
    rotated = basis[:, None].mT @ r  # [G, n, C, N]: r' = Q_c^T r
    second = rotated.square().mean(dim=3)  # [G, n, C]: E[r'_i^2]
    # E[g_d | a] = m_d^T r + k_d^T t with t = classes diag(1 / sqrt(nu)) (r' * z') [R, N]:
    # x = [r, t] has C + R numbers per node instead of 2C.
    project = classes[:, None] / root[:, :, None, :]  # [G, n, R, C]
    t = project @ rotated.mul_(z[:, None])  # [G, n, R, N]; ``rotated`` is not read again
    r_mean = r.mean(dim=3)  # [G, n, C]
    t_mean = t.mean(dim=3)  # [G, n, R]
    r_centred = r.sub_(r_mean[..., None])  # in place: r is not read again
    t_centred = t.sub_(t_mean[..., None])
    cov_tr = t_centred @ r_centred.mT / count  # [G, n, R, C]
    cov_tt = t_centred @ t_centred.mT / count  # [G, n, R, R]
    # E over a of Var(g_d | a) = sigma_d^T E[r'^2] - k_d^T project diag(E[r'^2]) project^T k_d,
    # and its quadratic part shares k_d with the spread's: one [R, R] matrix per example.
    inner = cov_tt - (project * second[:, :, None, :]) @ project.mT  # [G, n, R, R]
    mu = r_mean @ m + (t_mean[:, :, None, :] @ k).squeeze(2)
    # Var over a of E[g_d | a] = m_d^T Cov(r) m_d + 2 m_d^T Cov(r, t) k_d + k_d^T Cov(t) k_d.
    if _direct(c, d, count):  # m_d^T r at every node: D C N instead of C^2 N + D C^2
        spread = (m[:, None].mT @ r_centred).square().mean(dim=3)
    else:
        cov_rr = r_centred @ r_centred.mT / count  # [G, n, C, C]
        # products in place: a fresh [n, C, D] result is freshly faulted-in memory each block
        # (measured a third of the whole moments' time at 100 x 512)
        spread = (cov_rr.reshape(g, n * c, c) @ m).reshape(g, n, c, d).mul_(m[:, None]).sum(2)
    cross = (cov_tr.reshape(g, -1, c) @ m).reshape(g, n, -1, d).mul_(k).sum(dim=2)
    quadratic = (inner @ k).mul_(k).sum(dim=2)
    return mu, spread + 2 * cross + quadratic + second @ sigma.mT
