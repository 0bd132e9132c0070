"""Aligned-MTL and Aligned-MTL-UB: align the principal components of the task gradients."""

from __future__ import annotations

from typing import ClassVar, Literal, get_args

import numpy as np
import torch
from torch import Tensor

from bayesagg.methods.base import Space
from bayesagg.methods.gramian import Gramian, GramianWeighting

__all__ = ["AlignedMTL", "AlignedMTLUB", "ScaleMode"]

ScaleMode = Literal["min", "median", "rmse"]


class AlignedMTL(GramianWeighting):
    """Independent component alignment (Senushkin et al. 2023, CVPR, Algorithm 1).

    With the Gramian ``G = J J^T = V diag(lambda) V^T`` (eigenvalues above
    ``lambda_max K eps`` kept, eps of the Jacobian's dtype), the aligned gradients are
    ``J^T B`` with ``B = sqrt(sigma) V diag(lambda)^{-1/2} V^T``: the gradient matrix with all
    its singular values set to ``sqrt(sigma)``, its condition number 1 (their Eq. 8-10).
    ``scale_mode`` picks ``sigma``: the smallest kept eigenvalue ("min", default), the median
    ("median", the lower middle value, as ``torch.median`` in the official code) or the mean
    ("rmse"). The direction is the sum of the aligned gradients, ``J^T B 1``, as in the official
    code (torchjd's ``AlignedMTL`` takes their mean, 1/K of this). ``last_weights`` = ``B 1``.

    ``scale_task_gradients`` (official ``scale_decoder_grad``, searched over in the BayesAgg-MTL
    paper): the task-specific parameters receive the gradient of ``sum_t w_t L_t`` with these
    weights instead of the plain sum. A zero Jacobian gives ``B = I`` (as torchjd) and a zero
    direction.
    """

    name = "aligned-mtl"
    space: ClassVar[Space] = "parameters"
    hyperparameters = ("scale_mode", "scale_task_gradients")
    properties = frozenset({"permutation_invariant", "scale_homogeneous"})

    def __init__(
        self,
        num_tasks: int,
        *,
        scale_mode: ScaleMode = "min",
        scale_task_gradients: bool = False,
    ) -> None:
        super().__init__(num_tasks)
        if scale_mode not in get_args(ScaleMode):
            raise ValueError(f"scale_mode must be one of {get_args(ScaleMode)}, got {scale_mode!r}")
        if not isinstance(scale_task_gradients, bool):
            raise TypeError(f"scale_task_gradients must be a bool, got {scale_task_gradients!r}")
        self.scale_mode: ScaleMode = scale_mode
        self.scale_task_gradients = scale_task_gradients

    def weights(self, gramian: Gramian, losses: Tensor | None) -> np.ndarray:
        """Return ``B 1``: the weights of the sum of the aligned task gradients ``J^T B 1``."""
        m = gramian.numpy()
        k = m.shape[0]
        lam, vec = np.linalg.eigh(m)
        keep = lam > lam.max() * k * torch.finfo(gramian.dtype).eps
        if not keep.any():
            b = np.eye(k)
        else:
            lam, vec = lam[keep], vec[:, keep]
            if self.scale_mode == "min":
                sigma = lam.min()
            elif self.scale_mode == "median":
                sigma = np.sort(lam)[(lam.size - 1) // 2]
            else:
                sigma = lam.mean()
            b = np.sqrt(sigma) * (vec / np.sqrt(lam)) @ vec.T
        return b.sum(axis=1)

    def task_weights(self) -> Tensor:
        if self.scale_task_gradients and self.last_weights is not None:
            return self.last_weights
        return torch.ones(self.num_tasks)


class AlignedMTLUB(AlignedMTL):
    """Aligned-MTL on the gradients w.r.t. the shared representation h [B, D] (official "amtlub").

    The Jacobian of the K mean losses w.r.t. h, flattened to B*D as in the official code's
    ``get_model_G_wrt_hrepr``; the summed aligned gradient [B, D] goes through the encoder.
    """

    name = "aligned-mtl-ub"
    space = "representation"
