"""Stage 3 of BayesAgg-MTL: combine the tasks' gradient moments, per example and per dimension.

Paper Eq. 7 and Section 3.3 (docs/bayesagg-math.md, "Stage 3", with the two stages before this
one). For example i, dimension d and task k, with precision lambda_ikd = 1 / max(v_ikd, eps):

    alpha_ikd = lambda_ikd^s / sum_k' lambda_ik'd^s,    g_id = sum_k alpha_ikd mu_ikd.

``s`` in [0, 1] tempers the precisions (s = 0: plain mean over tasks). The weights sum to one
over tasks, so the aggregated gradient is about 1/K of the linear-scalarisation gradient.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["aggregate", "weights"]


def weights(var: Tensor, s: float | Tensor, eps: float = 1e-8) -> Tensor:
    """Return alpha [B, K, D], the precision^s weights of each task (sum to 1 over K).

    ``s`` is a float or a tensor of K per-task powers (regression and classification tasks may
    use different powers). Computed in log space: lambda^s / sum lambda^s is a softmax of
    ``-s * log(max(v, eps))``, which cannot overflow even for eps = 1e-8 and s = 1.
    """
    if var.ndim != 3:
        raise ValueError(f"variances must have shape [B, K, D], got {tuple(var.shape)}")
    if eps <= 0:
        raise ValueError(f"eps must be positive, got {eps}")
    if isinstance(s, Tensor):
        if s.shape != (var.shape[1],):
            raise ValueError(
                f"per-task powers s must have shape [{var.shape[1]}], got {tuple(s.shape)}"
            )
        s = s.to(var).view(1, -1, 1)
    # s * log(lambda) = -s * log(max(v, eps)), built in place in the one new tensor clamp makes.
    scaled_log_precision = var.clamp_min(eps).log_().mul_(-s)
    return torch.softmax(scaled_log_precision, dim=1)


def aggregate(mu: Tensor, var: Tensor, s: float | Tensor, eps: float = 1e-8) -> Tensor:
    """Return the aggregated per-example gradient [B, D] from means and variances [B, K, D]."""
    if mu.shape != var.shape:
        raise ValueError(
            f"means {tuple(mu.shape)} and variances {tuple(var.shape)} differ in shape"
        )
    return (weights(var, s, eps) * mu).sum(dim=1)
