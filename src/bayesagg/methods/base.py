"""The one training-loop contract every multi-task method follows.

A training step computes the K per-task mean losses (graph attached) and hands them to the
method, together with what the method may need:

    losses = bayesagg.tasks.task_losses(groups, [head(h) for head in heads], targets)
    method.backward(
        losses,
        shared_parameters=list(encoder.parameters()),
        task_parameters=list(heads.parameters()),
        representation=h,                 # needed by the -UB methods and BayesAgg-MTL
        heads=heads, targets=targets,     # needed by BayesAgg-MTL only
    )
    optimizer.step()
    if method.needs_after_step:           # FAMO: the same batch's losses after the update
        method.after_step(new_losses)
    ...
    method.end_epoch(epoch_mean_losses)   # DWA, IGBv2, BayesAgg-MTL (prior refit)

``backward`` fills ``.grad`` (accumulating, like ``Tensor.backward``) of

- the shared parameters, with the method's combined direction (in parameter space, or in
  representation space pushed through the encoder with ``representation.backward``);
- the task-specific parameters, with the gradient of the plain sum of the task losses (each
  head only sees its own loss, so this is each head's own gradient), except for loss-weighting
  methods, where every parameter receives the gradient of the weighted sum (their definition).

Methods with trainable parameters (UW, GradNorm, FAMO) expose them through ``parameters()``
so the caller can add them to an optimiser, or update them internally and say so.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from typing import Any, ClassVar, Literal, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from bayesagg.tasks import check_loss_scale

__all__ = [
    "Aggregator",
    "DeclaredFields",
    "Method",
    "Space",
    "StepInputs",
    "StepMethod",
    "check_losses",
    "running_state",
]

Space = Literal["loss", "parameters", "representation"]


def check_losses(losses: Tensor, num_tasks: int) -> None:
    """Raise ``ValueError`` unless ``losses`` is a finite vector of ``num_tasks`` losses."""
    if losses.ndim != 1 or losses.shape[0] != num_tasks:
        raise ValueError(
            f"expected {num_tasks} task losses of shape [{num_tasks}], got {tuple(losses.shape)}"
        )
    bad = ~torch.isfinite(losses.detach())
    if bad.any():
        idx = bad.nonzero().flatten().tolist()
        raise FloatingPointError(f"non-finite loss for task(s) {idx}: {losses.detach().tolist()}")


def running_state(state: Tensor | None, value: Tensor, mismatch: str) -> Tensor:
    """Return a running per-coordinate state kept across steps: zeros like ``value`` at first.

    ExcessMTL's sums of squared gradients and DB-MTL's gradient EMA hold one entry per
    coordinate of each step's ``value``; a ``value`` of another shape means another model, so
    ``ValueError(mismatch)`` is raised, ``mismatch`` formatted with the two shapes
    (``{state}``, ``{value}``).
    """
    if state is None:
        return torch.zeros_like(value)
    if state.shape != value.shape:
        raise ValueError(mismatch.format(state=tuple(state.shape), value=tuple(value.shape)))
    return state


class Method(ABC):
    """Base class: one object per training run, holding only the method's own state."""

    #: Registry name, e.g. ``"nash-mtl"``.
    name: ClassVar[str] = ""
    #: Where the method combines the tasks.
    space: ClassVar[Space] = "parameters"
    #: True if :meth:`after_step` must be called after each optimiser step.
    needs_after_step: ClassVar[bool] = False
    #: Data parallelism (docs/distributed.md): the torch.distributed group whose processes hold
    #: the parts of the global batch. None: the default group when torch.distributed is
    #: initialised, else single-process; False: never communicate.
    process_group: Any = None

    def __init__(self, num_tasks: int) -> None:
        if num_tasks < 1:
            raise ValueError(f"num_tasks must be >= 1, got {num_tasks}")
        self.num_tasks = num_tasks
        #: The last task weights the method used (shape [K]) where it has weights, for plots.
        self.last_weights: Tensor | None = None

    @abstractmethod
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
        """Fill the ``.grad`` of shared and task-specific parameters for this step.

        ``loss_scale``: a float16 ``torch.amp.GradScaler``'s current scale. The method then
        computes its weights from the step's own (unscaled) losses and gradients and fills
        ``.grad`` with its gradients times the scale, every backward pass through the network
        carrying the scaled values (so float16 gradients do not underflow), as
        ``scaler.scale(loss).backward()`` would; ``scaler.step(optimizer)`` then unscales them.
        """

    def after_step(self, losses: Tensor) -> None:  # noqa: B027 - optional hook
        """Called with the same batch's losses after the optimiser step (FAMO); default: nothing."""

    def end_epoch(self, losses: Tensor | None = None) -> None:  # noqa: B027 - optional hook
        """Called at the end of each training epoch with the epoch's mean task losses [K]."""

    def parameters(self) -> list[nn.Parameter]:
        """Return the method's trainable parameters for the caller's optimiser (default none)."""
        return []

    def reduces_shared_gradients(self) -> bool:
        """Whether, under data parallelism, ``backward`` leaves the shared parameters' ``.grad``
        already reduced over the processes (the global batch's direction on every rank).

        If False (default), ``.grad`` holds this process's share and the caller averages it over
        the processes (:func:`bayesagg.distributed.average_gradients`, as DDP would); if True,
        the caller averages only the task-specific parameters' and the method's own gradients.
        """
        return False

    def state_dict(self) -> dict[str, Any]:
        """Return everything needed to resume this method."""
        return {"num_tasks": self.num_tasks, "last_weights": self.last_weights}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the state returned by :meth:`state_dict`."""
        if state.get("num_tasks") != self.num_tasks:
            raise ValueError(
                f"state is for {state.get('num_tasks')} tasks, this {self.name} has {self.num_tasks}"
            )
        self.last_weights = state.get("last_weights")

    def reset(self) -> None:  # noqa: B027 - stateless by default
        """Forget any state accumulated during training."""

    # -- training-loop hooks: what a runner asks a method beyond one step (no-ops by default) --
    #: The key of the method's settings in a protocol's ``method_settings`` (None: it has none).
    settings_family: ClassVar[str | None] = None
    #: True if the constructor takes the task groups (``groups=``) besides ``num_tasks``.
    needs_groups: ClassVar[bool] = False
    #: The class the constructor hands its ``**hparams`` to (None: none), whose constructor's
    #: parameters are then the method's hyper-parameters too (for checking ``--hp`` values).
    hparams_forwarded_to: ClassVar[type | None] = None

    def own_warmup_epochs(self) -> int | None:
        """Return the epochs of the method's own warm-up before it acts (None: it has none).

        A runner starts the protocol's shared-gradient clipping when the warm-up ends and calls
        :meth:`end_warmup` then; a method without a warm-up leaves that to the protocol.
        """
        return None

    def end_warmup(  # noqa: B027 - optional hook
        self, optimizer: torch.optim.Optimizer, shared_parameters: Sequence[Tensor]
    ) -> None:
        """Called once, before the first epoch after the warm-up, with the run's optimiser."""

    def before_evaluation(  # noqa: B027 - optional hook
        self,
        epoch: int,
        heads: Sequence[nn.Module],
        training_features: Callable[[], Iterable[tuple[Tensor, Sequence[Tensor]]]],
    ) -> None:
        """Called after :meth:`end_epoch` of epoch ``epoch`` (0-based), before evaluating.

        ``training_features()`` yields ``(h, targets)`` for the training set with the encoder in
        evaluation mode and without gradients (targets as the training steps see them), for a
        method whose predictions depend on a fit to the training set.
        """

    def fitted_tasks(self) -> Sequence[int]:
        """Return the tasks whose heads the method fits rather than the optimiser trains.

        Their training losses are those of heads fitted on earlier features, so a runner checks
        only that they are finite, not that they stay near their first value (default none).
        """
        return ()

    def report_notes(self) -> list[str]:
        """Return sentences a run's result should carry about the method's end state (none)."""
        return []

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_tasks={self.num_tasks})"


