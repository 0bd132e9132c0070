"""Shared plumbing of the loss weightings: gradient accumulation, checks, a tiny Adam.

Private: the public face of each method is its own module.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

__all__ = [
    "SGD",
    "Adam",
    "accumulate",
    "backward_objective",
    "check_positive",
    "check_probability",
    "clone_or_none",
    "unique_parameters",
]


def unique_parameters(*groups: Iterable[Tensor]) -> list[Tensor]:
    """Return the tensors of ``groups`` that require a gradient, each once, in first-seen order."""
    seen: set[int] = set()
    out: list[Tensor] = []
    for group in groups:
        for p in group:
            if id(p) in seen or not p.requires_grad:
                continue
            seen.add(id(p))
            out.append(p)
    return out


def accumulate(parameters: Sequence[Tensor], grads: Sequence[Tensor | None]) -> None:
    """Add ``grads`` into ``parameters[i].grad`` (creating it), like ``Tensor.backward`` does."""
    for p, g in zip(parameters, grads, strict=True):
        if g is None:
            continue
        g = g.detach()
        if p.grad is None:
            p.grad = g.clone()
        else:
            p.grad.add_(g)


def backward_objective(
    objective: Tensor,
    method: str,
    *parameter_groups: Iterable[Tensor],
    retain_graph: bool = False,
) -> None:
    """Accumulate the gradient of a scalar ``objective`` into the given parameters' ``.grad``.

    Parameters the objective does not depend on are left untouched, as with
    ``Tensor.backward(inputs=...)``.
    """
    params = unique_parameters(*parameter_groups)
    if not params:
        return
    if not objective.requires_grad:
        raise ValueError(f"{method}: the losses carry no autograd graph (computed under no_grad?)")
    grads = torch.autograd.grad(objective, params, allow_unused=True, retain_graph=retain_graph)
    accumulate(params, grads)


def check_positive(losses: Tensor, method: str) -> None:
    """Raise ``ValueError`` unless every loss is > 0 (a log-loss method needs it)."""
    bad = (losses.detach() <= 0).nonzero().flatten().tolist()
    if bad:
        raise ValueError(
            f"{method} takes the log of each loss, which needs losses > 0; "
            f"task(s) {bad} have {losses.detach()[bad].tolist()}"
        )


def check_probability(value: float, name: str, method: str, *, closed: bool = False) -> None:
    """Raise ``ValueError`` unless ``0 <= value < 1`` (``<= 1`` when ``closed``)."""
    ok = 0.0 <= value <= 1.0 if closed else 0.0 <= value < 1.0
    if not ok:
        interval = "[0, 1]" if closed else "[0, 1)"
        raise ValueError(f"{method}: {name} must lie in {interval}, got {value}")


class Adam:
    """Adam (Kingma & Ba 2015, Alg. 1) on one tensor, with L2 ``weight_decay`` added to the gradient.

    Same update as ``torch.optim.Adam(weight_decay=...)`` (coupled L2, not AdamW), kept as plain
    tensors so that a method's state dict is a flat, device-movable dict.
    """

    def __init__(
        self,
        lr: float,
        *,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ) -> None:
        self.lr, self.betas, self.eps, self.weight_decay = lr, betas, eps, weight_decay
        self.reset()

    def reset(self) -> None:
        """Forget the moment estimates and the step count."""
        self.t = 0
        self.m: Tensor | None = None
        self.v: Tensor | None = None

    def step(self, param: Tensor, grad: Tensor) -> Tensor:
        """Return ``param`` after one Adam step along ``grad`` (new tensor, no autograd)."""
        b1, b2 = self.betas
        g = grad + self.weight_decay * param if self.weight_decay else grad
        if self.m is None or self.v is None:
            self.m, self.v = torch.zeros_like(param), torch.zeros_like(param)
        self.t += 1
        self.m = b1 * self.m + (1 - b1) * g
        self.v = b2 * self.v + (1 - b2) * g * g
        m_hat = self.m / (1 - b1**self.t)
        v_hat = self.v / (1 - b2**self.t)
        return param - self.lr * m_hat / (v_hat.sqrt() + self.eps)

    def state_dict(self) -> dict[str, object]:
        """Return the step count and moment estimates."""
        return {"t": self.t, "m": self.m, "v": self.v}

    def load_state_dict(self, state: dict[str, object]) -> None:
        """Restore the state from :meth:`state_dict`."""
        self.t = int(state["t"])  # type: ignore[call-overload]
        self.m = _clone(state["m"])
        self.v = _clone(state["v"])


class SGD:
    """Plain gradient descent on one tensor (``param - lr * grad``), the same interface as Adam."""

    def __init__(self, lr: float) -> None:
        self.lr = lr

    def reset(self) -> None:
        """Nothing to forget."""

    def step(self, param: Tensor, grad: Tensor) -> Tensor:
        """Return ``param - lr * grad``."""
        return param - self.lr * grad

    def state_dict(self) -> dict[str, object]:
        """Return an empty state."""
        return {}

    def load_state_dict(self, state: dict[str, object]) -> None:
        """Nothing to restore."""


def _clone(x: object) -> Tensor | None:
    return None if x is None else torch.as_tensor(x).clone()


def clone_or_none(x: Tensor | None) -> Tensor | None:
    """Return a detached copy of ``x`` (or ``None``), so a state dict never aliases live state."""
    return None if x is None else x.detach().clone()
