"""GradNorm: learn task weights that equalise the tasks' gradient norms at the last shared layer."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor

from bayesagg.distributed import all_reduce_mean, global_losses, resolve_group
from bayesagg.methods._jacobian import check_not_compiled
from bayesagg.methods.base import StepInputs, StepMethod
from bayesagg.methods.weighting._common import SGD, Adam, backward_objective

__all__ = ["GradNorm"]


class GradNorm(StepMethod):
    """GradNorm: gradient of ``sum_k w_k L_k`` for all parameters, ``w`` tuned by a norm loss.

    Chen, Badrinarayanan, Lee & Rabinovich 2018, "GradNorm: Gradient Normalization for Adaptive
    Loss Balancing in Deep Multitask Networks" (ICML), Sec. 3.2 and Algorithm 1. With W the last
    shared layer, at every step:

        G_k = ||grad_W w_k L_k||_2,   G_bar = mean_k G_k,
        L~_k = L_k(t) / L_k(0),       r_k = L~_k / mean_j L~_j,
        L_grad = sum_k | G_k - G_bar r_k^alpha |          (Eq. 2; the target is a constant)

    The model parameters receive the gradient of ``sum_k w_k L_k`` (the weights of this step);
    the weights receive only ``grad_w L_grad`` and are then renormalised to ``sum_k w_k = K``.

    Choices (the paper leaves them open; no official code was released):

    - "Last shared layer" W is the last ``last_shared_tensors`` tensors of ``shared_parameters``
      (default 1: the last tensor). With ``list(encoder.parameters())`` the last tensor is often
      the last layer's *bias*; pass 2 (weight and bias) or order the list so that the weight
      matrix comes last.
    - The weights are updated *internally* with their own optimiser (``optimizer="adam"`` by
      default, lr 0.025 as the method-parameter learning rate of the Nash-MTL / BayesAgg-MTL code
      bases; ``"sgd"`` for the paper's plain gradient step). They are therefore not returned by
      :meth:`parameters` and ignore the caller's learning-rate schedule.
    - After the update each weight is clamped at ``min_weight`` (default 1e-3) before the
      renormalisation; the paper does not say what to do with a weight pushed below 0, which
      would make the model ascend that task's loss.
    - ``L_k(0)`` is the loss of the first step seen after construction or :meth:`reset`; it must
      be > 0. If every ``L~_k`` is 0 the ratios are undefined and are taken as 1.
    """

    name = "gradnorm"
    space = "loss"
    hyperparameters = ("alpha", "lr", "optimizer", "last_shared_tensors", "min_weight")
    state_fields = ("weights", "initial_losses")

    def __init__(
        self,
        num_tasks: int,
        *,
        alpha: float = 1.5,
        lr: float = 0.025,
        optimizer: Literal["adam", "sgd"] = "adam",
        last_shared_tensors: int = 1,
        min_weight: float = 1e-3,
    ) -> None:
        super().__init__(num_tasks)
        #: Whether the losses' graph was checked for a compiled model (first step only).
        self._graph_checks: dict[str, bool] = {}
        if not (alpha >= 0 and math.isfinite(alpha)):
            raise ValueError(f"gradnorm: alpha must be finite and >= 0, got {alpha}")
        if not (lr > 0 and math.isfinite(lr)):
            raise ValueError(f"gradnorm: lr must be finite and > 0, got {lr}")
        if optimizer not in ("adam", "sgd"):
            raise ValueError(f"gradnorm: optimizer must be 'adam' or 'sgd', got {optimizer!r}")
        if isinstance(last_shared_tensors, bool) or not isinstance(last_shared_tensors, int):
            raise ValueError(
                f"gradnorm: last_shared_tensors must be an int, got {last_shared_tensors!r}"
            )
        if last_shared_tensors < 1:
            raise ValueError(
                f"gradnorm: last_shared_tensors must be >= 1, got {last_shared_tensors}"
            )
        if not 0 < min_weight < 1:
            raise ValueError(f"gradnorm: min_weight must lie in (0, 1), got {min_weight}")
        self.alpha, self.lr, self.optimizer = float(alpha), float(lr), optimizer
        self.last_shared_tensors, self.min_weight = last_shared_tensors, float(min_weight)
        self._opt: Adam | SGD = Adam(self.lr) if optimizer == "adam" else SGD(self.lr)
        self.reset()

    def reset(self) -> None:
        """Back to ``w = 1`` and no initial losses; the weights' optimiser state is cleared."""
        #: The current task weights w (float64, CPU), sum K.
        self.weights = torch.ones(self.num_tasks, dtype=torch.float64)
        self.initial_losses: Tensor | None = None
        self._opt.reset()
        self.last_weights = None

    def _last_layer(self, shared_parameters: Sequence[Tensor]) -> list[Tensor]:
        shared = list(shared_parameters)
        if len(shared) < self.last_shared_tensors:
            raise ValueError(
                f"gradnorm: needs the last {self.last_shared_tensors} shared tensor(s), "
                f"got {len(shared)} shared parameters"
            )
        last = shared[-self.last_shared_tensors :]
        if not all(p.requires_grad for p in last):
            raise ValueError("gradnorm: the last shared tensor(s) must require grad")
        return last

    def task_gradient_norms(self, losses: Tensor, last: Sequence[Tensor]) -> Tensor:
        """Return ``||grad_W L_k||`` for every task [K] (graph kept for the main backward)."""
        group = resolve_group(self.process_group)
        norms = []
        check_not_compiled(losses, last, self._graph_checks)
        for k in range(self.num_tasks):
            grads = torch.autograd.grad(losses[k], last, retain_graph=True, allow_unused=True)
            if group is not None:
                # data parallelism: the norm of the global batch's gradient (mean over processes)
                flat = torch.cat(
                    [
                        (torch.zeros_like(p) if g is None else g.detach()).reshape(-1)
                        for p, g in zip(last, grads, strict=True)
                    ]
                )
                grads = (all_reduce_mean(flat, group),)
            sq = sum(
                (g.detach().double().pow(2).sum() for g in grads if g is not None),
                start=torch.zeros((), dtype=torch.float64, device=losses.device),
            )
            norms.append(sq.sqrt())
        return torch.stack(norms)

    def weight_gradient(self, losses: Tensor, norms: Tensor) -> Tensor:
        """Return ``grad_w L_grad`` [K] at the current weights (Eq. 2, target held constant)."""
        if self.initial_losses is None:
            raise RuntimeError("gradnorm: weight_gradient before the first step set L_k(0)")
        L = losses.detach().double().cpu()
        n = norms.detach().double().cpu()
        ratio_loss = L / self.initial_losses  # L~_k
        mean = ratio_loss.mean()
        r = ratio_loss / mean if mean > 0 else torch.ones_like(ratio_loss)
        w = self.weights.clone().requires_grad_(True)
        with torch.enable_grad():
            G = w * n
            target = (G.mean() * r.pow(self.alpha)).detach()
            l_grad = (G - target).abs().sum()
            (grad,) = torch.autograd.grad(l_grad, w)
        return grad

    def fill_gradients(self, losses: Tensor, inputs: StepInputs) -> None:
        """Accumulate the gradient of ``sum_k w_k L_k``, then update ``w`` from ``L_grad``."""
        shared_parameters, task_parameters, _, _ = inputs
        if not losses.requires_grad:
            raise ValueError(
                "gradnorm: the losses carry no autograd graph (computed under no_grad?)"
            )
        # data parallelism: the loss ratios need the global batch's losses
        losses = global_losses(losses, resolve_group(self.process_group))
        if self.initial_losses is None:
            first = losses.detach().double().cpu()
            bad = (first <= 0).nonzero().flatten().tolist()
            if bad:
                raise ValueError(
                    f"gradnorm: the initial losses L_k(0) must be > 0, tasks {bad}: {first.tolist()}"
                )
            self.initial_losses = first
        last = self._last_layer(shared_parameters)
        norms = self.task_gradient_norms(losses, last)
        w = self.weights.to(device=losses.device, dtype=losses.dtype)
        self.last_weights = w
        grad_w = self.weight_gradient(losses, norms)
        backward_objective((w * losses).sum(), self.name, shared_parameters, task_parameters)
        new = self._opt.step(self.weights, grad_w).clamp_min(self.min_weight)
        self.weights = new * (self.num_tasks / new.sum())

    def state_dict(self) -> dict[str, Any]:
        """Return the declared state and the weights' optimiser state."""
        return {**super().state_dict(), "optimizer": self._opt.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the state from :meth:`state_dict`."""
        super().load_state_dict(state)
        self._opt.load_state_dict(state["optimizer"])