class DeclaredFields:
    """``__repr__`` and ``state_dict`` / ``load_state_dict`` from fields a class declares.

    Mixed in before :class:`Method` (``class X(DeclaredFields, Method)``). A class lists

    - :attr:`hyperparameters`: the constructor keywords ``repr`` shows, read from the attributes
      of the same name (a tensor is shown as a list);
    - :attr:`state_fields`: the attributes that make up its resumable state, each saved under
      its own name, or ``(key, attribute)`` where the checkpoint key differs from the attribute.

    What is saved depends on the attribute's current value: a ``torch.Generator`` its
    ``get_state()``, a tensor a detached copy, a NumPy array a copy, anything else as is. On
    loading, the type of the attribute's current value decides again (an array comes back as a
    float64 array, a tensor as a copy with the saved dtype, an int as an int), so every field
    round-trips without a hand-written pair of methods. A subclass inherits the declarations
    (it redeclares them to change them); a class whose state needs more (a check, an in-place
    copy, a sub-object's own state) extends the two methods.
    """

    #: Constructor keywords shown by ``repr`` after ``num_tasks``, in order.
    hyperparameters: ClassVar[tuple[str, ...]] = ()
    #: Attributes saved by ``state_dict``: a name, or ``(checkpoint key, attribute)``.
    state_fields: ClassVar[tuple[str | tuple[str, str], ...]] = ()

    num_tasks: int

    @classmethod
    def _fields(cls) -> list[tuple[str, str]]:
        return [(f, f) if isinstance(f, str) else f for f in cls.state_fields]

    def state_dict(self) -> dict[str, Any]:
        """Return the base state plus every declared state field (copied)."""
        state = super().state_dict()  # type: ignore[misc]
        for key, attr in self._fields():
            value = getattr(self, attr)
            if isinstance(value, torch.Generator):
                value = value.get_state()
            elif isinstance(value, Tensor):
                value = value.detach().clone()
            elif isinstance(value, np.ndarray):
                value = value.copy()
            elif isinstance(value, list):
                value = [v.clone() if isinstance(v, Tensor) else v for v in value]
            state[key] = value
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the base state and every declared state field."""
        super().load_state_dict(state)  # type: ignore[misc]
        for key, attr in self._fields():
            current, value = getattr(self, attr), state[key]
            if isinstance(current, torch.Generator):
                current.set_state(value)
                continue
            if value is None:
                pass
            elif isinstance(current, np.ndarray):
                value = np.array(value, dtype=np.float64)
            elif isinstance(value, Tensor):
                value = value.detach().clone()
            elif isinstance(value, list):
                value = [v.detach().clone() if isinstance(v, Tensor) else v for v in value]
            elif isinstance(current, int | float) and not isinstance(current, bool):
                value = type(current)(value)
            setattr(self, attr, value)

    def __repr__(self) -> str:
        shown = [f"num_tasks={self.num_tasks}"]
        for name in self.hyperparameters:
            value = getattr(self, name)
            shown.append(f"{name}={(value.tolist() if isinstance(value, Tensor) else value)!r}")
        return f"{type(self).__name__}({', '.join(shown)})"


class StepInputs(NamedTuple):
    """What :meth:`StepMethod.fill_gradients` receives of ``backward``'s keywords."""

    shared_parameters: Sequence[Tensor]
    task_parameters: Sequence[Tensor]
    representation: Tensor | None
    #: The GradScaler's scale (1.0: none): the gradients filled are the step's times it.
    loss_scale: float = 1.0


