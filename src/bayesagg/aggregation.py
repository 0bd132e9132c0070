"""Stage 3 of BayesAgg-MTL: combine the tasks' gradient moments, per example and per dimension.

Paper Eq. 7 and Section 3.3 (docs/bayesagg-math.md, "Stage 3", with the two stages before this
one). For example i, dimension d and task k, with precision lambda_ikd = 1 / max(v_ikd, eps):

    alpha_ikd = lambda_ikd^s / sum_k' lambda_ik'd^s,    g_id = sum_k alpha_ikd mu_ikd.

``s`` in [0, 1] tempers the precisions (s = 0: plain mean over tasks). The weights sum to one
over tasks, so the aggregated gradient is about 1/K of the linear-scalarisation gradient.

Missing labels: Eq. 7 combines the gradients of the tasks that have a loss on example i. A task
without a label there has no loss, hence no gradient, so the sums over k' run over the tasks
present (``present`` [B, K]); an absent task gets weight 0, and an example with no label at all
gets weight 0 everywhere (it sends no gradient; no 0/0 is formed).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["aggregate", "weights"]


def weights(
    var: Tensor, s: float | Tensor, eps: float = 1e-8, present: Tensor | None = None
) -> Tensor:
    """Return alpha [B, K, D], the precision^s weights of each task (sum to 1 over K).

    ``s`` is a float or a tensor of K per-task powers (regression and classification tasks may
    use different powers). Computed in log space: lambda^s / sum lambda^s is a softmax of
    ``-s * log(max(v, eps))``, which cannot overflow even for eps = 1e-8 and s = 1.
    ``present`` [B, K] bool (missing labels, module docstring): the weights are normalised over
    the tasks present on each example, 0 for the others and 0 on an example with none; the
    variances of absent entries must still be finite (they are not used).
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
    if present is None:
        return torch.softmax(scaled_log_precision, dim=1)
    if tuple(present.shape) != tuple(var.shape[:2]):
        raise ValueError(
            f"present must have shape {list(var.shape[:2])} (examples, tasks), "
            f"got {list(present.shape)}"
        )
    return _present_softmax(scaled_log_precision, present[:, :, None])


def _present_softmax(logits: Tensor, present: Tensor) -> Tensor:
    """Return the softmax over dim 1 of ``logits`` restricted to ``present``: 0 where absent,
    0 on a row with nothing present (every intermediate finite)."""
    floor = torch.finfo(logits.dtype).min
    top = torch.where(present, logits, torch.full_like(logits, floor)).amax(dim=1, keepdim=True)
    top = torch.where(present.any(dim=1, keepdim=True), top, torch.zeros_like(top))
    # Absent entries get exp(-inf) = 0 exactly; the present maximum gets exp(0) = 1, so a row
    # with a task present sums to at least 1 and one without sums to 0 (divided by 1 instead).
    shifted = torch.where(present, logits - top, torch.full_like(logits, float("-inf")))
    unnormalised = shifted.exp()
    total = unnormalised.sum(dim=1, keepdim=True)
    return unnormalised / torch.where(total > 0, total, torch.ones_like(total))


def aggregate(
    mu: Tensor, var: Tensor, s: float | Tensor, eps: float = 1e-8, present: Tensor | None = None
) -> Tensor:
    """Return the aggregated per-example gradient [B, D] from means and variances [B, K, D].

    ``present`` [B, K]: only the tasks present on an example enter its gradient (the absent
    entries of ``mu`` and ``var`` must be finite; they are not used).
    """
    if mu.shape != var.shape:
        raise ValueError(
            f"means {tuple(mu.shape)} and variances {tuple(var.shape)} differ in shape"
        )
    if present is None:
        return (weights(var, s, eps) * mu).sum(dim=1)
    alpha = weights(var, s, eps, present)
    return (alpha * torch.where(present[:, :, None], mu, torch.zeros_like(mu))).sum(dim=1)
