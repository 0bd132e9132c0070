"""BayesAgg-MTL behind the registry's :class:`~bayesagg.methods.base.Method` contract.

A thin adapter: the method itself is :class:`bayesagg.BayesAgg` (paper Section 3;
docs/method.md and docs/bayesagg.md);
this class maps the common training-loop call ``method.backward(losses, ..., representation,
heads, targets)`` onto ``BayesAgg.backward(representation, heads, targets)`` and ``end_epoch``
onto the prior refit.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from torch import Tensor, nn

from bayesagg.bayes_agg import PAPER_BEHAVIOUR, BayesAgg
from bayesagg.methods.base import Method, Space, check_losses
from bayesagg.tasks import TaskGroup, check_groups
from bayesagg.tasks import num_tasks as count_tasks

__all__ = ["BayesAggMTL", "BayesAggMTLPaper"]


class BayesAggMTL(Method):
    """BayesAgg-MTL (Achituve et al., ICML 2024) on the shared representation.

    ``BayesAggMTL(num_tasks, groups=[...], **hparams)``: ``groups`` are the task groups in the
    order of the heads and targets, and ``num_tasks`` must equal their number of tasks; the
    other keyword arguments are :class:`bayesagg.BayesAgg`'s hyper-parameters (``s_regression``,
    ``s_classification``, ``gamma``, ``warmup_epochs``, ``moments``, ...).

    Note: ``backward`` only checks the ``losses`` it is given (shape, finiteness); BayesAgg-MTL
    recomputes each task's loss from ``representation``, ``heads`` and ``targets``, because it
    needs the per-example gradients w.r.t. the representation, not the losses' graph.
    """

    name: ClassVar[str] = "bayesagg"
    space: ClassVar[Space] = "representation"

    def __init__(self, num_tasks: int, *, groups: Sequence[TaskGroup], **hparams: Any) -> None:
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
        self.aggregator.backward(representation, heads, targets)  # type: ignore[arg-type]
        self.last_weights = self.aggregator.last_weights

    @property
    def process_group(self) -> Any:  # type: ignore[override]
        """The data-parallel group, shared with the :class:`BayesAgg` object (docs/distributed.md)."""
        return self.aggregator.process_group

    @process_group.setter
    def process_group(self, group: Any) -> None:
        self.aggregator.process_group = group

    def end_epoch(self, losses: Tensor | None = None) -> None:
        """Refit the epoch-level prior (and, by default, the regression heads); ``losses`` unused."""
        self.aggregator.end_epoch()

    def state_dict(self) -> dict[str, Any]:
        """Return the base state plus the full :class:`BayesAgg` state."""
        state = super().state_dict()
        state["bayesagg"] = self.aggregator.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output."""
        super().load_state_dict(state)
        self.aggregator.load_state_dict(state["bayesagg"])
        self.last_weights = self.aggregator.last_weights

    def reset(self) -> None:
        """Forget the priors, buffers, counters and last weights."""
        self.aggregator.reset()
        self.last_weights = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_tasks={self.num_tasks}, {self.aggregator!r})"


class BayesAggMTLPaper(BayesAggMTL):
    """BayesAgg-MTL as published: :class:`BayesAggMTL` with :data:`bayesagg.bayes_agg.PAPER_BEHAVIOUR`.

    One undamped Newton step for the classification posteriors and the aggregated gradient not
    rescaled by K (paper Sec. 3.2, Algorithm 1), where ``bayesagg`` uses the library's sturdier
    defaults (chosen by the ablation in docs/bayesagg-in-training.md). Keyword arguments override as for :class:`BayesAggMTL`.
    """

    name: ClassVar[str] = "bayesagg-paper"

    def __init__(self, num_tasks: int, *, groups: Sequence[TaskGroup], **hparams: Any) -> None:
        super().__init__(num_tasks, groups=groups, **{**PAPER_BEHAVIOUR, **hparams})