class StepMethod(DeclaredFields, Method):
    """A method that needs, of the training step, only the losses, the parameters and (for the
    representation-space aggregators) the representation.

    ``backward`` spells out the contract's keywords once: it checks the losses and calls
    :meth:`fill_gradients`, which subclasses implement. BayesAgg-MTL, which also needs the
    heads and targets, implements ``backward`` itself.
    """

    #: Whether :meth:`fill_gradients` honours ``inputs.loss_scale`` (a float16 GradScaler's
    #: scale); ``backward`` refuses a scale otherwise, naming the method.
    takes_loss_scale: ClassVar[bool] = False

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
        """Check the losses, then :meth:`fill_gradients` (``heads``, ``targets`` unused)."""
        check_losses(losses, self.num_tasks)
        name = self.name or type(self).__name__
        scale = check_loss_scale(loss_scale, name)
        if scale != 1.0 and not self.takes_loss_scale:
            raise ValueError(
                f"{name} does not take a loss_scale (a float16 GradScaler) yet: its rule reads "
                "gradient norms or keeps running gradient state; train it with bfloat16 "
                "autocast, which needs no scaler"
            )
        # Autocast off: under a caller's mixed precision the Gramians, solvers and weighted sums
        # would otherwise run in bfloat16 / float16; the gradients keep their own dtypes.
        with torch.autocast(losses.device.type, enabled=False):
            self.fill_gradients(
                losses, StepInputs(shared_parameters, task_parameters, representation, scale)
            )

    @abstractmethod
    def fill_gradients(self, losses: Tensor, inputs: StepInputs) -> None:
        """Accumulate this step's gradients into the parameters' ``.grad`` (losses checked)."""


