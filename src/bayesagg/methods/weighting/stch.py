"""STCH: the smooth Tchebycheff scalarisation of the (log, nadir-normalised) task losses."""

from __future__ import annotations

import torch
from torch import Tensor

from bayesagg.methods.base import check_losses
from bayesagg.methods.weighting._common import check_positive
from bayesagg.methods.weighting.loss_weighting import LossWeighting

__all__ = ["SmoothTchebycheff"]


class SmoothTchebycheff(LossWeighting):
    """Smooth Tchebycheff scalarisation (Lin, Zhang, Zhang & Liu 2024, ICML, Eq. 9).

    The Tchebycheff scalarisation ``max_i lambda_i (f_i - z_i)`` is smoothed into

        g_mu(f) = mu log sum_i exp(lambda_i (f_i - z_i) / mu),

    differentiable, with gradient ``sum_i softmax_i(lambda (f - z) / mu) lambda_i grad f_i``.
    For multi-task learning (their Sec. 5.3 and official ``STCH_MTL`` code, which LibMTL
    follows) the objectives are the log losses normalised by a nadir point,
    ``f_i - z_i = log(L_i / n_i)``, ``lambda_i = 1``, and the objective is multiplied by K:

    - epochs ``0 .. warmup_epochs - 1``: the sum of the log losses (the SI baseline);
    - epoch ``warmup_epochs``: the same, while averaging the per-step losses into the nadir
      point ``n`` (the mean of that epoch's batch losses);
    - later epochs: ``K mu log sum_i exp(log(L_i / n_i) / mu)``.

    Every parameter (shared and task-specific) receives the gradient of that objective (a
    loss scalarisation). Epochs are counted by :meth:`end_epoch` calls. Defaults as in the
    official code and LibMTL: ``mu=1.0``, ``warmup_epochs=4``. ``last_weights`` are the weights
    on the log losses (ones during warm-up, ``K softmax(log(L / n) / mu)`` after).

    Deviation: the official code adds 1e-20 inside the logs; here the losses must be > 0 (a
    ``ValueError`` names the task otherwise), as for :class:`~bayesagg.methods.weighting.si.
    ScaleInvariant`. Stateful: the epoch counter and the nadir point (:meth:`reset`,
    :meth:`state_dict`).
    """

    name = "stch"
    hyperparameters = ("mu", "warmup_epochs")
    state_fields = ("epoch", "nadir", ("nadir_sum", "_nadir_sum"), ("nadir_count", "_nadir_count"))
    # data parallelism: the objective (and the nadir point) takes the global batch's losses
    # with this process's gradient (bayesagg.distributed.global_losses)
    global_losses = True

    def __init__(self, num_tasks: int, *, mu: float = 1.0, warmup_epochs: int = 4) -> None:
        super().__init__(num_tasks)
        if not mu > 0:
            raise ValueError(f"stch: mu must be positive, got {mu}")
        if int(warmup_epochs) != warmup_epochs or warmup_epochs < 0:
            raise ValueError(
                f"stch: warmup_epochs must be a non-negative integer, got {warmup_epochs}"
            )
        self.mu = float(mu)
        self.warmup_epochs = int(warmup_epochs)
        self.reset()

    def reset(self) -> None:
        """Back to epoch 0, without a nadir point."""
        self.epoch = 0
        self.nadir: Tensor | None = None
        self._nadir_sum: Tensor | None = None
        self._nadir_count = 0

    def end_epoch(self, losses: Tensor | None = None) -> None:
        """Count the epoch; after the nadir epoch, fix the nadir point."""
        if self.epoch == self.warmup_epochs:
            if self._nadir_sum is None or self._nadir_count == 0:
                raise ValueError("stch: the nadir epoch saw no training step")
            self.nadir = self._nadir_sum / self._nadir_count
        self.epoch += 1

    def objective(self, losses: Tensor) -> Tensor:
        """Return the scalar objective of this step (and record the nadir statistics)."""
        check_losses(losses, self.num_tasks)
        check_positive(losses, self.name)
        if self.epoch <= self.warmup_epochs:
            if self.epoch == self.warmup_epochs:
                detached = losses.detach().double()
                self._nadir_sum = (
                    detached if self._nadir_sum is None else self._nadir_sum + detached
                )
                self._nadir_count += 1
            self.last_weights = torch.ones(self.num_tasks, dtype=torch.float64)
            return losses.log().sum()
        assert self.nadir is not None
        scaled = (losses / self.nadir.to(losses)).log() / self.mu
        self.last_weights = (self.num_tasks * torch.softmax(scaled.detach(), 0)).double().cpu()
        return self.num_tasks * self.mu * torch.logsumexp(scaled, dim=0)
