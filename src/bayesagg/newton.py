"""Damped and multi-step Newton fits of the classification posteriors (beyond the paper).

The paper's classification posterior is *one* undamped Newton step of the summed loss plus the
prior, taken around the head as it is (Sec. 3.2, Eqs. 8-10; :func:`bayesagg.posterior.binary`,
:func:`bayesagg.posterior.multiclass`). On a whole epoch of data with a weak isotropic prior
that one step can land far from the head (1.2-2.1 x ||theta|| on MultiMNIST, measured in the
ablation of docs/bayesagg.md, "The ablation that chose the defaults").
This module iterates the same step, optionally damped:

    theta_{t+1} = theta_t + damping * (newton(theta_t) - theta_t),   t = 0 .. steps - 1,

and returns N(theta_steps, P^-1) with P the precision of the last step (the curvature at
theta_{steps-1}). ``steps=1, damping=1`` is exactly the paper's fit. Several undamped steps
approach the MAP (a Laplace approximation at the mode); ``damping < 1`` shortens every step.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from torch import Tensor

from bayesagg import kronecker, posterior
from bayesagg.kronecker import KroneckerGaussian, KroneckerPrecision
from bayesagg.linalg import Reduce
from bayesagg.posterior import Gaussian

__all__ = ["check_newton", "newton_posterior", "stacked_kron_posterior"]


def check_newton(steps: int, damping: float) -> None:
    """Raise ``ValueError`` unless ``steps`` is a positive integer and ``damping`` in (0, 1]."""
    if isinstance(steps, bool) or int(steps) != steps or steps < 1:
        raise ValueError(f"newton_steps must be a positive integer, got {steps!r}")
    if not 0.0 < damping <= 1.0:
        raise ValueError(f"newton_damping must be in (0, 1], got {damping!r}")


def newton_posterior(
    kind: Literal["binary", "multiclass", "kron"],
    h: Tensor,
    y: Tensor,
    weight: Tensor,
    bias: Tensor,
    prior_mean: Tensor,
    prior_precision: Tensor | KroneckerPrecision,
    *,
    steps: int = 1,
    damping: float = 1.0,
    check: bool = True,
    reduce: Reduce | None = None,
    labelled: Tensor | None = None,
) -> Gaussian | KroneckerGaussian:
    """Return the classification posterior after ``steps`` Newton steps of size ``damping``.

    Arguments as :func:`bayesagg.posterior.binary` / :func:`bayesagg.posterior.multiclass`
    (``reduce``: the sum over processes of data parallelism, applied at every step); the mean
    has their layout ([O or C, D + 1], bias last). ``kind="kron"``: the multiclass posterior
    in Kronecker-factored form (:func:`bayesagg.kronecker.posterior`, ``prior_precision`` a
    :class:`~bayesagg.kronecker.KroneckerPrecision`). ``labelled`` (missing labels): the mask of
    the labelled targets, [B, O] binary or [B] multiclass; every step fits on those only.
    """
    check_newton(steps, damping)
    fits: dict[str, Callable[..., Gaussian | KroneckerGaussian]] = {
        "binary": posterior.binary,
        "multiclass": posterior.multiclass,
        "kron": kronecker.posterior,
    }
    fit = fits[kind]
    # The mask is passed only when there is one: a fit without it runs unchanged.
    options: dict[str, Any] = {"check": check, "reduce": reduce}
    if labelled is not None:
        options["labelled"] = labelled
    if steps == 1 and damping == 1.0:
        return fit(h, y, weight, bias, prior_mean, prior_precision, **options)
    theta = None
    post = None
    for _ in range(int(steps)):
        post = fit(h, y, weight, bias, prior_mean, prior_precision, **options)
        theta = _damped(weight, bias, post.mean, damping)
        weight, bias = theta[..., :-1], theta[..., -1]
    assert post is not None and theta is not None
    return dataclasses.replace(post, mean=theta)


def stacked_kron_posterior(
    h: Tensor,
    y: Tensor,
    weight: Tensor,
    bias: Tensor,
    prior_mean: Tensor,
    prior_precision: Sequence[KroneckerPrecision],
    *,
    steps: int = 1,
    damping: float = 1.0,
    check: bool = True,
    reduce: Reduce | None = None,
    labelled: Tensor | None = None,
) -> list[KroneckerGaussian]:
    """Return :func:`newton_posterior` (``kind="kron"``) of G heads of one shape on the same
    features, fitted together (:func:`bayesagg.kronecker.stacked_posterior`; arguments stacked
    as there)."""
    check_newton(steps, damping)
    theta = None
    posts: list[KroneckerGaussian] = []
    for _ in range(int(steps)):
        posts = kronecker.stacked_posterior(
            h,
            y,
            weight,
            bias,
            prior_mean,
            prior_precision,
            check=check,
            reduce=reduce,
            labelled=labelled,
        )
        if steps == 1 and damping == 1.0:
            return posts
        theta = _damped(weight, bias, torch.stack([post.mean for post in posts]), damping)
        weight, bias = theta[..., :-1], theta[..., -1]
    assert theta is not None
    return [dataclasses.replace(post, mean=theta[i]) for i, post in enumerate(posts)]


def _damped(weight: Tensor, bias: Tensor, mean: Tensor, damping: float) -> Tensor:
    """Return theta + damping (mean - theta), theta = [weight, bias] the point of the step."""
    current = torch.cat([weight, bias[..., None]], dim=-1).to(mean)
    return current + damping * (mean - current)