class Aggregator(StepMethod):
    """A method that combines a K x P Jacobian into one direction of length P.

    Subclasses implement :meth:`aggregate`; ``backward`` computes the Jacobian of the losses
    w.r.t. the shared parameters (``space = "parameters"``) or w.r.t. the representation,
    flattened per example to B*D as in Sener & Koltun 2018 (``space = "representation"``),
    and applies the direction. Most aggregators are Gramian weightings
    (:class:`bayesagg.methods.gramian.GramianWeighting`): they state only how the K x K
    Gramian gives the task weights.

    ``aggregate`` of a Jacobian that requires grad returns a direction that keeps its graph as
    ``w @ J`` would with the weights ``w`` held constant: the weights are computed from the
    detached Jacobian (solvers, NumPy), never differentiated.
    """

    #: Whether :meth:`data_parallel_direction` gives the exact global direction under data
    #: parallelism in representation space (docs/distributed.md). Declared by the class that
    #: provides that form; a subclass that overrides ``aggregate``, ``direction`` or ``combine``
    #: loses it unless it declares it again in its own body (its rule may look at single
    #: coordinates of the Jacobian, which the data-parallel forms do not see).
    data_parallel: ClassVar[bool] = False
    takes_loss_scale: ClassVar[bool] = True
    #: What the method guarantees for every Jacobian, checked for every registered aggregator
    #: by tests/test_methods_properties.py: "non_conflicting" (``min_i g_i . d >= 0``: no
    #: task's loss increases to first order), "permutation_invariant" (reordering the tasks
    #: leaves ``d`` unchanged), "scale_homogeneous" (``d(s J) = s d(J)`` for ``s > 0``).
    #: :meth:`claims` refines them by the hyper-parameters.
    properties: ClassVar[frozenset[str]] = frozenset()
    #: The relative accuracy of the method's solver, to which its properties hold beyond
    #: rounding (0: a closed form or an exact solver).
    accuracy: ClassVar[float] = 0.0

    def claims(self) -> frozenset[str]:
        """Return the properties this instance guarantees (default: the class's)."""
        return self.properties

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        own = vars(cls)
        if {"aggregate", "direction", "combine"} & own.keys() and "data_parallel" not in own:
            cls.data_parallel = False

    def __init__(self, num_tasks: int) -> None:
        super().__init__(num_tasks)
        # whether batched (vmap) Jacobians work for the caller's graph; found on first use
        self._jacobian_state: dict[str, bool] = {}

    @abstractmethod
    def aggregate(self, jacobian: Tensor) -> Tensor:
        """Return the combined direction [P] of a Jacobian [K, P] (rows are task gradients)."""

    def check_rows(self, jacobian: Tensor) -> None:
        """Raise ``ValueError`` unless ``jacobian`` has one row per task."""
        if jacobian.ndim < 1 or jacobian.shape[0] != self.num_tasks:
            raise ValueError(
                f"{self.name or type(self).__name__}: expected a Jacobian with {self.num_tasks} "
                f"rows (one per task), got shape {tuple(jacobian.shape)}"
            )

    def data_parallel_direction(
        self, jacobian: Tensor, losses: Tensor, representation: Tensor, group: Any
    ) -> Tensor:
        """Return this process's share [B/N, *D] of the global batch's direction.

        ``jacobian`` [K, B/N, *D] holds the local mean losses' gradients w.r.t. the local
        representation; the mean over processes of what each pushes through the encoder must
        be the one-process gradient of the global batch. Only classes with
        :attr:`data_parallel` provide it.
        """
        raise NotImplementedError(
            f"{self.name or type(self).__name__} in representation space has no exact "
            "data-parallel form (its direction is not w(J J^T) @ J); run it on one process"
        )

    def fill_gradients(self, losses: Tensor, inputs: StepInputs) -> None:
        """Fill ``.grad`` with the aggregated direction (shared) and the summed gradient (heads).

        One differentiation gives both the K x P Jacobian (w.r.t. the shared parameters, or
        w.r.t. the representation for ``space = "representation"``) and the task-specific
        parameters' per-task gradients, whose sum (the gradient of ``losses.sum()``) goes into
        their ``.grad``. In representation space the direction [B, D] is then pushed through
        the encoder with ``representation.backward`` (restricted to ``shared_parameters`` when
        given). ``heads`` and ``targets`` are not used by aggregators.

        Representation space keeps the per-example gradients: the Jacobian rows are the
        gradients of the mean losses w.r.t. h, flattened to B*D (Sener & Koltun 2018); other
        libraries (LibMTL's ``rep_grad``) first sum them over the batch (K x D). The heads'
        per-task gradients cost K times the heads' size in memory (small linear heads here).
        The Jacobian is one batched (``vmap``) backward pass; if the graph has an op that
        cannot be batched, the first call finds out, logs it and uses K passes from then on.
        """
        shared_parameters, task_parameters, representation, scale = inputs
        from bayesagg.distributed import all_reduce_mean, resolve_group
        from bayesagg.methods._jacobian import accumulate_grad, check_inputs, jacobians_auto

        shared = check_inputs(shared_parameters, "shared_parameters")
        task = check_inputs(task_parameters, "task_parameters")
        if {id(t) for t in shared} & {id(t) for t in task}:
            raise ValueError("a tensor is both in shared_parameters and task_parameters")
        if self.space == "representation":
            if representation is None:
                raise ValueError(
                    f"{self.name or type(self).__name__} aggregates the gradients w.r.t. the "
                    "shared representation: pass representation=h"
                )
            if not representation.requires_grad:
                raise ValueError("representation does not require grad (was it detached?)")
            targets_ = [representation]
        else:
            if not shared:
                raise ValueError("shared_parameters is empty: nothing to aggregate over")
            targets_ = shared
        # A GradScaler's scale: the backward passes carry the scaled losses (no float16
        # underflow), the rule sees the step's own gradients, the output is scaled again.
        jacs = jacobians_auto(
            losses if scale == 1.0 else losses * scale,
            targets_ + task,
            retain_graph=False,
            state=self._jacobian_state,
        )
        target_jacs, task_jacs = jacs[: len(targets_)], jacs[len(targets_) :]
        if scale != 1.0:
            target_jacs = [j / scale for j in target_jacs]
            if not all(bool(j.isfinite().all()) for j in target_jacs):
                # A float16 overflow: NaN gradients, so the GradScaler skips the step and lowers
                # its scale, as it does for a plain backward; the rule never sees them.
                self._fill_overflow(task, task_jacs, shared, representation)
                return
        k = self.num_tasks
        group = resolve_group(self.process_group)
        if self.space == "representation" and group is not None:
            assert representation is not None  # checked above for this space
            # data parallelism: weights from the all-reduced Gramian, applied to the local rows
            from bayesagg.methods._data_parallel import representation_direction

            direction = representation_direction(
                self, target_jacs[0], losses, representation, group
            )
        elif self.space == "representation":
            direction = self.direction(target_jacs[0], losses=losses, representation=representation)
        else:
            # data parallelism: the global batch's Jacobian is the mean of the processes' ones
            flat = all_reduce_mean(torch.cat([j.reshape(k, -1) for j in target_jacs], dim=1), group)
            if group is not None:
                losses = all_reduce_mean(losses.detach(), group)  # MGDA's loss normalisation
            direction = self.direction(flat, losses=losses, representation=None)
        if task:  # the heads' rows still carry the scale
            w = self.task_weights().to(task_jacs[0])
            accumulate_grad(
                task, torch.cat([torch.tensordot(w, j, dims=1).reshape(-1) for j in task_jacs])
            )
        if scale != 1.0:
            direction = direction * scale
        if self.space == "representation":
            assert representation is not None  # checked above for this space
            torch.autograd.backward(
                representation,
                direction.view_as(representation).to(representation.dtype),
                inputs=shared or None,
            )
        else:
            accumulate_grad(shared, direction)

    @staticmethod
    def _fill_overflow(
        task: Sequence[Tensor],
        task_jacs: Sequence[Tensor],
        shared: Sequence[Tensor],
        representation: Tensor | None,
    ) -> None:
        """Fill every gradient with NaN (a scaled step overflowed; the scaler skips it)."""
        from bayesagg.methods._jacobian import accumulate_grad

        if task:
            accumulate_grad(task, torch.cat([j.sum(dim=0).reshape(-1) for j in task_jacs]))
        if representation is not None and representation.requires_grad and not shared:
            torch.autograd.backward(representation, torch.full_like(representation, math.nan))
            return
        for p in shared:
            p.grad = torch.full_like(p, math.nan)

    def direction(
        self, jacobian: Tensor, *, losses: Tensor, representation: Tensor | None
    ) -> Tensor:
        """Return the direction for a Jacobian [K, *S] (S = P or the representation's shape).

        The hook used by :meth:`backward`; the default flattens to [K, P] and calls
        :meth:`aggregate`. Methods that need the losses (MGDA's loss normalisation) or the
        representation's layout (GradDrop) override it.
        """
        return self.aggregate(jacobian.reshape(jacobian.shape[0], -1)).view(jacobian.shape[1:])

    def task_weights(self) -> Tensor:
        """Return the K weights of the task losses whose gradient the heads receive (ones)."""
        return torch.ones(self.num_tasks)

    def reduces_shared_gradients(self) -> bool:
        """Parameter space: the direction is computed from the all-reduced Jacobian (True)."""
        return self.space == "parameters"
