"""Uncertainty weighting: learnable homoscedastic log-variances weigh the task losses."""

from __future__ import annotations

import warnings
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from bayesagg.methods.weighting.loss_weighting import LossWeighting

__all__ = ["UncertaintyWeighting"]


class UncertaintyWeighting(LossWeighting):
    """Uncertainty weighting (UW): gradient of ``sum_k exp(-s_k) L_k + s_k`` for all parameters.

    Kendall, Gal & Cipolla 2018, "Multi-Task Learning Using Uncertainty to Weigh Losses for
    Scene Geometry and Semantics" (CVPR), Eq. 7 / 10, with ``s_k = log sigma_k^2`` learned.
    Convention: this class minimises ``sum_k exp(-s_k) L_k + s_k`` (the common form). Kendall's
    Eq. 7 and the Nash-MTL / IGB / LibMTL code use ``1/(2 sigma^2) L + log sigma``, which is
    exactly half of it; the factor 1/2 scales every gradient alike and is immaterial under Adam
    (up to its epsilon). Kendall's classification form (no 1/2) is the same expression.

    The log-variances ``s`` (initialised at ``init_log_variance``, 0 by default as in the
    official code) are returned by :meth:`parameters`: the caller adds them to its optimiser
    (the reference code bases use Adam with lr 0.025 for them). :meth:`backward` fills their
    ``.grad`` (``1 - exp(-s_k) L_k``) together with the model's. ``last_weights`` are
    ``exp(-s)``. ``reset`` sets ``s`` back to its initial value in place.

    Log-variances left out of the optimiser never move, and UW silently becomes linear
    scalarisation with the fixed weights ``exp(-init_log_variance)``. So ``backward`` watches
    them until they first move: after :attr:`stale_backwards` calls in which ``s`` received a
    non-zero gradient but stayed bitwise unchanged, it warns once, naming the fix.
    """

    name = "uw"
    hyperparameters = ("init_log_variance",)
    #: Backward calls with ``s`` pushed but unchanged after which UW warns that ``s`` is not
    #: being optimised; enough for gradient accumulation over fewer micro-batches than this.
    stale_backwards: ClassVar[int] = 20

    def __init__(
        self,
        num_tasks: int,
        *,
        init_log_variance: float = 0.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__(num_tasks)
        init_log_variance = float(init_log_variance)
        if not torch.isfinite(torch.tensor(init_log_variance)):
            raise ValueError(f"uw: init_log_variance must be finite, got {init_log_variance}")
        self.init_log_variance = init_log_variance
        #: The learnable log-variances s_k = log sigma_k^2, shape [K].
        self.log_variance = nn.Parameter(
            torch.full((num_tasks,), init_log_variance, device=device, dtype=dtype)
        )
        self._warned_not_optimised = False
        self._watch_from_start()

    def _watch_from_start(self) -> None:
        """Forget what was seen of ``s``: it is watched again until it moves."""
        self._moved = False  # s changed between two backward calls: an optimiser holds it
        self._seen: Tensor | None = None  # s at the first of the calls it has not changed in
        self._pushed = False  # some call since then gave s a non-zero gradient
        self._stale = 0  # backward calls since a push in which s has not changed

    def _watch(self, losses: Tensor) -> None:
        """Count the backward calls in which pushed log-variances stayed put; warn once."""
        if self._moved or self._warned_not_optimised:
            return
        s = self.log_variance.detach()
        if self._seen is None:
            self._seen = s.clone()
        elif not torch.equal(s, self._seen):
            self._moved = True
            return
        elif self._pushed:
            self._stale += 1
        # this call's gradient on s is 1 - exp(-s) L: non-zero unless L = exp(s) exactly
        self._pushed = self._pushed or bool((torch.exp(-s) * losses.detach() != 1).any())
        if self._stale >= self.stale_backwards:
            self._warned_not_optimised = True
            warnings.warn(
                f"uw: log_variance has not changed in {self._stale} backward calls although "
                "it receives gradients, so UW is linear scalarisation with fixed weights; add "
                "method.parameters() to the optimiser, e.g. torch.optim.Adam([*model."
                "parameters(), *method.parameters()])",
                UserWarning,
                stacklevel=5,  # _watch, check, fill_gradients, backward: the caller
            )

    def parameters(self) -> list[nn.Parameter]:
        """Return ``[log_variance]`` for the caller's optimiser."""
        return [self.log_variance]

    def reset(self) -> None:
        """Set the log-variances back to their initial value (in place, optimiser keeps them)."""
        with torch.no_grad():
            self.log_variance.fill_(self.init_log_variance)
        self.log_variance.grad = None
        self.last_weights = None
        self._watch_from_start()

    def check(self, losses: Tensor) -> None:
        """Refuse losses on another device than ``s``; watch whether ``s`` is optimised."""
        if self.log_variance.device != losses.device:
            raise ValueError(
                f"uw: log-variances live on {self.log_variance.device}, losses on {losses.device}; "
                "build the method with device=..."
            )
        self._watch(losses)

    def objective(self, losses: Tensor) -> Tensor:
        """Return ``sum_k exp(-s_k) L_k + s_k`` (its gradient also reaches ``s``)."""
        s = self.log_variance
        objective = (torch.exp(-s) * losses + s).sum()
        self.last_weights = torch.exp(-s.detach()).to(losses.dtype)
        return objective

    def state_dict(self) -> dict[str, Any]:
        """Return the base state and the log-variances."""
        return {**super().state_dict(), "log_variance": self.log_variance.detach().clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the log-variances in place (the caller's optimiser keeps the same tensor)."""
        super().load_state_dict(state)
        with torch.no_grad():
            self.log_variance.copy_(torch.as_tensor(state["log_variance"]))
        self._watch_from_start()
