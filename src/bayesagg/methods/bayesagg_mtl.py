"""BayesAgg-MTL behind the registry's :class:`~bayesagg.methods.base.Method` contract.

A thin adapter: the method itself is :class:`bayesagg.BayesAgg` (paper Section 3;
docs/bayesagg-math.md and docs/bayesagg.md);
this class maps the common training-loop call ``method.backward(losses, ..., representation,
heads, targets)`` onto ``BayesAgg.backward(representation, heads, targets)``, ``end_epoch``
onto the prior refit, and answers the training loop's hooks (warm-up, the end of the warm-up,
the eval-mode refit of the regression heads before an evaluation, the fitted tasks, notes).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, ClassVar, cast

import torch
from torch import Tensor, nn

from bayesagg.bayes_agg import PAPER_BEHAVIOUR, BayesAgg
from bayesagg.methods.base import Method, Space, check_losses
from bayesagg.tasks import Regression, TaskGroup, check_groups
from bayesagg.tasks import num_tasks as count_tasks

__all__ = ["BayesAggMTL", "BayesAggMTLPaper", "reset_optimizer_state"]


def reset_optimizer_state(optimizer: torch.optim.Optimizer, params: Sequence[Tensor]) -> int:
    """Forget the optimiser's state (Adam's moments and step) of ``params``; return how many.

    Used when BayesAgg-MTL's warm-up ends with ``reset_encoder_optimizer=True``: the encoder's
    Adam moments were accumulated on linear-scalarisation gradients, about K times larger than
    BayesAgg-MTL's (an option beyond the paper, from the ablation in
    docs/bayesagg.md, "The ablation that chose the defaults").
    """
    count = 0
    for p in params:
        if p in optimizer.state:
            del optimizer.state[p]
            count += 1
    return count


class BayesAggMTL(Method):
    """BayesAgg-MTL (Achituve et al., ICML 2024) on the shared representation.

    ``BayesAggMTL(num_tasks, groups=[...], **hparams)``: ``groups`` are the task groups in the
    order of the heads and targets, and ``num_tasks`` must equal their number of tasks; the
    other keyword arguments are :class:`bayesagg.BayesAgg`'s hyper-parameters (``s_regression``,
    ``s_classification``, ``gamma``, ``warmup_epochs``, ``moments``, ...), except
    ``reset_encoder_optimizer``, this adapter's own: when the warm-up ends, forget the encoder's
    optimiser state (:meth:`end_warmup`; beyond the paper).

    Note: ``backward`` only checks the ``losses`` it is given (shape, finiteness); BayesAgg-MTL
    recomputes each task's loss from ``representation``, ``heads`` and ``targets``, because it
    needs the per-example gradients w.r.t. the representation, not the losses' graph.
    """

    name: ClassVar[str] = "bayesagg"
    space: ClassVar[Space] = "representation"
    settings_family: ClassVar[str | None] = "bayesagg"
    needs_groups: ClassVar[bool] = True
    hparams_forwarded_to: ClassVar[type | None] = BayesAgg

    def __init__(
        self,
        num_tasks: int,
        *,
        groups: Sequence[TaskGroup],
        reset_encoder_optimizer: bool = False,
        **hparams: Any,
    ) -> None:
        super().__init__(num_tasks)
        check_groups(groups)
        declared = count_tasks(groups)
        if declared != num_tasks:
            raise ValueError(
                f"num_tasks={num_tasks} but the task groups "
                f"({', '.join(g.name for g in groups)}) hold {declared} tasks"
            )
        self.groups = tuple(groups)
        self.hparams = dict(hparams)
        self.reset_encoder_optimizer = bool(reset_encoder_optimizer)
        self.aggregator = BayesAgg(self.groups, **hparams)

    def backward(
        self,
        losses: Tensor,
        *,
        shared_parameters: Sequence[Tensor],
        task_parameters: Sequence[Tensor] = (),
        representation: Tensor | None = None,
        heads: Sequence[nn.Module] | None = None,
        targets: Sequence[Tensor] | None = None,
        loss_scale: float | Tensor | None = None,
    ) -> None:
        """Fill the encoder's gradients through ``representation`` and the heads' (see BayesAgg)."""
        check_losses(losses, self.num_tasks)
        missing = [
            name
            for name, value in (
                ("representation", representation),
                ("heads", heads),
                ("targets", targets),
            )
            if value is None
        ]
        if missing:
            raise ValueError(
                f"method 'bayesagg' needs representation, heads and targets; missing: {', '.join(missing)}"
            )
        # checked above; BayesAgg checks that the heads are nn.Linear
        self.aggregator.backward(
            cast(Tensor, representation),
            cast("Sequence[nn.Linear]", heads),
            cast(Any, targets),
            loss_scale=loss_scale,
        )
        self.last_weights = self.aggregator.last_weights

    @property
    def process_group(self) -> Any:
        """The data-parallel group, shared with the :class:`BayesAgg` object (docs/distributed.md)."""
        return self.aggregator.process_group

    @process_group.setter
    def process_group(self, group: Any) -> None:
        self.aggregator.process_group = group

    def end_epoch(self, losses: Tensor | None = None) -> None:
        """Refit the epoch-level prior (and, by default, the regression heads); ``losses`` unused."""
        self.aggregator.end_epoch()

    # -- the training loop's hooks (methods/base.py) -----------------------------------------
    def own_warmup_epochs(self) -> int:
        """Return the epochs of linear scalarisation before BayesAgg-MTL starts."""
        return self.aggregator.warmup_epochs

    def end_warmup(
        self, optimizer: torch.optim.Optimizer, shared_parameters: Sequence[Tensor]
    ) -> None:
        """With ``reset_encoder_optimizer``, forget the shared parameters' optimiser state."""
        if self.reset_encoder_optimizer:
            reset_optimizer_state(optimizer, shared_parameters)

    def before_evaluation(
        self,
        epoch: int,
        heads: Sequence[nn.Module],
        training_features: Callable[[], Iterable[tuple[Tensor, Sequence[Tensor]]]],
    ) -> None:
        """With ``regression_fit="refit"``, fit the regression heads on eval-mode features.

        From the last warm-up epoch on, and only for heads BayesAgg-MTL fits
        (``regression_heads="fitted"``), not for heads the optimiser trains (docs/bayesagg.md,
        "Which fit regression predictions use").
        """
        agg = self.aggregator
        if (
            agg.regression_fit == "refit"
            and agg.regression_heads == "fitted"
            and any(isinstance(g, Regression) for g in self.groups)
            and epoch + 1 >= agg.warmup_epochs
        ):
            agg.fit_regression_heads(heads, training_features())  # type: ignore[arg-type]

    def fitted_tasks(self) -> list[int]:
        """Return the regression tasks whose heads hold a fit (:attr:`BayesAgg.fitted_tasks`)."""
        return self.aggregator.fitted_tasks

    def report_notes(self) -> list[str]:
        """Return which fit the regression heads hold at the end of training, if any."""
        source = self.aggregator.regression_fit_source
        return [f"BayesAgg-MTL regression heads at the end of training: {source}"] if source else []

    def state_dict(self) -> dict[str, Any]:
        """Return the base state plus the full :class:`BayesAgg` state."""
        state = super().state_dict()
        state["bayesagg"] = self.aggregator.state_dict()
        state["reset_encoder_optimizer"] = self.reset_encoder_optimizer
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output (the configuration must match this object's)."""
        # States saved while the option was BayesAgg's hold it in its configuration.
        theirs = state.get(
            "reset_encoder_optimizer",
            state["bayesagg"]["config"].get("reset_encoder_optimizer", False),
        )
        if bool(theirs) != self.reset_encoder_optimizer:
            raise ValueError(
                "BayesAgg-MTL state does not match this configuration (reset_encoder_optimizer: "
                f"{theirs!r} in state, {self.reset_encoder_optimizer!r} here)"
            )
        super().load_state_dict(state)
        self.aggregator.load_state_dict(state["bayesagg"])
        self.last_weights = self.aggregator.last_weights

    def reset(self) -> None:
        """Forget the priors, buffers, counters and last weights."""
        self.aggregator.reset()
        self.last_weights = None

    def __repr__(self) -> str:
        reset = ", reset_encoder_optimizer=True" if self.reset_encoder_optimizer else ""
        return f"{type(self).__name__}(num_tasks={self.num_tasks}, {self.aggregator!r}{reset})"


class BayesAggMTLPaper(BayesAggMTL):
    """BayesAgg-MTL as published: :class:`BayesAggMTL` with :data:`bayesagg.bayes_agg.PAPER_BEHAVIOUR`.

    One undamped Newton step for the classification posteriors and the aggregated gradient not
    rescaled by K (paper Sec. 3.2, Algorithm 1), where ``bayesagg`` uses the library's sturdier
    defaults (chosen by the ablation in docs/bayesagg.md, "The ablation that chose the defaults"). Keyword arguments override as for :class:`BayesAggMTL`.
    """

    name: ClassVar[str] = "bayesagg-paper"

    def __init__(self, num_tasks: int, *, groups: Sequence[TaskGroup], **hparams: Any) -> None:
        super().__init__(num_tasks, groups=groups, **{**PAPER_BEHAVIOUR, **hparams})
