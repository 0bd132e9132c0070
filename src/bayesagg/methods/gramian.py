"""Gramian weightings: aggregators whose direction is ``w(J J^T, losses) @ J``.

Most gradient aggregators decide how much of each task gradient to take from the K x K
Gramian ``G = J J^T`` of the rows alone (inner products and norms, never single coordinates),
and return ``d = J^T w``. Such a method states only its rule :meth:`GramianWeighting.weights`;
the base does the rest the same way for all of them: Gramian of the detached Jacobian ->
weights -> ``last_weights`` -> ``w @ J`` (:meth:`GramianWeighting.combine`), in parameter or
representation space, on one process or under data parallelism.

Why the split matters:

- data parallelism: the weights depend on J only through G, and G of the global batch is one
  K x K all-reduce, so the rule applied to a square root ``S`` of the global Gramian
  (``S S^T = G``) gives the global weights on every process; each process then applies them
  to its own rows (:mod:`bayesagg.methods._data_parallel`). A method built on this base is exact
  under data parallelism by construction;
- gradients through the direction: the weights are computed on the detached Jacobian (the
  solvers run in NumPy), and ``w @ J`` keeps J's graph, so ``aggregate`` of a Jacobian that
  requires grad differentiates like ``w @ J`` with ``w`` constant.

The rule receives a :class:`Gramian`, which gives ``G`` as a float64 NumPy array
(:meth:`Gramian.numpy`) and also the factor it was built from (the Jacobian, or the square
root under data parallelism). A rule may compute on the factor when that is more accurate
(ConFIG's pseudo-inverse, NTKMTL's row norms), provided the result is unchanged under
``factor -> factor Q`` for any Q with orthonormal rows: then it is a function of G alone.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from bayesagg.methods.base import Aggregator

__all__ = ["ClippedGramianWeighting", "Gramian", "GramianWeighting", "clip_factor"]


class Gramian:
    """The Gramian ``G = A A^T`` of K task gradients, with the factor A [K, N] it came from.

    A is detached: nothing computed from it tracks gradients. The float64 array is computed
    once, on first use, as ``(A @ A^T)`` in A's dtype then converted (the rounding every
    weighting has always used).
    """

    def __init__(self, factor: Tensor) -> None:
        if factor.ndim != 2:
            raise ValueError(f"a Gramian factor must be a matrix [K, N], got {tuple(factor.shape)}")
        self.factor = factor.detach()
        self._array: np.ndarray | None = None

    @property
    def num_tasks(self) -> int:
        """K, the number of task gradients."""
        return self.factor.shape[0]

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the gradients: their precision sets the rank cuts of some rules."""
        return self.factor.dtype

    def numpy(self) -> np.ndarray:
        """Return ``G`` [K, K] as a float64 NumPy array."""
        if self._array is None:
            self._array = (self.factor @ self.factor.T).double().cpu().numpy()
        return self._array


class GramianWeighting(Aggregator):
    """An aggregator whose direction is ``w @ J`` with weights ``w`` computed from ``J J^T``.

    Subclasses implement :meth:`weights`; :meth:`combine` is the one hook for a method that
    post-processes the weighted sum in a rotation-invariant way (the norm clip of
    :class:`ClippedGramianWeighting`).
    """

    data_parallel: ClassVar[bool] = True
    #: Whether :meth:`weights` reads the task losses (MGDA's loss normalisations): then
    #: :meth:`direction` passes them to :meth:`aggregate`.
    uses_losses: ClassVar[bool] = False

    @abstractmethod
    def weights(self, gramian: Gramian, losses: Tensor | None) -> np.ndarray | Tensor:
        """Return the K task weights for this Gramian (and the task losses, if given).

        May update the method's state (stateful rules: MoDo, SDMGrad, Nash-MTL, GradVac).
        ``losses`` are the detached task losses when the caller has them (MGDA's loss
        normalisation), else None.
        """

    def aggregate(self, jacobian: Tensor, losses: Tensor | None = None) -> Tensor:
        """Return the direction [P] of a Jacobian [K, P]: ``combine(weights(J J^T), J)``."""
        self.check_rows(jacobian)
        w = self.weights(Gramian(jacobian), losses)
        weights = torch.as_tensor(w, dtype=jacobian.dtype, device=jacobian.device)
        return self.combine(weights, jacobian)

    def combine(self, weights: Tensor, jacobian: Tensor) -> Tensor:
        """Record ``last_weights`` and return ``weights @ jacobian``."""
        self.last_weights = weights.detach().cpu()
        return weights @ jacobian

    def direction(
        self, jacobian: Tensor, *, losses: Tensor, representation: Tensor | None
    ) -> Tensor:
        """Flatten [K, *S] to [K, P], aggregate (with the detached losses), reshape to S."""
        flat = jacobian.reshape(jacobian.shape[0], -1)
        if self.uses_losses:
            return self.aggregate(flat, losses.detach()).view(jacobian.shape[1:])
        return self.aggregate(flat).view(jacobian.shape[1:])

    def data_parallel_direction(
        self, jacobian: Tensor, losses: Tensor, representation: Tensor, group: Any
    ) -> Tensor:
        """The rule on a square root of the all-reduced Gramian, its weights on the local rows."""
        from bayesagg.methods._data_parallel import square_root_direction

        return square_root_direction(self, jacobian, losses, group)


def clip_factor(norm: float, max_norm: float) -> float:
    """Return the factor that rescales a vector of norm ``norm`` to at most ``max_norm``.

    1 when ``max_norm`` is 0 (no clip) or the vector is short enough, as
    ``torch.nn.utils.clip_grad_norm_`` without its epsilon.
    """
    return max_norm / norm if 0 < max_norm < norm else 1.0


class ClippedGramianWeighting(GramianWeighting):
    """A Gramian weighting whose direction is rescaled to norm ``max_norm`` when longer.

    The official codes of Nash-MTL, FairGrad and NTKMTL clip the combined gradient with
    ``clip_grad_norm_``; the norm of ``w @ J`` is ``sqrt(w G w)``, so the clip keeps the
    method a Gramian weighting. ``last_weights`` are the applied weights (times the factor).
    Subclasses set ``self.max_norm`` (0 disables the clip).
    """

    data_parallel: ClassVar[bool] = True
    max_norm: float = 0.0

    def combine(self, weights: Tensor, jacobian: Tensor) -> Tensor:
        """Return ``weights @ jacobian`` rescaled to norm ``max_norm`` when longer."""
        direction = weights @ jacobian
        factor = clip_factor(float(direction.detach().norm()), self.max_norm)
        self.last_weights = (weights * factor).detach().cpu()
        return direction * factor
