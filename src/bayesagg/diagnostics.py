"""What BayesAgg-MTL does to training, measured on a few batches per epoch (the options ablation, results/ablation/README.md).

For a BayesAgg-MTL run the training loop hands a few batches of every epoch (``batches`` of
them, evenly spaced; not every step, to keep the cost low) to :meth:`TrainingDiagnostics.measure`
*before* the step trains on them, so the measurement sees exactly the state the step uses.
Per measured batch, with theta the live classification head (weights and bias):

- ``cosine_ls``: cosine between the encoder gradient BayesAgg-MTL sends (``h.backward(g / B)``
  with g the aggregated per-example gradients, :meth:`bayesagg.BayesAgg.representation_gradient`)
  and linear scalarisation's (the gradient of the summed task losses w.r.t. the shared
  parameters, live heads, same batch). Measured in the warm-up epochs too (what BayesAgg-MTL
  *would* send; ``in_warmup`` says so);
- ``head_distance/<group>``: ||m_batch - theta|| / ||theta||, m_batch the batch posterior's mean
  (the head whose uncertainty drives the gradient moments);
- ``prior_distance/<group>``: ||m_prior - theta|| / ||theta||, m_prior the prior's mean (last
  epoch's full-data posterior, or the live head with ``prior_mean="live_head"``);
- ``loss_live/<group>``, ``loss_posterior/<group>``, ``loss_prior/<group>``: the group's mean
  training loss on the batch at theta, at m_batch and at m_prior;
- ``regression_dof/<group>`` (regression groups, from the epoch's full-data fit, not from the
  measured batches): how many of the head's P weights the data determine against the prior
  N(0, gamma I), :func:`bayesagg.posterior.effective_parameters`. Far below P means the prior
  shrinks the head: on QM9 ``quick`` (2,000 molecules, gamma 5e-3) it under-fits
  (results/ablation/README.md);
- ``regression_prior_precision/<group>``, ``regression_noise_precision/<group>``: the prior
  precision alpha and noise precision beta of that fit (1/gamma and 1/noise_var, or the
  evidence maximiser with ``regression_prior="evidence"``, :mod:`bayesagg.evidence`).

:meth:`TrainingDiagnostics.end_epoch` returns their means over the epoch's measured batches as
``diag/...`` columns of ``epochs.csv``. Only classification groups get distances and losses
(regression heads hold a full-data posterior mean by construction). A measurement leaves
training exactly as it was: the random-number states and the model's buffers (BatchNorm
statistics) are restored, and nothing of BayesAgg-MTL's state changes.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from typing import Any, cast

import torch
from torch import Tensor, nn

from bayesagg.bayes_agg import BayesAgg
from bayesagg.kronecker import KroneckerPrecision
from bayesagg.newton import newton_posterior
from bayesagg.posterior import Gaussian, effective_parameters
from bayesagg.tasks import MISSING, Regression, TaskGroup, task_losses

__all__ = ["TrainingDiagnostics"]


class TrainingDiagnostics:
    """Per-epoch diagnostics of a BayesAgg-MTL run; see the module docstring."""

    def __init__(self, aggregator: BayesAgg, *, batches: int = 4) -> None:
        if int(batches) != batches or batches < 1:
            raise ValueError(f"batches must be a positive integer, got {batches!r}")
        self.aggregator = aggregator
        self.batches = int(batches)
        self._due: set[int] = set()
        self._sums: dict[str, float] = defaultdict(float)
        self._counts: dict[str, int] = defaultdict(int)

    @classmethod
    def for_method(cls, method: Any, *, batches: int = 4) -> TrainingDiagnostics | None:
        """Return diagnostics for a method that holds a :class:`BayesAgg`, else None."""
        aggregator = getattr(method, "aggregator", None)
        return cls(aggregator, batches=batches) if isinstance(aggregator, BayesAgg) else None

    def start_epoch(self, steps: int) -> None:
        """Choose the ``batches`` evenly spaced steps (0-based) of an epoch of ``steps``."""
        count = min(self.batches, max(int(steps), 0))
        self._due = {(k * steps) // count for k in range(count)} if count else set()
        self._sums.clear()
        self._counts.clear()

    def due(self, step: int) -> bool:
        """Return True if step ``step`` (0-based, within the epoch) is measured."""
        return step in self._due

    def measure(
        self, model: nn.Module, groups: Sequence[TaskGroup], x: Any, targets: Sequence[Tensor]
    ) -> dict[str, float]:
        """Measure one batch (see the module docstring); return its values, also kept."""
        cpu_rng = torch.get_rng_state()
        cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        generator = self.aggregator.generator
        generator_state = None if generator is None else generator.get_state()
        buffers = {k: b.detach().clone() for k, b in model.named_buffers()}
        try:
            values = self._measure(model, groups, x, targets)
        finally:
            torch.set_rng_state(cpu_rng)
            if cuda_rng is not None:
                torch.cuda.set_rng_state_all(cuda_rng)
            if generator is not None:
                generator.set_state(generator_state)  # type: ignore[arg-type]  # saved above
            with torch.no_grad():
                for k, b in model.named_buffers():
                    b.copy_(buffers[k])
        for k, v in values.items():
            if math.isfinite(v):
                self._sums[k] += v
                self._counts[k] += 1
        return values

    def end_epoch(self) -> dict[str, float]:
        """Return the epoch's ``diag/`` columns (means over the measured batches)."""
        out = {f"diag/{k}": self._sums[k] / self._counts[k] for k in sorted(self._sums)}
        if out:
            out["diag/batches"] = float(max(self._counts.values()))
        prior = self.aggregator.prior
        if prior.refits:  # the full-data fits exist (the aggregator refits before this is read)
            for i, (group, fitted) in enumerate(zip(prior.groups, prior.posteriors, strict=True)):
                if isinstance(group, Regression) and isinstance(fitted, Gaussian):
                    dof = effective_parameters(fitted, prior.prior_precision(i))
                    # One value per output when missing labels gave each its own fit: their mean.
                    out[f"diag/regression_dof/{group.name}"] = float(dof.mean())
                    # The full-data fit's prior and noise precisions (chosen by the evidence
                    # with regression_prior="evidence", else 1/gamma and 1/noise_var).
                    out[f"diag/regression_prior_precision/{group.name}"] = prior.prior_precision(i)
                    out[f"diag/regression_noise_precision/{group.name}"] = (
                        1.0 / prior.noise_variance(i)
                    )
        return out

    # ------------------------------------------------------------------------------------------
    def _measure(
        self, model: nn.Module, groups: Sequence[TaskGroup], x: Any, targets: Sequence[Tensor]
    ) -> dict[str, float]:
        agg = self.aggregator
        # The benchmark models' layout: an ``encoder`` module and a ``heads`` ModuleList of
        # nn.Linear layers (the heads BayesAgg-MTL puts its posteriors on).
        heads = list(cast("Sequence[nn.Linear]", model.heads))
        shared = [p for p in cast(nn.Module, model.encoder).parameters() if p.requires_grad]
        h, outputs = model(x)
        losses = task_losses(groups, outputs, targets)
        ls = torch.autograd.grad(losses.sum(), shared, retain_graph=True, allow_unused=True)
        g = agg.representation_gradient(h, heads, targets)
        ours = torch.autograd.grad(h, shared, grad_outputs=(g / h.shape[0]).to(h.dtype))
        values = {
            "cosine_ls": _cosine(ours, ls),
            "in_warmup": float(agg.in_warmup),
        }
        features = h.detach().to(torch.promote_types(h.dtype, torch.float32))
        for i, (group, head, y) in enumerate(zip(groups, heads, targets, strict=True)):
            if isinstance(group, Regression):
                continue
            theta = torch.cat([head.weight.detach(), head.bias.detach()[:, None]], 1)
            theta = theta.to(features.dtype)
            mean0, precision0 = agg.prior.prior(
                i, features.shape[1] + 1, dtype=features.dtype, device=features.device
            )
            if agg.prior_mean == "live_head":
                mean0 = theta
            # Missing labels: the examples with every label of the group (the fit's rows).
            rows = (y != MISSING).reshape(len(y), -1).all(dim=1)
            if not bool(rows.any()):
                continue
            feats = features if bool(rows.all()) else features[rows]
            y = y[rows] if not bool(rows.all()) else y
            y = y.to(features.dtype) if group.kind == "binary" else y.long()
            post = newton_posterior(
                "kron" if isinstance(precision0, KroneckerPrecision) else group.kind,
                feats,
                y,
                theta[:, :-1],
                theta[:, -1],
                mean0,
                precision0,
                steps=agg.newton_steps,
                damping=agg.newton_damping,
            )
            norm = float(theta.norm())
            values[f"head_distance/{group.name}"] = float((post.mean - theta).norm()) / norm
            values[f"prior_distance/{group.name}"] = float((mean0 - theta).norm()) / norm
            with torch.no_grad():
                for label, params in (("live", theta), ("posterior", post.mean), ("prior", mean0)):
                    logits = feats @ params[:, :-1].mT + params[:, -1]
                    values[f"loss_{label}/{group.name}"] = float(group.losses(logits, y).mean())
        return values


def _cosine(a: Sequence[Tensor | None], b: Sequence[Tensor | None]) -> float:
    """Return the cosine between two gradients given per parameter (None: zero)."""
    dot = sq_a = sq_b = 0.0
    for u, v in zip(a, b, strict=True):
        if u is not None:
            sq_a += float(u.double().pow(2).sum())
        if v is not None:
            sq_b += float(v.double().pow(2).sum())
        if u is not None and v is not None:
            dot += float((u.double() * v.double()).sum())
    if sq_a == 0.0 or sq_b == 0.0:
        return float("nan")
    return dot / math.sqrt(sq_a * sq_b)
