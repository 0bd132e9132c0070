"""BayesAgg-MTL as one object a training loop holds: ``losses = agg.backward(h, heads, targets)``.

Achituve et al., "Bayesian Uncertainty for Gradient Aggregation in Multi-Task Learning", ICML 2024,
Section 3 and Algorithm 1; docs/bayesagg-math.md and docs/bayesagg.md. Each step, for every task group:

1. posterior over the head's weights from the batch, with last epoch's full-data posterior as the
   prior (:mod:`bayesagg.posterior`, :mod:`bayesagg.prior`; paper Eq. 2 and Eqs. 9-10);
2. per-example, per-dimension mean and variance of the gradient of each task's loss w.r.t. the
   shared representation h (:mod:`bayesagg.moments`; paper Eq. 4 and Eq. 11);
3. precision^s weights over the K tasks and the aggregated per-example gradient
   (:mod:`bayesagg.aggregation`; paper Eq. 7), sent into the encoder as ``h.backward(g / B)``.

The object itself owns only what persists across steps: the epoch-level prior, the epoch and step
counters (for the linear-scalarisation warm-up and for error messages), the last task weights
(paper Fig. 3) and an optional random generator. ``state_dict()`` holds all of it.

Heads (docs/bayesagg.md, "Which fit regression predictions use"). Classification heads are trained by the optimiser as usual: they
receive the gradient of the summed per-task mean losses. Regression heads are *not* learned after
the warm-up: their ``.grad`` is set to ``None`` at every BayesAgg step, and their weights are the
posterior mean fitted on the full training set, written by one of two explicit fits:

- ``regression_fit="epoch"`` (the paper's code): at every :meth:`BayesAgg.end_epoch` from the last
  warm-up epoch on, the heads get the full-data posterior mean of the epoch's features (train-mode
  features of a drifting encoder, isotropic prior N(0, gamma I)); predictions after an epoch use it.
- ``regression_fit="refit"``: call :meth:`BayesAgg.fit_regression_heads` with features of the
  trained encoder in eval mode before predicting; ``end_epoch`` leaves a refit made since the
  last ``end_epoch`` alone and otherwise writes the epoch's fit, so the heads are never more
  than an epoch old (the cleaner choice: the features of the final encoder, in eval mode).

Either way :meth:`BayesAgg.fit_regression_heads` refits on whatever features it is given, and
``agg.regression_fit_source`` says which fit the heads hold now.

Scale: the weights sum to one over the K tasks, so the gradient sent into the encoder is about
1/K of the linear-scalarisation gradient (irrelevant to Adam's direction, not to SGD's step size).

Missing labels (a NaN regression target, a binary or multiclass target -100; :mod:`bayesagg.tasks`,
docs/bayesagg.md "Missing labels"): each batch posterior is fitted on the examples labelled for
its task only (a regression group then has one precision per output), and each example's
gradient combines the tasks labelled on it, with weights normalised over those (paper Eq. 7: a
task without a label has no loss, so no gradient to weigh). An example without any label sends
no gradient. The epoch prior and :meth:`BayesAgg.fit_regression_heads` fit on the labelled
examples of each task likewise. With every label present nothing of this runs: the computation
is the one without masks.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal, cast

import torch
from torch import Tensor, nn

from bayesagg import kronecker, posterior
from bayesagg import moments as gradient_moments
from bayesagg.aggregation import weights as aggregation_weights
from bayesagg.kronecker import KroneckerGaussian, KroneckerPrecision
from bayesagg.linalg import NumericalError
from bayesagg.newton import check_newton, newton_posterior, stacked_kron_posterior
from bayesagg.posterior import Gaussian
from bayesagg.prior import EpochPrior, MulticlassPosterior, RegressionPrior, RegressionStatistics
from bayesagg.tasks import (
    MISSING,
    Binary,
    Multiclass,
    Regression,
    TaskGroup,
    check_groups,
    check_loss_scale,
    num_tasks,
    task_kinds,
    task_losses,
    task_names,
)

__all__ = [
    "PAPER_BEHAVIOUR",
    "BayesAgg",
    "ClassificationHeads",
    "MomentMethod",
    "MulticlassPosterior",
    "PriorMean",
    "RegressionFit",
    "RegressionHeads",
    "RegressionPrior",
]

MomentMethod = Literal["qmc", "rao_blackwell", "monte_carlo"]
RegressionFit = Literal["epoch", "refit"]
ClassificationHeads = Literal["trained", "posterior_mean"]
PriorMean = Literal["full_data", "live_head"]
RegressionHeads = Literal["fitted", "trained"]


#: Every setting in which the paper's BayesAgg-MTL departs from the library's defaults: one
#: undamped Newton step for the classification posteriors, the aggregated gradient not rescaled
#: (Achituve et al. 2024, Sec. 3.2 and Algorithm 1), the batch posteriors centred at last
#: epoch's full-data fit, classification heads trained by the optimiser, regression heads
#: holding the full-data posterior mean of a regression without bias (the authors' trainers
#: predict ``h @ mean_w^T``) under the hand-set prior N(0, gamma I) and noise variance
#: ``noise_var``. The per-benchmark numbers (gamma, s, warm-up) are protocol settings.
PAPER_BEHAVIOUR: dict[str, Any] = {
    "newton_steps": 1,
    "newton_damping": 1.0,
    "scale_by_tasks": False,
    "prior_mean": "full_data",
    "classification_heads": "trained",
    "regression_bias": False,
    "regression_prior": "fixed",
    "regression_heads": "fitted",
    "regression_fit": "epoch",
    "multiclass_posterior": "dense",
}


class BayesAgg:
    """BayesAgg-MTL gradient aggregation on the shared representation (paper Algorithm 1).

    Args:
        groups: the task groups (:class:`~bayesagg.tasks.Regression`, :class:`~bayesagg.tasks.Binary`,
            :class:`~bayesagg.tasks.Multiclass`) in any mix and order; heads and targets are given
            in the same order. K = the number of tasks (one per regression output, per binary
            output, per multiclass group).
        s_regression: the power s on the precisions of regression tasks (paper Sec. 3.1, after
            Eq. 7). Paper: searched in {0.75, 0.85, 0.95} on QM9, 0.3 on UTKFace. Default 0.85.
        s_classification: s for binary and multiclass tasks. Paper: 5e-4 on CIFAR-MTL and
            ChestX-ray14, 0.1 on UTKFace. Default 0.1. ``s = 0`` gives the plain mean over tasks.
        gamma: variance of the isotropic prior N(0, gamma I) of the full-data fits (paper
            Sec. 3.1; the authors' trainers: 5e-4 CIFAR-MTL, 5e-3 ChestX-ray14 and UTKFace, their
            common parser's default 1.0). Default 5e-3. Regression groups use it only before
            their first fit under the default ``regression_prior="evidence"``; classification
            groups always.
        noise_var: observation-noise variance sigma^2 of Bayesian linear regression (paper: 1).
        warmup_epochs: epochs of linear scalarisation before BayesAgg-MTL starts (paper: 50 QM9,
            3 CIFAR-MTL, 1 ChestX-ray14, 10 UTKFace). Default 0.
        moments: estimator of the classification gradient moments (docs/bayesagg-math.md, stage 2):
            ``"qmc"`` (default, deterministic: Gauss-Hermite quadrature for binary tasks; for
            multiclass, a fixed quasi-Monte-Carlo rule over the logits with the weights
            integrated analytically, :func:`bayesagg.moments.multiclass`),
            ``"rao_blackwell"`` (the same binary quadrature; random logit draws for multiclass)
            or ``"monte_carlo"`` (the paper's weight sampling, Eq. 11). Regression moments are
            always exact.
        num_samples: samples of the Monte-Carlo estimators and logit samples of the multiclass
            Rao-Blackwell estimator; ``None`` (default) uses :data:`bayesagg.moments.DEFAULT_SAMPLES`
            (1024 for Monte Carlo, the paper's number; 256 for Rao-Blackwell). Unused by the
            deterministic estimators (``"qmc"``, binary Rao-Blackwell), whose rule sizes are
            their own.
        nodes: Gauss-Hermite nodes of the binary Rao-Blackwell estimator.
        eps: floor on the gradient variances before taking precisions (paper: 1e-8).
        generator: random generator of the sampling estimators (on the features' device);
            ``None`` uses PyTorch's global generator.
        regression_fit: which full-data fit the fitted regression heads hold, ``"epoch"`` (the
            paper's) or ``"refit"`` (default; see the module docstring). Irrelevant to trained
            heads (``regression_heads="trained"``).
        process_group: data parallelism (docs/distributed.md): the batch posteriors, the
            epoch prior and :meth:`fit_regression_heads` use the statistics summed over this
            ``torch.distributed`` group's processes, i.e. those of the global batch; moments and
            weights stay per example. ``None`` (default): torch.distributed's default group when
            it is initialised, else single-process; ``False``: never communicate.
        regression_bias: whether the regression posterior has a bias when the head has one.
            ``False`` is the authors' code (their regression posterior has none; predictions
            are ``h @ mean_w^T``): the head's bias is left out of every regression posterior
            and the fits write zero into it. Default ``True`` (the head decides).
        multiclass_posterior: ``"dense"`` (the paper's): a multiclass head's posterior keeps
            its full (C P) x (C P) precision; ``"kron"``: the Kronecker-factored posterior of
            :mod:`bayesagg.kronecker` (K-FAC factors of the Gauss-Newton matrix, the isotropic
            prior added exactly), whose cost grows as C^3 + P^3 instead of (C P)^3, for heads
            with many classes or features (docs/bayesagg.md); it needs ``moments="qmc"``.
            ``"auto"`` (default): factored for heads of at least
            :data:`~bayesagg.prior.KRON_MIN_CLASSES` (3) classes, dense for 2-class heads and
            whenever ``moments`` is not ``"qmc"``. The factored form trained no worse than the
            dense one on held-out seeds (MultiMNIST, UTKFace; results/kron/README.md) at a
            fraction of its cost; the ``paper`` protocols keep the dense posterior
            (:data:`PAPER_BEHAVIOUR`).
        max_moment_nodes: caps the factored posterior's moment rule at this many nodes per
            example (raised to 2C, and to an even number, where smaller). ``None`` (default):
            the rule's own count from the logits' width, 4-16 x C nodes, exact to the rule's
            1e-3; a cap trades accuracy for time on heads with many classes (at 100 classes on
            512 features a cap of 4C is ~5x faster with gradient means 0.6 % and variances 1 %
            from the uncapped rule; wide logits at 10 classes: 2 % and 5 %;
            docs/bayesagg-math.md). Factored posteriors only.

    Options beyond the paper. The library's defaults are the sturdier variant chosen
    by the options ablation (results/ablation/README.md): half-damped Newton fits
    (``newton_damping=0.5``) and the aggregated gradient scaled by K (``scale_by_tasks=True``).
    The paper's behaviour is :data:`PAPER_BEHAVIOUR` (``BayesAgg.paper(groups, ...)``, registry
    name ``bayesagg-paper``); every ``paper`` protocol uses it.

    Args:
        classification_heads: ``"trained"`` (paper): classification heads are only trained by
            the optimiser; ``"posterior_mean"``: from the last warm-up epoch on,
            :meth:`end_epoch` writes the full-data posterior mean into them (as the regression
            heads get theirs), so predictions use it and the next epoch trains on from it.
        prior_mean: ``"full_data"`` (paper): the batch posteriors' prior is last epoch's
            full-data posterior; ``"live_head"``: its precision, centred at the live head
            (the classification groups; before the first refit, N(live head, gamma I)).
        newton_steps, newton_damping: the classification fits (full-data and batch) take
            ``newton_steps`` Newton steps of size ``newton_damping`` (:mod:`bayesagg.newton`);
            the paper's is one undamped step (1, 1.0). Default one half step (1, 0.5): on a
            whole epoch of data the undamped step can land far from the live head (the options ablation
            measured 2.6 x ||theta|| and a 17x higher loss at one epoch of MultiMNIST).
        scale_by_tasks: send ``K * g / B`` into the encoder instead of ``g / B`` (the weights
            sum to one over the K tasks, so ``g`` is about 1/K of the LS gradient). Default
            ``True``: the encoder then gets gradients of LS's size, which matters wherever the
            size matters (gradient clipping, coupled weight decay, SGD); the paper's is ``False``.
        regression_prior: ``"evidence"`` (default) or ``"fixed"`` (paper): with ``"fixed"``
            the full-data regression fits use the prior
            N(0, gamma I) and the noise variance ``noise_var``; ``"evidence"``: each fit
            chooses its group's prior precision alpha and noise precision beta by maximising
            the marginal likelihood of the epoch's targets (:mod:`bayesagg.evidence`; Bishop
            2006 Sec. 3.5), and the next epoch's batch posteriors use noise variance 1 / beta.
            ``gamma`` and ``noise_var`` then only set the prior before the first fit.
        regression_heads: ``"fitted"`` (paper): regression heads hold the full-data posterior
            mean (module docstring); ``"trained"``: the optimiser trains them like the
            classification heads, and each batch posterior's prior is centred at the live
            head with the full-data fit's precision (as ``prior_mean="live_head"`` does for
            classification), so the head follows the encoder within an epoch.
        regression_refresh: ``0`` (paper): regression priors are refitted once per epoch;
            ``n > 0``: also every n steps after the warm-up, on exponentially forgotten
            statistics of recent batches holding about one epoch's worth of examples
            (:meth:`bayesagg.prior.EpochPrior.refresh_regression`), so the batch posteriors'
            prior follows the encoder within an epoch. The heads are still written at
            :meth:`end_epoch` only.
    """

    def __init__(
        self,
        groups: Sequence[TaskGroup],
        *,
        s_regression: float = 0.85,
        s_classification: float = 0.1,
        gamma: float = 5e-3,
        noise_var: float = 1.0,
        warmup_epochs: int = 0,
        moments: MomentMethod = "qmc",
        num_samples: int | None = None,
        nodes: int = 32,
        eps: float = 1e-8,
        generator: torch.Generator | None = None,
        regression_fit: RegressionFit = "refit",
        process_group: Any = None,
        regression_bias: bool = True,
        classification_heads: ClassificationHeads = "trained",
        prior_mean: PriorMean = "full_data",
        newton_steps: int = 1,
        newton_damping: float = 0.5,
        scale_by_tasks: bool = True,
        regression_prior: RegressionPrior = "evidence",
        regression_heads: RegressionHeads = "fitted",
        regression_refresh: int = 0,
        multiclass_posterior: MulticlassPosterior = "auto",
        max_moment_nodes: int | None = None,
    ) -> None:
        check_groups(groups)
        for name, value in (("s_regression", s_regression), ("s_classification", s_classification)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1] (paper Sec. 3.1), got {value}")
        if not gamma > 0:
            raise ValueError(f"gamma (prior variance) must be positive, got {gamma}")
        if not noise_var > 0:
            raise ValueError(f"noise_var must be positive, got {noise_var}")
        if (
            isinstance(warmup_epochs, bool)
            or not isinstance(warmup_epochs, int)
            or warmup_epochs < 0
        ):
            raise ValueError(f"warmup_epochs must be an integer >= 0, got {warmup_epochs!r}")
        if moments not in ("qmc", "rao_blackwell", "monte_carlo"):
            raise ValueError(
                f"moments must be 'qmc', 'rao_blackwell' or 'monte_carlo', got {moments!r}"
            )
        if num_samples is not None and (int(num_samples) != num_samples or num_samples < 1):
            raise ValueError(f"num_samples must be a positive integer or None, got {num_samples!r}")
        if int(nodes) != nodes or nodes < 1:
            raise ValueError(f"nodes must be a positive integer, got {nodes!r}")
        if not eps > 0:
            raise ValueError(f"eps must be positive, got {eps}")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or None, got {type(generator)}")
        if regression_fit not in ("epoch", "refit"):
            raise ValueError(f"regression_fit must be 'epoch' or 'refit', got {regression_fit!r}")
        for name, choice, allowed in (
            ("classification_heads", classification_heads, ("trained", "posterior_mean")),
            ("prior_mean", prior_mean, ("full_data", "live_head")),
            ("regression_prior", regression_prior, ("fixed", "evidence")),
            ("regression_heads", regression_heads, ("fitted", "trained")),
        ):
            if choice not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {choice!r}")
        if (
            isinstance(regression_refresh, bool)
            or not isinstance(regression_refresh, int)
            or regression_refresh < 0
        ):
            raise ValueError(
                f"regression_refresh must be an integer >= 0 (steps), got {regression_refresh!r}"
            )
        if multiclass_posterior not in ("auto", "dense", "kron"):
            raise ValueError(
                "multiclass_posterior must be 'auto', 'dense' or 'kron', "
                f"got {multiclass_posterior!r}"
            )
        if max_moment_nodes is not None and (
            isinstance(max_moment_nodes, bool)
            or not isinstance(max_moment_nodes, int)
            or max_moment_nodes < 2
        ):
            raise ValueError(
                f"max_moment_nodes must be None or an integer >= 2, got {max_moment_nodes!r}"
            )
        if multiclass_posterior == "kron" and moments != "qmc":
            raise ValueError(
                "multiclass_posterior='kron' has the deterministic moments only: use "
                f"moments='qmc', got {moments!r}"
            )
        check_newton(newton_steps, newton_damping)
        self.groups: tuple[TaskGroup, ...] = tuple(groups)
        self.s_regression = float(s_regression)
        self.s_classification = float(s_classification)
        self.gamma = float(gamma)
        self.noise_var = float(noise_var)
        self.warmup_epochs = warmup_epochs
        self.moments: MomentMethod = moments
        self.num_samples = None if num_samples is None else int(num_samples)
        self.nodes = int(nodes)
        self.eps = float(eps)
        self.generator = generator
        self.regression_fit: RegressionFit = regression_fit
        self.process_group = process_group
        self.regression_bias = bool(regression_bias)
        self.classification_heads: ClassificationHeads = classification_heads
        self.prior_mean: PriorMean = prior_mean
        self.newton_steps = int(newton_steps)
        self.newton_damping = float(newton_damping)
        self.scale_by_tasks = bool(scale_by_tasks)
        self.regression_prior: RegressionPrior = regression_prior
        self.regression_heads: RegressionHeads = regression_heads
        self.regression_refresh = regression_refresh
        self.multiclass_posterior: MulticlassPosterior = multiclass_posterior
        self.max_moment_nodes = max_moment_nodes
        self.reset()

    # ------------------------------------------------------------------ state and inspection

    @classmethod
    def paper(cls, groups: Sequence[TaskGroup], **hparams: Any) -> BayesAgg:
        """Return BayesAgg-MTL as published (:data:`PAPER_BEHAVIOUR`; ``hparams`` override it)."""
        return cls(groups, **{**PAPER_BEHAVIOUR, **hparams})

    def reset(self) -> None:
        """Forget everything learned: epoch and step counters, priors, buffers, last weights."""
        #: Epochs completed (number of :meth:`end_epoch` calls).
        self.epoch = 0
        #: Steps completed (number of :meth:`backward` calls), warm-up included.
        self.step = 0
        #: The epoch-level prior and the current epoch's buffers.
        self.prior = EpochPrior(
            self.groups,
            gamma=self.gamma,
            noise_var=self.noise_var,
            newton_steps=self.newton_steps,
            newton_damping=self.newton_damping,
            regression_prior=self.regression_prior,
            refresh_every=self.regression_refresh,
            # "auto" falls back to dense where the factored form has no moments (Monte Carlo).
            multiclass_posterior="dense"
            if self.multiclass_posterior == "auto" and self.moments != "qmc"
            else self.multiclass_posterior,
        )
        #: Task weights of the last BayesAgg step, alpha averaged over batch and dimensions [K]
        #: (paper Fig. 3); ``None`` before the first step after the warm-up. An example without
        #: a task's label gives it weight 0 there, so missing labels lower its average.
        self.last_weights: Tensor | None = None
        #: alpha of the last BayesAgg step averaged over the batch only [K, D].
        self.last_weights_per_dimension: Tensor | None = None
        #: Which fit the regression heads hold now (``None``: none written yet).
        self.regression_fit_source: str | None = None
        #: Whether fit_regression_heads ran since the last end_epoch (regression_fit="refit").
        self._refitted_this_epoch = False
        self._heads: tuple[nn.Linear, ...] | None = None
        self._powers: dict[tuple[torch.dtype, torch.device], Tensor] = {}

    @property
    def num_tasks(self) -> int:
        """Return K, the number of tasks on the aggregation axis."""
        return num_tasks(self.groups)

    @property
    def task_names(self) -> list[str]:
        """Return one name per task, in the order of :attr:`last_weights`."""
        return task_names(self.groups)

    @property
    def fitted_tasks(self) -> list[int]:
        """Return the task indices whose heads hold a fit rather than the optimiser's state.

        The regression tasks with ``regression_heads="fitted"``: their training losses are those
        of a head fitted on earlier features (last epoch's, or the last refit's), not of a head
        that training moves, so a large value says the encoder moved, not that training
        diverged. The runner checks only their finiteness.
        """
        if self.regression_heads != "fitted":
            return []
        return [k for k, kind in enumerate(task_kinds(self.groups)) if kind == "regression"]

    @property
    def in_warmup(self) -> bool:
        """Return True while the next step is a linear-scalarisation warm-up step."""
        return self.epoch < self.warmup_epochs

    def _config(self) -> dict[str, Any]:
        return {
            "groups": [(g.kind, g.name, g.head_outputs) for g in self.groups],
            "s_regression": self.s_regression,
            "s_classification": self.s_classification,
            "gamma": self.gamma,
            "noise_var": self.noise_var,
            "warmup_epochs": self.warmup_epochs,
            "moments": self.moments,
            "num_samples": self.num_samples,
            "nodes": self.nodes,
            "eps": self.eps,
            "regression_fit": self.regression_fit,
            "regression_bias": self.regression_bias,
            "classification_heads": self.classification_heads,
            "prior_mean": self.prior_mean,
            "newton_steps": self.newton_steps,
            "newton_damping": self.newton_damping,
            "scale_by_tasks": self.scale_by_tasks,
            "regression_prior": self.regression_prior,
            "regression_heads": self.regression_heads,
            "regression_refresh": self.regression_refresh,
            "multiclass_posterior": self.multiclass_posterior,
            "max_moment_nodes": self.max_moment_nodes,
        }

    def state_dict(self) -> dict[str, Any]:
        """Return everything needed to resume: counters, priors, the epoch's buffers, generator."""
        return {
            "config": self._config(),
            "epoch": self.epoch,
            "step": self.step,
            "prior": self.prior.state_dict(),
            "last_weights": _clone(self.last_weights),
            "last_weights_per_dimension": _clone(self.last_weights_per_dimension),
            "regression_fit_source": self.regression_fit_source,
            "refitted_this_epoch": self._refitted_this_epoch,
            "generator": None if self.generator is None else self.generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output; the configuration must match this object's."""
        mine = self._config()
        # States saved while ``reset_encoder_optimizer`` was an option of this class carry it;
        # it is the training-loop adapter's now (methods/bayesagg_mtl.py), which checks it.
        theirs = {k: v for k, v in state["config"].items() if k != "reset_encoder_optimizer"}
        # States saved before the Kronecker-factored option existed held dense posteriors.
        theirs.setdefault("multiclass_posterior", "dense")
        theirs.setdefault("max_moment_nodes", None)  # states from before the option
        differ = sorted(k for k in mine.keys() | theirs.keys() if mine.get(k) != theirs.get(k))
        if differ:
            details = ", ".join(
                f"{k}: {theirs.get(k)!r} in state, {mine.get(k)!r} here" for k in differ
            )
            raise ValueError(f"BayesAgg state does not match this configuration ({details})")
        if (state["generator"] is None) != (self.generator is None):
            raise ValueError("BayesAgg state and this object disagree on having a generator")
        self.reset()
        self.epoch = int(state["epoch"])
        self.step = int(state["step"])
        self.prior.load_state_dict(state["prior"])
        self.last_weights = _clone(state["last_weights"])
        self.last_weights_per_dimension = _clone(state["last_weights_per_dimension"])
        self.regression_fit_source = state["regression_fit_source"]
        self._refitted_this_epoch = bool(state.get("refitted_this_epoch", False))
        if self.generator is not None:
            self.generator.set_state(state["generator"])

    def __repr__(self) -> str:
        groups = ", ".join(repr(g) for g in self.groups)
        options = ", ".join(f"{k}={v!r}" for k, v in self._config().items() if k != "groups")
        return f"BayesAgg([{groups}], {options})"

    # ------------------------------------------------------------------ training step

    def backward(
        self,
        h: Tensor,
        heads: Sequence[nn.Linear],
        targets: Sequence[Tensor],
        *,
        loss_scale: float | Tensor | None = None,
    ) -> Tensor:
        """Return the K per-task mean losses (detached) after filling this step's gradients.

        ``h`` [B, D] is the shared representation (part of the encoder's graph), ``heads`` one
        ``nn.Linear`` per group, ``targets`` one tensor per group: regression [B, O] real,
        binary [B, O] in {0, 1}, multiclass [B] integer class ids. Gradients accumulate into
        ``.grad`` like ``Tensor.backward``:

        - warm-up epochs: linear scalarisation, ``sum_k loss_k`` backward through h and all heads;
        - afterwards: ``h.backward(g / B)`` with g [B, D] the aggregated per-example gradients
          (paper Algorithm 1), the classification heads get the gradient of their summed
          per-task mean losses, the regression heads none (``.grad`` set to ``None``).

        ``loss_scale``: a float16 ``torch.amp.GradScaler``'s current scale; every gradient
        filled is then the step's times it (the posteriors, moments and weights are those of the
        unscaled step), for ``scaler.step(optimizer)`` to unscale.

        Every step (warm-up included) adds ``h.detach()`` and the targets to the epoch's prior
        buffers. Raises ``ValueError`` for malformed input and ``FloatingPointError`` for
        NaN/inf, naming the task group and the step.
        """
        heads, targets, bias, labelled = self._check_step(h, heads, targets)
        scale = check_loss_scale(loss_scale, "BayesAgg")
        self._heads = heads
        self.prior.reduce = self._reducer()
        if self.in_warmup:
            # Heads in their own dtype: h may come from a bfloat16 autocast region.
            outputs = [head(h.to(head.weight.dtype)) for head in heads]
            losses = task_losses(self.groups, outputs, targets)
            with _without_autocast(h.device):  # the backward pass in the forward's dtypes
                (losses.sum() if scale == 1.0 else losses.sum() * scale).backward()
            losses = losses.detach()
        else:
            with _without_autocast(h.device):
                losses = self._bayesagg_step(h, heads, targets, bias, labelled, scale)
        # Only a step that succeeded feeds next epoch's prior.
        self.prior.accumulate(h.detach(), targets, bias, labelled)
        self.step += 1
        if (
            self.regression_refresh
            and self.prior.refits
            and not self.in_warmup
            and self.step % self.regression_refresh == 0
        ):
            self.prior.refresh_regression()
        return losses

    def _bayesagg_step(
        self,
        h: Tensor,
        heads: Sequence[nn.Linear],
        targets: Sequence[Tensor],
        bias: list[bool],
        labelled: Sequence[Tensor | None],
        scale: float = 1.0,
    ) -> Tensor:
        features, g, alpha, mus, variances = self._aggregate(h, heads, targets, bias, labelled)
        # One check of the result (a non-finite entry makes the sum non-finite; the exact test
        # runs only then), and the cause located on failure.
        if not bool(g.sum().isfinite()) and not bool(g.isfinite().all()):
            bad = [
                group.name
                for group, m, v in zip(self.groups, mus, variances, strict=True)
                if not bool(m.isfinite().all() and v.isfinite().all())
            ]
            raise FloatingPointError(
                f"{self._where()}: the aggregated gradient is not finite; NaN or infinite "
                f"gradient moments in task group(s) {bad or 'none (overflow in aggregation)'}"
            )
        self.last_weights = alpha.mean(dim=(0, 2))
        self.last_weights_per_dimension = alpha.mean(dim=0)

        # Task losses on the detached features: the classification heads' ordinary gradients
        # (each head only sees its own losses), and the values returned for logging.
        per_group: list[Tensor] = []
        trained: list[Tensor] = []
        for group, head, y in zip(self.groups, heads, targets, strict=True):
            x = features.to(head.weight.dtype)
            if isinstance(group, Regression) and self.regression_heads == "fitted":
                with torch.no_grad():
                    per_group.append(group.losses(head(x), y))
                for p in head.parameters():
                    p.grad = None  # the regression heads are fitted, never stepped
            else:
                loss = group.losses(head(x), y)
                per_group.append(loss.detach())
                if loss.requires_grad:
                    trained.append(loss.sum())
        outputs = [h]
        grads = [(g * self._gradient_scale() / h.shape[0]).to(h.dtype)]
        if scale != 1.0:  # a GradScaler's: the backward passes carry the scaled gradients
            grads[0] = (g * self._gradient_scale() / h.shape[0] * scale).to(h.dtype)
        if trained:
            total = torch.stack(trained).sum()
            outputs.append(total)
            grads.append(torch.full_like(total, scale))
        torch.autograd.backward(outputs, grads)
        return torch.cat(per_group)

    def _group_moments(
        self,
        index: int,
        group: TaskGroup,
        head: nn.Linear,
        h: Tensor,
        y: Tensor,
        bias: bool,
        labelled: Tensor | None,
    ) -> tuple[Tensor, Tensor]:
        """Return the gradient moments (mu, var) [B, tasks of the group, D] of one group.

        The inputs were validated by :meth:`_check_step` (one synchronisation for all groups)
        and the prior when it was fitted, so the stages skip their own value checks
        (``check=False``); a non-finite result is still caught on the aggregated gradient.
        ``labelled`` (missing labels; None when every label is present): the mask of the
        group's labelled targets, [B, O] or [B] (multiclass). The posterior is fitted on those;
        the moments of an unlabelled entry are computed on a placeholder target (finite, never
        NaN) and set to 0 (it gets weight 0 in the aggregation).
        """
        if labelled is None:
            return self._posterior_moments(index, group, head, h, y, bias, None)
        filled = torch.where(labelled, y, torch.zeros_like(y))  # a finite placeholder
        mu, var = self._posterior_moments(index, group, head, h, filled, bias, labelled)
        present = labelled if labelled.ndim == 2 else labelled[:, None]
        return torch.where(present[:, :, None], mu, torch.zeros_like(mu)), var

    def _kron_stacks(
        self, heads: Sequence[nn.Linear], labelled: Sequence[Tensor | None]
    ) -> list[list[int]]:
        """Return the Kronecker-factored task groups in the sets whose posteriors and moments
        are computed stacked (:func:`bayesagg.kronecker.stacked_posterior`,
        :func:`~bayesagg.kronecker.stacked_moments`): heads of one shape, all with or all
        without missing labels; a group with no such partner is a stack of one. The numbers are
        each group's own; only the fixed cost of a call is shared."""
        stacks: dict[tuple[tuple[int, ...], bool], list[int]] = {}
        for i, head in enumerate(heads):
            if self.prior.kron(i):
                key = (tuple(head.weight.shape), labelled[i] is None)
                stacks.setdefault(key, []).append(i)
        return list(stacks.values())

    def _stacked_moments(
        self,
        stack: list[int],
        heads: Sequence[nn.Linear],
        h: Tensor,
        targets: Sequence[Tensor],
        labelled: Sequence[Tensor | None],
    ) -> dict[int, tuple[Tensor, Tensor]]:
        """Return :meth:`_group_moments` of the task groups ``stack`` (from :meth:`_kron_stacks`),
        their batch posteriors fitted and their moments computed together."""
        priors = [
            self.prior.prior(i, h.shape[1] + 1, dtype=h.dtype, device=h.device) for i in stack
        ]
        if self.prior_mean == "live_head":
            mean0 = torch.stack(
                [torch.cat([heads[i].weight, heads[i].bias[:, None]], 1).detach() for i in stack]
            ).to(h.dtype)
        else:
            mean0 = torch.stack([mean for mean, _ in priors])
        present = [labelled[i] for i in stack]
        masks = None if present[0] is None else torch.stack(present)  # type: ignore[arg-type]
        y = torch.stack([targets[i] for i in stack])
        if masks is not None:
            y = torch.where(masks, y, torch.zeros_like(y))  # a finite placeholder
        precisions = [precision for _, precision in priors]
        assert all(isinstance(p, KroneckerPrecision) for p in precisions)  # prior.kron(i)
        try:
            posts = stacked_kron_posterior(
                h,
                y,
                torch.stack([heads[i].weight for i in stack]).to(h.dtype),
                torch.stack([heads[i].bias for i in stack]).to(h.dtype),
                mean0,
                precisions,  # type: ignore[arg-type]  # all Kronecker: asserted above
                steps=self.newton_steps,
                damping=self.newton_damping,
                check=False,
                reduce=self.prior.reduce,
                labelled=masks,
            )
            cap = self._moment_cap(posts[0].mean.shape[0])
            mu, var = kronecker.stacked_moments(h, y, posts, check=False, max_nodes=cap)
        except NumericalError as err:
            names = [self.groups[i].name for i in stack]
            which = f"task group {names[0]!r}" if len(names) == 1 else f"task groups {names}"
            raise NumericalError(f"{self._where()}, {which}: {err}") from err
        out = {}
        for k, i in enumerate(stack):
            mu_k, var_k = mu[:, k : k + 1], var[:, k : k + 1]
            if masks is not None:  # unlabelled entries: weight 0 in the aggregation
                mu_k = torch.where(masks[k][:, None, None], mu_k, torch.zeros_like(mu_k))
            out[i] = (mu_k, var_k)
        return out

    def _posterior_moments(
        self,
        index: int,
        group: TaskGroup,
        head: nn.Linear,
        h: Tensor,
        y: Tensor,
        bias: bool,
        labelled: Tensor | None,
    ) -> tuple[Tensor, Tensor]:
        """Return :meth:`_group_moments` of every entry, the posterior fitted on ``labelled``."""
        num_params = h.shape[1] + int(bias)
        mean0, precision0 = self.prior.prior(index, num_params, dtype=h.dtype, device=h.device)
        # Kronecker-factored groups go through _stacked_moments (_kron_stacks), never here.
        assert not isinstance(precision0, KroneckerPrecision)
        if self.prior_mean == "live_head" and not isinstance(group, Regression):
            mean0 = torch.cat([head.weight.detach(), head.bias.detach()[:, None]], 1).to(h.dtype)
        if isinstance(group, Regression) and self.regression_heads == "trained":
            # The optimiser's head is the centre; the full-data fit gives only the precision.
            mean0 = head.weight.detach().to(h.dtype)
            if bias:
                mean0 = torch.cat([mean0, head.bias.detach().to(h.dtype)[:, None]], 1)
            elif head.bias is not None:
                y = y - head.bias.detach().to(h.dtype)  # the live bias is part of the prediction
        try:
            if isinstance(group, Regression):
                post = posterior.regression(
                    h,
                    y,
                    mean0,
                    precision0,
                    noise_var=self.prior.noise_variance(index),
                    bias=bias,
                    check=False,
                    reduce=self.prior.reduce,
                    labelled=labelled,
                )
                return gradient_moments.regression(h, y, post.mean, post.covariance(), check=False)
            if isinstance(group, Binary):
                fit = self._newton("binary", h, y, head, mean0, precision0, labelled)
                return gradient_moments.binary(
                    h,
                    y,
                    fit.mean,
                    fit.covariance(),
                    # Binary moments have one deterministic rule: "qmc" uses it too.
                    method="monte_carlo" if self.moments == "monte_carlo" else "rao_blackwell",
                    num_samples=self.num_samples or gradient_moments.DEFAULT_SAMPLES["monte_carlo"],
                    generator=self.generator,
                    nodes=self.nodes,
                    check=False,
                )
            fit = self._newton("multiclass", h, y, head, mean0, precision0, labelled)
            return gradient_moments.multiclass(
                h,
                y,
                fit.mean,
                fit.covariance(),
                method=self.moments,
                num_samples=None if self.moments == "qmc" else self.num_samples,
                generator=self.generator,
                check=False,
            )
        except NumericalError as err:
            raise NumericalError(f"{self._where()}, task group {group.name!r}: {err}") from err

    def _moment_cap(self, classes: int) -> int | None:
        """Return ``max_moment_nodes`` raised to the rule's minimum, an even count >= 2C."""
        cap = self.max_moment_nodes
        return None if cap is None else max(cap + cap % 2, 2 * classes)

    def _reducer(self) -> Callable[[Tensor], Tensor] | None:
        """Return the sum over the process group (None when single-process), resolved now."""
        from bayesagg.distributed import all_reduce_sum, resolve_group

        group = resolve_group(self.process_group)
        if group is None:
            return None
        return lambda t: all_reduce_sum(t, group)

    def _newton(
        self,
        kind: Literal["binary", "multiclass"],
        h: Tensor,
        y: Tensor,
        head: nn.Linear,
        prior_mean: Tensor,
        prior_precision: Tensor | KroneckerPrecision,
        labelled: Tensor | None,
    ) -> Gaussian | KroneckerGaussian:
        """Return a batch posterior of a classification group around its head
        (:func:`newton_posterior`), fitted on the ``labelled`` rows (None: all)."""
        return newton_posterior(
            kind,
            h,
            y,
            head.weight.detach().to(h.dtype),
            head.bias.detach().to(h.dtype),
            prior_mean,
            prior_precision,
            steps=self.newton_steps,
            damping=self.newton_damping,
            check=False,
            reduce=self.prior.reduce,
            labelled=labelled,
        )

    def _gradient_scale(self) -> float:
        """Return the factor on the aggregated gradient: K with ``scale_by_tasks``, else 1."""
        return float(self.num_tasks) if self.scale_by_tasks else 1.0

    def _posterior_bias(self, heads: Sequence[nn.Linear]) -> list[bool]:
        """Return whether each group's posterior has a bias (``regression_bias``)."""
        return [
            head.bias is not None and (self.regression_bias or not isinstance(g, Regression))
            for g, head in zip(self.groups, heads, strict=True)
        ]

    def representation_gradient(
        self, h: Tensor, heads: Sequence[nn.Linear], targets: Sequence[Tensor]
    ) -> Tensor:
        """Return the aggregated per-example gradients g [B, D] a BayesAgg step would use.

        The same computation as a step after the warm-up (paper Algorithm 1; times K with
        ``scale_by_tasks``), without its effects: no backward, no prior accumulation, no
        counters or weights updated. For diagnostics (:mod:`bayesagg.diagnostics`).
        """
        heads, targets, bias, labelled = self._check_step(h, heads, targets)
        return self._aggregate(h, heads, targets, bias, labelled)[1] * self._gradient_scale()

    def _aggregate(
        self,
        h: Tensor,
        heads: Sequence[nn.Linear],
        targets: Sequence[Tensor],
        bias: list[bool],
        labelled: Sequence[Tensor | None],
    ) -> tuple[Tensor, Tensor, Tensor, list[Tensor], list[Tensor]]:
        """Return (features, g, alpha, mus, variances): the aggregated gradients g [B, D] (paper
        Eq. 7), the weights alpha [B, K, D] and each group's moments, on detached features.

        With missing labels the weights are normalised over the tasks labelled on each example
        (0 for the others; the moments of those are 0 already, :meth:`_group_moments`)."""
        dtype = torch.promote_types(h.dtype, torch.float32)
        features = h.detach().to(dtype)
        with torch.no_grad(), _without_autocast(h.device):
            stacked: dict[int, tuple[Tensor, Tensor]] = {}
            for stack in self._kron_stacks(heads, labelled):
                stacked.update(self._stacked_moments(stack, heads, features, targets, labelled))
            moments = [
                stacked[i]
                if i in stacked
                else self._group_moments(i, group, head, features, y, bias[i], labelled[i])
                for i, (group, head, y) in enumerate(zip(self.groups, heads, targets, strict=True))
            ]
            mus = [m for m, _ in moments]
            variances = [v for _, v in moments]
            alpha = aggregation_weights(
                torch.cat(variances, dim=1),
                self._powers_for(dtype, h.device),
                self.eps,
                _present(self.groups, labelled, features.shape[0]),
            )
            g = (alpha * torch.cat(mus, dim=1)).sum(dim=1)
        return features, g, alpha, mus, variances

    def _powers_for(self, dtype: torch.dtype, device: torch.device) -> Tensor:
        """Return the per-task powers s [K] (s_regression or s_classification by task kind)."""
        key = (dtype, device)
        if key not in self._powers:
            self._powers[key] = torch.tensor(
                [
                    self.s_regression if kind == "regression" else self.s_classification
                    for kind in task_kinds(self.groups)
                ],
                dtype=dtype,
                device=device,
            )
        return self._powers[key]

    # ------------------------------------------------------------------ epochs and heads

    def end_epoch(self, heads: Sequence[nn.Linear] | None = None) -> None:
        """Refit the epoch-level prior on this epoch's data, clear the buffers, count the epoch.

        Classification priors are one Newton step around the heads as they are now (``heads``,
        by default those of the last :meth:`backward`). With ``regression_fit="epoch"`` and from
        the last warm-up epoch on, the regression heads are set to the new full-data posterior
        mean (paper Sec. 3.1, "Making predictions"). An epoch without steps changes no prior.
        """
        heads = self._heads if heads is None else self._check_heads(heads, None)
        with _without_autocast(heads[0].weight.device if heads else torch.device("cpu")):
            self._end_epoch(heads)

    def _end_epoch(self, heads: Sequence[nn.Linear] | None) -> None:
        self.prior.reduce = self._reducer()
        examples = self.prior.num_examples
        if self.prior.reduce is not None and heads:  # data parallelism: the global count
            count = torch.tensor([float(examples)], device=heads[0].weight.device)
            examples = int(self.prior.reduce(count).item())
        if examples > 0:
            if heads is None:
                raise ValueError("end_epoch needs the heads: none given and no backward seen")
            self.prior.refit(heads)
            # "refit" heads hold the caller's last eval-mode refit; an epoch without one still
            # gets the epoch's fit, so the heads are never more than an epoch old.
            if (
                (self.regression_fit == "epoch" or not self._refitted_this_epoch)
                and self.regression_heads == "fitted"
                and self.epoch + 1 >= self.warmup_epochs
            ):
                fitted = {
                    i: p
                    for i, (g, p) in enumerate(zip(self.groups, self.prior.posteriors, strict=True))
                    if isinstance(g, Regression) and p is not None
                }
                if fitted:
                    _write_regression_heads(heads, fitted)
                    self.regression_fit_source = (
                        f"full-data posterior mean of epoch {self.epoch} "
                        f"({examples} training examples, train-mode features)"
                    )
            if (
                self.classification_heads == "posterior_mean"
                and self.epoch + 1 >= self.warmup_epochs
            ):
                _write_regression_heads(
                    heads,
                    {
                        i: p
                        for i, (g, p) in enumerate(
                            zip(self.groups, self.prior.posteriors, strict=True)
                        )
                        if not isinstance(g, Regression) and p is not None
                    },
                )
        else:
            self.prior.clear()
        self._refitted_this_epoch = False
        self.epoch += 1

    def fit_regression_heads(
        self,
        heads: Sequence[nn.Linear],
        batches: Iterable[tuple[Tensor, Sequence[Tensor | None]]],
    ) -> dict[str, Gaussian]:
        """Return the regression groups' posteriors fitted on ``batches``, written into the heads.

        ``batches`` yields ``(h, targets)`` with ``targets`` one entry per group as in
        :meth:`backward` (classification entries may be ``None``). The fit is Bayesian linear
        regression with the isotropic prior N(0, gamma I) (or the evidence maximiser, with
        ``regression_prior="evidence"``) on all the batches, streamed (O(D^2) memory); use it with the trained encoder in eval mode for the final predictions
        (docs/bayesagg.md). The heads' weights (and biases) become the posterior means.
        A NaN target is a missing label: each output is fitted on the examples labelled for it.
        """
        regression = [i for i, g in enumerate(self.groups) if isinstance(g, Regression)]
        if not regression:
            raise ValueError("fit_regression_heads: no Regression task group declared")
        heads = self._check_heads(heads, None)
        statistics: dict[int, RegressionStatistics] = {}
        count = 0
        for number, (h, targets) in enumerate(batches):
            if len(targets) != len(self.groups):
                raise ValueError(
                    f"fit_regression_heads batch {number}: {len(targets)} targets for "
                    f"{len(self.groups)} task groups"
                )
            where = f"fit_regression_heads batch {number}"
            h = self._check_features(h, where, need_grad=False)
            heads = self._check_heads(heads, h.shape[1])
            if not bool(h.isfinite().all()):
                raise FloatingPointError(f"{where}: h contains NaN or infinite values")
            for i in regression:
                y = self._check_target(i, targets[i], h, where)
                if bool(y.isinf().any()):
                    raise FloatingPointError(
                        f"{where}, task group {self.groups[i].name!r}: targets contain NaN or "
                        "infinite values: an infinity (a NaN target is a missing label)"
                    )
                labelled = ~torch.isnan(y)
                features = h.detach()
                if self._posterior_bias(heads)[i]:
                    features = torch.cat([features, torch.ones_like(features[:, :1])], dim=1)
                if i not in statistics:
                    statistics[i] = RegressionStatistics(
                        features.shape[1],
                        cast(Regression, self.groups[i]).outputs,
                        device=h.device,
                    )
                # The rows labelled for each output only, when some label is missing.
                statistics[i].update(features, y, None if bool(labelled.all()) else labelled)
            count += h.shape[0]
        if count == 0:
            raise ValueError("fit_regression_heads: no batch given")
        reduce = self._reducer()
        fitted: dict[int, Gaussian] = {}
        for i in regression:
            if self.regression_prior == "evidence":
                last = self.prior.evidence[i]
                try:
                    fitted[i] = statistics[i].fit_evidence(
                        reduce,
                        initial=None
                        if last is None
                        else (last.prior_precision, last.noise_precision),
                        where=f"fit_regression_heads, task group {self.groups[i].name!r}",
                    )[0]
                    continue
                except NumericalError as err:  # said, never silent: the fixed prior instead
                    warnings.warn(
                        f"{err}. This refit uses the fixed prior N(0, gamma I) with noise "
                        f"variance noise_var (gamma {self.gamma:g}, noise_var {self.noise_var:g})",
                        RuntimeWarning,
                        stacklevel=2,
                    )
            fitted[i] = statistics[i].fit(self.gamma, self.noise_var, reduce)
        _write_regression_heads(heads, fitted)
        self.regression_fit_source = f"refit on {count} examples (fit_regression_heads)"
        self._refitted_this_epoch = True
        return {self.groups[i].name: p for i, p in fitted.items()}

    # ------------------------------------------------------------------ input checks

    def _where(self) -> str:
        return f"BayesAgg step {self.step} (epoch {self.epoch})"

    def _check_features(self, h: Tensor, where: str, *, need_grad: bool) -> Tensor:
        if not isinstance(h, Tensor):
            raise TypeError(f"{where}: h must be a tensor, got {type(h).__name__}")
        if h.ndim != 2:
            raise ValueError(f"{where}: h must have shape [B, D], got {tuple(h.shape)}")
        if h.shape[0] == 0:
            raise ValueError(f"{where}: empty batch (h has shape {tuple(h.shape)})")
        if h.shape[1] == 0:
            raise ValueError(f"{where}: h has no features (shape {tuple(h.shape)})")
        if not h.is_floating_point():
            raise ValueError(f"{where}: h must be floating point, got {h.dtype}")
        if need_grad and not h.requires_grad:
            raise ValueError(
                f"{where}: h does not require grad; pass the encoder's output, not a detached tensor"
            )
        return h

    def _check_heads(self, heads: Sequence[nn.Linear], dim: int | None) -> tuple[nn.Linear, ...]:
        heads = tuple(heads)
        if len(heads) != len(self.groups):
            raise ValueError(
                f"{len(heads)} heads for {len(self.groups)} task groups "
                f"({', '.join(g.name for g in self.groups)}); give one nn.Linear per group"
            )
        for group, head in zip(self.groups, heads, strict=True):
            if not isinstance(head, nn.Linear):
                raise TypeError(
                    f"task group {group.name!r}: the head must be an nn.Linear, got {type(head).__name__}"
                )
            if head.out_features != group.head_outputs:
                raise ValueError(
                    f"task group {group.name!r}: head has {head.out_features} outputs, the group "
                    f"needs {group.head_outputs}"
                )
            if dim is not None and head.in_features != dim:
                raise ValueError(
                    f"task group {group.name!r}: head takes {head.in_features} features, h has {dim}"
                )
            if not isinstance(group, Regression) and head.bias is None:
                raise ValueError(
                    f"task group {group.name!r}: classification heads need a bias "
                    "(the posterior is over weights and bias, docs/bayesagg-math.md stage 1)"
                )
        return heads

    def _check_target(self, index: int, y: Tensor | None, h: Tensor, where: str) -> Tensor:
        group = self.groups[index]
        name = f"{where}, task group {group.name!r}"
        if not isinstance(y, Tensor):
            raise TypeError(f"{name}: targets must be a tensor, got {type(y).__name__}")
        if y.device != h.device:
            raise ValueError(f"{name}: targets are on {y.device}, h on {h.device}")
        batch = h.shape[0]
        if isinstance(group, Multiclass):
            if tuple(y.shape) != (batch,):
                raise ValueError(
                    f"{name}: multiclass targets must be class ids of shape [{batch}], got {tuple(y.shape)}"
                )
            if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
                raise ValueError(f"{name}: class ids must be integers, got {y.dtype}")
            return y.long()
        if tuple(y.shape) != (batch, group.outputs):
            raise ValueError(
                f"{name}: {group.kind} targets must have shape [{batch}, {group.outputs}], "
                f"got {tuple(y.shape)}"
            )
        if y.is_complex():
            raise ValueError(f"{name}: targets must be real, got {y.dtype}")
        return y.to(torch.promote_types(h.dtype, torch.float32))

    def _check_step(
        self, h: Tensor, heads: Sequence[nn.Linear], targets: Sequence[Tensor]
    ) -> tuple[tuple[nn.Linear, ...], list[Tensor], list[bool], list[Tensor | None]]:
        """Return the checked (heads, targets, posterior biases, labelled masks) of a step.

        The masks, one per group, mark the labelled targets ([B, O]; [B] multiclass), or are
        None where every label of the group is present (then no mask is used anywhere)."""
        where = self._where()
        h = self._check_features(h, where, need_grad=True)
        heads = self._check_heads(heads, h.shape[1])
        if len(targets) != len(self.groups):
            raise ValueError(
                f"{where}: {len(targets)} targets for {len(self.groups)} task groups "
                f"({', '.join(g.name for g in self.groups)})"
            )
        targets = [self._check_target(i, y, h, where) for i, y in enumerate(targets)]
        # One device synchronisation for all value checks; messages are built only on failure.
        # Finiteness is screened by sums (a NaN or infinity makes the sum non-finite; cheaper
        # than an element-wise test) and confirmed element-wise only when a sum is not finite.
        checks: list[tuple[type[Exception], str, Tensor | _Finite]] = [
            (
                FloatingPointError,
                f"{where}: the representation h contains NaN or infinite values",
                _Finite(h),
            )
        ]
        labelled: list[Tensor] = []
        for group, head, y in zip(self.groups, heads, targets, strict=True):
            name = f"{where}, task group {group.name!r}"
            for pname, p in head.named_parameters():
                checks.append(
                    (
                        FloatingPointError,
                        f"{name}: head {pname} contains NaN or infinite values",
                        _Finite(p),
                    )
                )
            if isinstance(group, Multiclass):
                labelled.append(y != MISSING)
                valid = (((y >= 0) & (y < group.classes)) | ~labelled[-1]).all()
                checks.append(
                    (
                        ValueError,
                        f"{name}: class ids must be in [0, {group.classes}){_MISSING_LABELS}",
                        valid,
                    )
                )
                continue
            if isinstance(group, Regression):
                # NaN is a missing label; an infinity is an error.
                labelled.append(~torch.isnan(y))
                checks.append(
                    (
                        FloatingPointError,
                        f"{name}: targets contain NaN or infinite values: an infinity"
                        f"{_MISSING_LABELS}",
                        _Finite(y, nan=True),
                    )
                )
                continue
            labelled.append(y != MISSING)
            checks.append(
                (
                    FloatingPointError,
                    f"{name}: targets contain NaN or infinite values{_MISSING_LABELS}",
                    _Finite(y),
                )
            )
            valid = ((y == 0) | (y == 1) | ~labelled[-1]).all()
            checks.append(
                (ValueError, f"{name}: binary targets must be 0 or 1{_MISSING_LABELS}", valid)
            )
        screens = [flag.screen if isinstance(flag, _Finite) else flag for _, _, flag in checks]
        # Whether each group has every label, read in the same synchronisation as the checks.
        complete = [mask.all() for mask in labelled]
        flags = torch.stack([flag.to(h.device) for flag in [*screens, *complete]]).tolist()
        for (error, message, flag), ok in zip(checks, flags[: len(checks)], strict=True):
            if not ok and (not isinstance(flag, _Finite) or not bool(flag.exact())):
                raise error(message)
        masks = self._agreed_masks(labelled, [bool(ok) for ok in flags[len(checks) :]])
        bias = self._posterior_bias(heads)
        self.prior.check_bias(bias)
        return heads, targets, bias, masks

    def _agreed_masks(self, labelled: list[Tensor], complete: list[bool]) -> list[Tensor | None]:
        """Return the masks of the groups missing a label (None for the others).

        Data parallelism: a regression group whose labels are all present here but not on some
        other process takes the masked path too (an all-True mask), because the sums over
        processes of its per-output statistics need the same layout everywhere; one more
        reduction, only under data parallelism and only with a regression group.
        """
        reduce = self._reducer()
        regression = [i for i, g in enumerate(self.groups) if isinstance(g, Regression)]
        if reduce is not None and regression:
            device = labelled[0].device
            incomplete = torch.tensor([float(not complete[i]) for i in regression], device=device)
            for i, anywhere in zip(regression, reduce(incomplete).tolist(), strict=True):
                complete[i] = anywhere == 0
        return [None if ok else mask for mask, ok in zip(labelled, complete, strict=True)]


#: Appended to the target errors: how a missing label is written (bayesagg.tasks).
_MISSING_LABELS = (
    f" (a missing label is NaN for a regression target and {MISSING} for a binary or multiclass "
    "one; BayesAgg-MTL fits each task on its labelled examples)"
)


def _present(
    groups: Sequence[TaskGroup], labelled: Sequence[Tensor | None], batch: int
) -> Tensor | None:
    """Return which of the K tasks are labelled on each example, [B, K], or None if all are."""
    if all(mask is None for mask in labelled):
        return None
    columns = []
    for group, mask in zip(groups, labelled, strict=True):
        if mask is None:
            device = next(m for m in labelled if m is not None).device
            columns.append(torch.ones(batch, group.num_tasks, dtype=torch.bool, device=device))
        else:
            columns.append(mask if mask.ndim == 2 else mask[:, None])
    return torch.cat(columns, dim=1)


def _without_autocast(device: torch.device) -> torch.autocast:
    """Return a context in which ``device``'s autocast is off.

    Under a caller's ``torch.autocast`` (mixed precision) the posteriors, moments and weights
    would otherwise run their matrix products in bfloat16 or float16: they are computed in the
    features' dtype promoted to at least float32 (the fits in float64), whatever the encoder's.
    The backward pass runs with it off too (on the CPU it runs on the calling thread, where an
    active autocast would recast its products), as the heads' losses recomputed after the
    warm-up: a step inside an autocast region fills the gradients of a step outside one.
    """
    return torch.autocast(device.type, enabled=False)


def _write_regression_heads(
    heads: Sequence[nn.Linear], fitted: Mapping[int, Gaussian | KroneckerGaussian]
) -> None:
    """Set heads to posterior means [O, P] (last column the bias when P = D + 1, else bias 0)."""
    with torch.no_grad():
        for i, gaussian in fitted.items():
            head = heads[i]
            mean = gaussian.mean
            dim = head.in_features
            head.weight.copy_(mean[:, :dim].to(head.weight))
            if head.bias is not None and mean.shape[1] > dim:
                head.bias.copy_(mean[:, dim].to(head.bias))
            elif head.bias is not None:
                head.bias.zero_()  # a bias-free posterior (regression_bias=False)


class _Finite:
    """A deferred finiteness test: the cheap sum screen now, the exact test only if needed.

    ``nan=True`` lets NaN pass (a missing regression label): only infinities fail.
    """

    def __init__(self, tensor: Tensor, *, nan: bool = False) -> None:
        self.tensor = tensor.detach()
        self.nan = nan
        self.screen = (self.tensor.nansum() if nan else self.tensor.sum()).isfinite()

    def exact(self) -> Tensor:
        if self.nan:
            return ~self.tensor.isinf().any()
        return self.tensor.isfinite().all()


def _clone(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.detach().clone()
