"""DB-MTL: log losses, then per-task gradients balanced to the largest (EMA) norm."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from bayesagg.distributed import all_reduce_mean, global_losses, resolve_group
from bayesagg.methods._jacobian import check_not_compiled
from bayesagg.methods.base import StepInputs, StepMethod, running_state
from bayesagg.methods.weighting._common import (
    accumulate,
    check_probability,
    unique_parameters,
)

__all__ = ["DBMTL"]


class DBMTL(StepMethod):
    """Dual-balancing MTL: shared direction ``sum_k alpha_k g_k`` of EMA'd log-loss gradients.

    Lin, Ye, Xu, Shi & Zhang 2023, "Dual-Balancing for Multi-Task Learning" (arXiv 2308.12029),
    Sec. 3 / Algorithm 1:

    - loss-scale balancing: each task's loss is replaced by ``log(L_k + eps)``;
    - gradient-magnitude balancing: with ``grad_k`` the gradient of ``log(L_k + eps)`` w.r.t. the
      shared parameters and ``t`` the step count (from 1),

          g_k <- beta_t g_k + (1 - beta_t) grad_k,   beta_t = beta / t^beta_sigma,   g_k(0) = 0
          alpha_k = max_j ||g_j|| / (||g_k|| + 1e-8),   shared direction = sum_k alpha_k g_k.

    Defaults are LibMTL's (the authors' code): ``beta = 0.9``, ``beta_sigma = 0``, ``eps = 1e-8``.
    As there, the EMA starts from zero without bias correction, and the task-specific parameters
    receive the gradient of ``sum_k log(L_k + eps)``. Per-task gradients come from K calls of
    ``torch.autograd.grad``; the EMA buffer is a dense K x P tensor (P = shared parameter count).
    ``last_weights`` are the scales ``alpha``. Stateful (``reset``, ``state_dict``).
    """

    name = "db-mtl"
    space = "parameters"
    hyperparameters = ("beta", "beta_sigma", "eps")
    state_fields = ("step", "buffer")

    def __init__(
        self, num_tasks: int, *, beta: float = 0.9, beta_sigma: float = 0.0, eps: float = 1e-8
    ) -> None:
        super().__init__(num_tasks)
        #: Whether the losses' graph was checked for a compiled model (first step only).
        self._graph_checks: dict[str, bool] = {}
        check_probability(beta, "beta", self.name, closed=True)
        if not (beta_sigma >= 0 and math.isfinite(beta_sigma)):
            raise ValueError(f"db-mtl: beta_sigma must be finite and >= 0, got {beta_sigma}")
        if not (eps >= 0 and math.isfinite(eps)):
            raise ValueError(f"db-mtl: eps must be finite and >= 0, got {eps}")
        self.beta, self.beta_sigma, self.eps = float(beta), float(beta_sigma), float(eps)
        self.reset()

    def reset(self) -> None:
        """Forget the gradient EMA and the step count."""
        self.step = 0
        self.buffer: Tensor | None = None  # [K, P] EMA of the log-loss gradients
        self.last_weights = None

    def fill_gradients(self, losses: Tensor, inputs: StepInputs) -> None:
        """Accumulate the balanced direction into shared, ``grad sum log L`` into task params."""
        shared_parameters, task_parameters, _, _ = inputs
        neg = (losses.detach() + self.eps <= 0).nonzero().flatten().tolist()
        if neg:
            raise ValueError(
                f"db-mtl: log(L + eps) needs L > -eps; tasks {neg}: {losses.detach().tolist()}"
            )
        if not losses.requires_grad:
            raise ValueError("db-mtl: the losses carry no autograd graph (computed under no_grad?)")
        shared = unique_parameters(shared_parameters)
        task = [p for p in unique_parameters(task_parameters) if all(p is not q for q in shared)]
        if not shared:
            raise ValueError("db-mtl: needs at least one shared parameter that requires grad")
        # data parallelism: rows grad log L_k = grad L_k / L_k of the global batch, from the
        # global losses' values here and the mean over processes of the rows below
        group = resolve_group(self.process_group)
        log_losses = torch.log(global_losses(losses, group) + self.eps)
        rows: list[Tensor] = []
        task_grads: list[Tensor | None] = [None] * len(task)
        check_not_compiled(losses, shared + task, self._graph_checks)
        for k in range(self.num_tasks):
            grads = torch.autograd.grad(
                log_losses[k], shared + task, retain_graph=k < self.num_tasks - 1, allow_unused=True
            )
            rows.append(
                torch.cat(
                    [
                        (torch.zeros_like(p) if g is None else g).reshape(-1)
                        for p, g in zip(shared, grads[: len(shared)], strict=True)
                    ]
                )
            )
            for i, g in enumerate(grads[len(shared) :]):
                if g is not None:
                    current = task_grads[i]
                    task_grads[i] = g if current is None else current + g
        G = all_reduce_mean(torch.stack(rows).detach(), group)  # [K, P]
        self.buffer = running_state(
            self.buffer,
            G,
            "db-mtl: shared parameters changed size: EMA buffer {state}, gradients {value}; "
            "call reset() for a new model",
        )
        self.step += 1
        beta_t = self.beta / self.step**self.beta_sigma
        self.buffer = G + beta_t * (self.buffer.to(G) - G)
        norms = torch.linalg.vector_norm(self.buffer, dim=1)
        alpha = norms.max() / (norms + 1e-8)
        direction = alpha @ self.buffer
        self.last_weights = alpha.to(losses.dtype)
        pieces, start = [], 0
        for p in shared:
            pieces.append(direction[start : start + p.numel()].view_as(p))
            start += p.numel()
        accumulate(shared, pieces)
        accumulate(task, task_grads)

    def reduces_shared_gradients(self) -> bool:
        """The direction is computed from the all-reduced K x P gradients (True)."""
        return True
