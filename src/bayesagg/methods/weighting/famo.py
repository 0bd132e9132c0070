"""FAMO: fast adaptive multitask optimisation, task logits updated from the loss decrease."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from bayesagg.distributed import all_reduce_mean, global_losses, resolve_group
from bayesagg.methods.base import StepInputs, StepMethod, check_losses
from bayesagg.methods.weighting._common import (
    Adam,
    accumulate,
    clone_or_none,
    unique_parameters,
)

__all__ = ["FAMO"]


class FAMO(StepMethod):
    """FAMO: gradient of ``sum_k z_k log(L_k - m_k + eps) / c`` with ``z = softmax(xi)``.

    Liu, Liu, Jin, Stone & Liu 2023, "FAMO: Fast Adaptive Multitask Optimization" (NeurIPS),
    Sec. 3 and Algorithm 1. With ``D_k = L_k - m_k + eps`` (``m`` = ``min_losses``, 0 by
    default) and ``c = sum_k z_k / D_k`` (a constant), every parameter receives

        grad = sum_k (z_k / (c D_k)) grad L_k          (weights z/(cD) sum to 1)

    After the optimiser step the caller passes the same batch's new losses to
    :meth:`after_step` (``needs_after_step = True``), which updates the logits with

        delta_k = log D_k(t) - log D_k(t+1),   grad_xi = J_softmax(xi)^T delta
        xi <- Adam(xi, grad_xi + gamma xi)       (gamma: the logit regularisation)

    Defaults are the official code's: logits ``xi = 0``, Adam (betas 0.9/0.999, eps 1e-8) with
    ``lr = 0.025`` and coupled weight decay ``gamma = 0.01`` (its command-line default; its QM9
    script uses 1e-3), ``eps = 1e-8``.

    Deviation note, gradient clipping: the official benchmark trainers call
    ``clip_grad_norm_(shared, max_norm=1)`` *before* ``loss.backward()``, where it does nothing;
    only the standalone ``famo.py`` clips after. ``max_norm`` here defaults to 0 (off, the
    benchmark behaviour); with ``max_norm > 0`` this step's shared-parameter gradient (not what
    ``.grad`` held before) is clipped to that total norm, as ``clip_grad_norm_`` would.

    ``last_weights`` is ``z`` (what the official code logs), not the effective ``z / (c D)``.
    The logits and their Adam state live on CPU in float64; :meth:`parameters` is empty.

    Forgetting :meth:`after_step` would silently turn FAMO into a fixed weighting (the logits
    never move; at their initial zeros each loss is weighted by ``1 / D_k``, normalised): a
    ``backward`` while the previous one still awaits its ``after_step`` warns once, naming
    the fix.
    """

    name = "famo"
    space = "loss"
    needs_after_step = True
    hyperparameters = ("lr", "gamma", "eps", "min_losses", "max_norm")
    state_fields = ("logits",)

    def __init__(
        self,
        num_tasks: int,
        *,
        lr: float = 0.025,
        gamma: float = 0.01,
        eps: float = 1e-8,
        min_losses: Sequence[float] | Tensor | None = None,
        max_norm: float = 0.0,
    ) -> None:
        super().__init__(num_tasks)
        if not (lr > 0 and math.isfinite(lr)):
            raise ValueError(f"famo: lr must be finite and > 0, got {lr}")
        if not (gamma >= 0 and math.isfinite(gamma)):
            raise ValueError(f"famo: gamma must be finite and >= 0, got {gamma}")
        if not (eps >= 0 and math.isfinite(eps)):
            raise ValueError(f"famo: eps must be finite and >= 0, got {eps}")
        if not (max_norm >= 0 and math.isfinite(max_norm)):
            raise ValueError(f"famo: max_norm must be finite and >= 0 (0 = off), got {max_norm}")
        self.lr, self.gamma, self.eps, self.max_norm = (
            float(lr),
            float(gamma),
            float(eps),
            float(max_norm),
        )
        self.min_losses = self._check_min_losses(min_losses)
        self._opt = Adam(self.lr, weight_decay=self.gamma)
        self._warned_no_after_step = False
        self.reset()

    def _check_min_losses(self, min_losses: Sequence[float] | Tensor | None) -> Tensor:
        if min_losses is None:
            return torch.zeros(self.num_tasks, dtype=torch.float64)
        m = torch.as_tensor(min_losses, dtype=torch.float64).detach().cpu().clone()
        if m.shape != (self.num_tasks,):
            raise ValueError(
                f"famo: min_losses must have shape [{self.num_tasks}], got {tuple(m.shape)}"
            )
        if not torch.isfinite(m).all():
            raise ValueError(f"famo: min_losses must be finite, got {m.tolist()}")
        return m

    def set_min_losses(self, min_losses: Sequence[float] | Tensor) -> None:
        """Set the per-task lower bounds ``m_k`` of the losses (the paper's ``L*_k``)."""
        self.min_losses = self._check_min_losses(min_losses)

    def reset(self) -> None:
        """Logits back to 0, Adam state and the pending losses cleared."""
        #: The task logits xi (float64, CPU); the weights are softmax(xi).
        self.logits = torch.zeros(self.num_tasks, dtype=torch.float64)
        self._opt.reset()
        self._pending: Tensor | None = None  # D(t) of the last backward, awaiting after_step
        self.last_weights = None

    def _gaps(self, losses: Tensor, when: str) -> Tensor:
        D = losses - self.min_losses.to(device=losses.device, dtype=losses.dtype) + self.eps
        bad = (D.detach() <= 0).nonzero().flatten().tolist()
        if bad:
            raise ValueError(
                f"famo: {when}: losses must exceed min_losses - eps; tasks {bad} have "
                f"losses {losses.detach()[bad].tolist()} vs min_losses {self.min_losses[bad].tolist()}"
            )
        return D

    def fill_gradients(self, losses: Tensor, inputs: StepInputs) -> None:
        """Accumulate the gradient of the FAMO objective and remember ``D(t)`` for the update."""
        shared_parameters, task_parameters, _, _ = inputs
        if self._pending is not None:
            self._warn_no_after_step()
        # data parallelism: the objective's log-gaps need the global batch's losses
        group = resolve_group(self.process_group)
        losses = global_losses(losses, group)
        D = self._gaps(losses, "backward")
        z = torch.softmax(self.logits, dim=0).to(device=losses.device, dtype=losses.dtype)
        c = (z / D.detach()).sum()
        objective = (z * D.log()).sum() / c
        self.last_weights = z
        self._pending = D.detach().double().cpu()
        shared = unique_parameters(shared_parameters)
        task = [p for p in unique_parameters(task_parameters) if all(p is not q for q in shared)]
        params = shared + task
        if not params:
            return
        if not objective.requires_grad:
            raise ValueError("famo: the losses carry no autograd graph (computed under no_grad?)")
        grads: list[Tensor | None] = list(torch.autograd.grad(objective, params, allow_unused=True))
        if self.max_norm > 0:
            if group is not None:  # the clip needs the global gradient's norm
                grads[: len(shared)] = _mean_over_processes(grads[: len(shared)], group)
            shared_grads = [g for g in grads[: len(shared)] if g is not None]
            if shared_grads:
                total = torch.linalg.vector_norm(
                    torch.stack([torch.linalg.vector_norm(g) for g in shared_grads])
                )
                scale = torch.clamp(self.max_norm / (total + 1e-6), max=1.0)
                grads[: len(shared)] = [
                    None if g is None else g * scale for g in grads[: len(shared)]
                ]
        accumulate(params, grads)

    def _warn_no_after_step(self) -> None:
        """Warn (once per instance) that the previous backward never got its ``after_step``."""
        if self._warned_no_after_step:
            return
        self._warned_no_after_step = True
        warnings.warn(
            "famo: backward was called again without after_step in between, so the task "
            "logits are not updated and FAMO degrades to a fixed loss weighting; after each "
            "optimizer.step(), call method.after_step(new_losses) with the same batch's task "
            "losses recomputed by the updated model (method.needs_after_step is True)",
            UserWarning,
            stacklevel=4,  # _warn, fill_gradients, backward: the caller
        )

    def logit_gradient(self, delta: Tensor) -> Tensor:
        """Return ``J_softmax(xi)^T delta = z * (delta - z . delta)`` [K] (the logit gradient)."""
        z = torch.softmax(self.logits, dim=0)
        return z * (delta - (z * delta).sum())

    def after_step(self, losses: Tensor) -> None:
        """Update the logits from the decrease of the same batch's losses over the step."""
        if self._pending is None:
            raise RuntimeError("famo: after_step called without a preceding backward")
        check_losses(losses, self.num_tasks)
        losses = all_reduce_mean(losses.detach(), resolve_group(self.process_group))
        new = self._gaps(losses.detach(), "after_step").double().cpu()
        delta = self._pending.log() - new.log()
        self.logits = self._opt.step(self.logits, self.logit_gradient(delta))
        self._pending = None

    def reduces_shared_gradients(self) -> bool:
        """With gradient clipping the shared gradients are reduced before the clip (True)."""
        return self.max_norm > 0

    def state_dict(self) -> dict[str, Any]:
        """Return the base state, logits, Adam state, min_losses and any pending ``D(t)``."""
        return {
            **super().state_dict(),
            "optimizer": self._opt.state_dict(),
            "min_losses": self.min_losses.clone(),
            "pending": clone_or_none(self._pending),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the state from :meth:`state_dict`."""
        super().load_state_dict(state)
        self._opt.load_state_dict(state["optimizer"])
        self.min_losses = self._check_min_losses(state["min_losses"])
        pending = state.get("pending")
        self._pending = (
            None if pending is None else torch.as_tensor(pending, dtype=torch.float64).clone()
        )


def _mean_over_processes(grads: list[Tensor | None], group: Any) -> list[Tensor | None]:
    """Return the gradients averaged over the processes (one flattened all-reduce)."""
    present = [g for g in grads if g is not None]
    if not present:
        return grads
    flat = all_reduce_mean(torch.cat([g.reshape(-1) for g in present]), group)
    parts = iter(flat.split([g.numel() for g in present]))
    return [None if g is None else next(parts).view_as(g) for g in grads]
