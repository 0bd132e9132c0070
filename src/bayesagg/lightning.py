"""Any registry method (BayesAgg-MTL and the baselines) in PyTorch Lightning: :class:`MultiTaskModule`.

An optional extra (``pip install -e ".[lightning]"``): ``import bayesagg`` never imports
Lightning; this module does, and only when a user imports it.

A multi-task method (:mod:`bayesagg.methods.base`) fills the parameters' ``.grad`` itself: the
parameter-space aggregators from a K x P Jacobian, the representation-space ones (the ``-ub``
forms, BayesAgg-MTL, paper Sec. 3) through ``representation.backward``, the loss weightings from
the weighted sum. That is Lightning's *manual optimisation*: :class:`MultiTaskModule` sets
``automatic_optimization = False`` and its ``training_step`` runs the project's training step
(the order of ``bayesagg.runner.train.training_step``):

1. forward: ``h = encoder(x)``, one output per head, the K task losses
   (:func:`bayesagg.tasks.task_losses`);
2. ``method.backward(losses, shared_parameters=..., task_parameters=..., representation=h,
   heads=heads, targets=targets)``;
3. under data parallelism, the mean over the processes of every gradient that is a per-process
   share (:func:`bayesagg.distributed.average_gradients`, skipping the encoder where the method
   already reduced it), as ``bayesagg run --nproc N`` does;
4. every optimiser's step (Lightning's ``on_before_optimizer_step`` hook sees the final
   gradients: the place for gradient clipping), then ``method.after_step`` with the same batch's
   losses after the update when ``method.needs_after_step`` (FAMO).

At the end of the epoch's last training batch, *before* Lightning's validation loop and its
checkpoint callbacks, the module calls ``method.end_epoch`` with the epoch's mean task losses
(over all processes): DWA's and IGBv2's weights, BayesAgg-MTL's full-data prior refit, which
also writes its regression heads. It logs those losses as ``train_loss/<task name>`` (for
loggers, and for a ``ModelCheckpoint`` to monitor) and keeps them in ``last_epoch_losses``. With :meth:`MultiTaskModule.refit_batches` overridden it then
calls ``method.before_evaluation`` (BayesAgg-MTL's eval-mode refit of its regression heads,
``regression_fit="refit"``). At the start of the first epoch after the method's own warm-up
(``method.own_warmup_epochs()``) it calls ``method.end_warmup`` with each optimiser.

Two hooks are the runner's, not a training step's: ``method.fitted_tasks()`` (the tasks whose
heads hold a fit, for a divergence check) and ``method.report_notes()`` (sentences for a run's
result); read them from ``module.method``. A method with its own parameters keeps them where it
was built: UW on a GPU needs ``method_options={"device": ...}`` (it says so otherwise).

Checkpoints: :meth:`MultiTaskModule.on_save_checkpoint` stores ``method.state_dict()`` (and the
running sums of the current epoch) under the key ``"bayesagg"`` of Lightning's checkpoint, and
:meth:`MultiTaskModule.on_load_checkpoint` restores them, so ``ModelCheckpoint`` and
``Trainer.fit(ckpt_path=...)`` resume a run where it stopped. A checkpoint taken at an epoch's end
(``ModelCheckpoint``'s default) resumes exactly when the training batches of the later epochs are
the same as in the uninterrupted run (a loader without shuffling, or a sampler whose order is a
function of the epoch, which Lightning sets with ``set_epoch``); Lightning does not store the
global random state, which a ``DataLoader(shuffle=True)`` draws its order from.

Data parallelism (``Trainer(strategy="ddp", devices=N)``; docs/distributed.md). Lightning's
DDP strategy wraps the module in ``DistributedDataParallel``; with manual optimisation DDP's
reducer all-reduces only inside ``LightningModule.manual_backward``, which this module never
calls (a method's ``torch.autograd.grad`` and ``representation.backward`` are not a loss's
backward), so DDP averages no gradient and nothing is reduced twice: the methods all-reduce the
statistics their directions depend on over torch.distributed's default group (the one Lightning
initialises; ``method.process_group`` None), and step 3 above averages the per-process shares,
exactly what the runner does with DDP under ``no_sync()``. DDP still synchronises the initial
weights and the buffers at each forward. Lightning's default ``DistributedSampler`` gives each
process every N-th example of the shuffled set, so the N processes' batches of B/N make up one
global batch of B: the run is the one-process run with batch size B, up to rounding. NTKMTL-SR's
data-parallel form assumes each process holds a contiguous slice of the global batch (a sampler
like the runner's); every other method only needs equal shares.

16-bit mixed precision (``Trainer(precision="16-mixed")``): the precision plugin's gradient
scaler lives in ``manual_backward``, which this module never calls, so the module hands the
scaler's scale to ``method.backward(..., loss_scale=...)`` instead (the method's weights from the
unscaled step, the scaled gradients in ``.grad``) and Lightning's optimiser step unscales them,
skips an overflowed step and updates the scale as usual. The methods that refuse a loss scale
(FAMO, GradNorm, DB-MTL) say so at their first step; ``"bf16-mixed"`` needs no scaler.
Not supported: gradient accumulation and Lightning's ``gradient_clip_val`` (Lightning refuses both under manual optimisation; clip in
``on_before_optimizer_step``). Learning-rate schedulers of ``configure_optimizers`` with interval
``"step"`` or ``"epoch"`` are stepped after each step or after the epoch's end (every
``frequency``); a ``ReduceLROnPlateau`` is left to the user (it needs a metric).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, cast

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import move_data_to_device
from torch import Tensor, nn

import bayesagg.methods
from bayesagg.distributed import all_reduce_mean, average_gradients, resolve_group
from bayesagg.methods.base import Method
from bayesagg.tasks import TaskGroup, check_groups, num_tasks, task_losses, task_names

__all__ = ["CHECKPOINT_KEY", "MultiTaskModule", "build_method"]

#: The key of Lightning's checkpoint dictionary under which the method's state is saved.
CHECKPOINT_KEY = "bayesagg"


def build_method(
    method: str | Method, groups: Sequence[TaskGroup], options: Mapping[str, Any] | None = None
) -> Method:
    """Return ``method`` as given, or the registry method of that name for the task groups.

    A name is built with ``bayesagg.methods.create(name, num_tasks=K, **options)``, with the
    task groups added for the methods that need them (BayesAgg-MTL). Options with an instance
    are an error: they would be silently ignored.
    """
    if isinstance(method, Method):
        if options:
            raise ValueError(
                f"method_options {sorted(options)} given with a method instance "
                f"({method!r}); pass them to its constructor instead"
            )
        return method
    if not isinstance(method, str):
        raise TypeError(
            f"method must be a registry name or a bayesagg.methods.Method, got {type(method).__name__}"
        )
    settings = dict(options or {})
    if bayesagg.methods.needs_groups(method):
        settings.setdefault("groups", tuple(groups))
    return bayesagg.methods.create(method, num_tasks=num_tasks(groups), **settings)


class MultiTaskModule(pl.LightningModule):
    """A LightningModule that trains a shared encoder and one head per task group with a method.

    ``MultiTaskModule(encoder, heads, groups, method="bayesagg", method_options=..., lr=...)``:

    - ``encoder``: the shared network, ``h = encoder(x)`` (a representation [B, D] for the
      representation-space methods; BayesAgg-MTL needs ``nn.Linear`` heads on it);
    - ``heads``: one module per task group, in the order of ``groups`` and of the targets;
    - ``groups``: the task groups (:mod:`bayesagg.tasks`);
    - ``method``: a registry name (``bayesagg.methods.names()``) or a built
      :class:`~bayesagg.methods.base.Method`; ``method_options``: the name's keyword
      arguments (hyper-parameters; the groups are added where needed);
    - ``lr``: the learning rate of the default optimiser, Adam over the module's parameters and
      the method's own (UW's log-variances).

    A batch is ``(x, target_1, ..., target_G)`` (one target per group, shapes as in
    :func:`bayesagg.tasks.task_losses`); override :meth:`split_batch` for another layout,
    :meth:`configure_optimizers` for another optimiser (it must include
    ``self.method.parameters()``; checked when training starts), and add
    ``validation_step`` etc. as in any LightningModule. See the module's docstring for what
    each step does and why.
    """

    def __init__(
        self,
        encoder: nn.Module,
        heads: Sequence[nn.Module],
        groups: Sequence[TaskGroup],
        method: str | Method = "bayesagg",
        *,
        method_options: Mapping[str, Any] | None = None,
        lr: float = 1e-3,
    ) -> None:
        super().__init__()
        check_groups(groups)
        if len(heads) != len(groups):
            raise ValueError(
                f"{len(heads)} heads for {len(groups)} task groups; give one per group"
            )
        self.encoder = encoder
        self.heads = heads if isinstance(heads, nn.ModuleList) else nn.ModuleList(heads)
        self.groups = tuple(groups)
        self.method = build_method(method, self.groups, method_options)
        if self.method.num_tasks != num_tasks(self.groups):
            raise ValueError(
                f"the method is built for {self.method.num_tasks} tasks, the groups hold "
                f"{num_tasks(self.groups)}"
            )
        self.lr = float(lr)
        self.task_names = task_names(self.groups)
        self.automatic_optimization = False
        #: The last finished epoch's mean task losses [K] over every process (None before).
        self.last_epoch_losses: Tensor | None = None
        self._loss_sum: Tensor | None = None
        self._loss_dtype = torch.get_default_dtype()
        self._steps = 0
        self._epoch_ended = False

    # -- what a subclass may override --------------------------------------------------------
    def forward(self, x: Any) -> tuple[Tensor, list[Tensor]]:
        """Return the shared representation ``h`` and every head's output on it."""
        h = self.encoder(x)
        return h, [head(h) for head in self.heads]

    def split_batch(self, batch: Any) -> tuple[Any, list[Tensor]]:
        """Return ``(inputs, one target per group)`` of a batch ``(x, target_1, ..., target_G)``."""
        if not isinstance(batch, list | tuple) or len(batch) != len(self.groups) + 1:
            raise ValueError(
                f"a batch must be (x, one target per task group: {len(self.groups)}); got "
                f"{type(batch).__name__} of length {len(batch) if hasattr(batch, '__len__') else '?'}"
                " (override split_batch for another layout)"
            )
        x, *targets = batch
        return x, list(targets)

    def shared_parameters(self) -> list[Tensor]:
        """Return the parameters the method aggregates over: the encoder's that require grad."""
        return [p for p in self.encoder.parameters() if p.requires_grad]

    def task_parameters(self) -> list[Tensor]:
        """Return the task-specific parameters: the heads' that require grad."""
        return [p for p in self.heads.parameters() if p.requires_grad]

    def refit_batches(self) -> Iterable[Any] | None:
        """Return the training batches for ``method.before_evaluation`` (None: skip it).

        BayesAgg-MTL with ``regression_fit="refit"`` (its default) refits its regression heads
        on the trained encoder's eval-mode features of these batches after every epoch (under
        data parallelism, each process's share: the fit sums over the processes). Without them
        the heads hold the epoch's full-data fit of train-mode features (docs/bayesagg.md,
        "Which fit regression predictions use"). Return e.g. an unshuffled loader of the
        training set; it is read once per epoch.
        """
        return None

    def configure_optimizers(self) -> Any:
        """Return Adam over the module's parameters and the method's own, at ``lr``."""
        return torch.optim.Adam([*self.parameters(), *self.method.parameters()], lr=self.lr)

    # -- Lightning's hooks -------------------------------------------------------------------
    def on_train_start(self) -> None:
        """Refuse what the methods cannot train with: a forgotten parameter."""
        optimised = {
            id(p) for opt in self._optimizers() for g in opt.param_groups for p in g["params"]
        }
        missing = [p for p in self.method.parameters() if id(p) not in optimised]
        if missing:
            raise ValueError(
                f"{self.method.name or type(self.method).__name__}: its own trainable parameters "
                f"({len(missing)} tensor(s), method.parameters()) are in no optimiser of "
                "configure_optimizers; add them, or the method keeps its initial weights"
            )

    def on_train_epoch_start(self) -> None:
        """Start the epoch's sums; end the method's own warm-up (``end_warmup``) at its epoch."""
        self._epoch_ended = False
        warmup = self.method.own_warmup_epochs()
        if warmup and self.current_epoch == warmup:
            for optimizer in self._optimizers():
                self.method.end_warmup(optimizer, self.shared_parameters())

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        """One step of the method (see the module's docstring); return the K losses, detached."""
        x, targets = self.split_batch(batch)
        h, outputs = self(x)
        losses = task_losses(self.groups, outputs, targets)
        optimizers = self.optimizers()
        optimizers = optimizers if isinstance(optimizers, list) else [optimizers]
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        shared = self.shared_parameters()
        # "16-mixed": the scaler's scale goes to the method (scaler.scale() also starts its
        # bookkeeping for this step); Lightning's optimiser step unscales.
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)
        self.method.backward(
            losses,
            shared_parameters=shared,
            task_parameters=self.task_parameters(),
            representation=h,
            heads=self._head_list(),
            targets=targets,
            loss_scale=None
            if scaler is None
            else scaler.scale(torch.ones((), device=losses.device)),
        )
        # Data parallelism: the per-process shares' mean (DDP's reducer is idle, see above).
        average_gradients(
            [*self.parameters(), *self.method.parameters()],
            self.method.process_group,
            skip=shared if self.method.reduces_shared_gradients() else (),
        )
        for optimizer in optimizers:
            optimizer.step()
        if self.method.needs_after_step:  # FAMO: this batch's losses after the update
            with torch.no_grad():
                self.method.after_step(task_losses(self.groups, self(x)[1], targets))
        detached = losses.detach()
        self._loss_dtype = detached.dtype
        step_sum = detached.double()
        self._loss_sum = step_sum if self._loss_sum is None else self._loss_sum + step_sum
        self._steps += 1
        self._step_schedulers("step", len(optimizers))
        # Lightning knows the epoch's last batch (by prefetching one, or limit_train_batches).
        if self.trainer.is_last_batch:
            self._end_epoch()
        return detached

    def on_train_epoch_end(self) -> None:
        """End the epoch here if no step saw its last batch (``on_train_batch_start`` gave -1)."""
        if not self._epoch_ended:
            self._end_epoch()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Save the method's state and the current epoch's running sums with the checkpoint."""
        checkpoint[CHECKPOINT_KEY] = {
            "method_name": self.method.name,
            "method": self.method.state_dict(),
            "loss_sum": None if self._loss_sum is None else self._loss_sum.clone(),
            "steps": self._steps,
            "epoch_ended": self._epoch_ended,
            "last_epoch_losses": self.last_epoch_losses,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore what :meth:`on_save_checkpoint` saved (the method must be the same)."""
        saved = checkpoint.get(CHECKPOINT_KEY)
        if saved is None:
            raise ValueError(
                f"the checkpoint holds no multi-task method state (no {CHECKPOINT_KEY!r} key): "
                "it was not saved by a MultiTaskModule"
            )
        if saved["method_name"] != self.method.name:
            raise ValueError(
                f"the checkpoint is of method {saved['method_name']!r}, this module trains "
                f"{self.method.name!r}"
            )
        self.method.load_state_dict(saved["method"])
        self._loss_sum, self._steps = saved["loss_sum"], int(saved["steps"])
        self._epoch_ended = bool(saved["epoch_ended"])
        self.last_epoch_losses = saved["last_epoch_losses"]

    # -- the epoch's end ---------------------------------------------------------------------

    def _end_epoch(self) -> None:
        """``end_epoch`` with the epoch's mean losses, ``before_evaluation``, epoch schedules."""
        self._epoch_ended = True
        k = self.method.num_tasks
        total = torch.zeros(k, dtype=torch.float64) if self._loss_sum is None else self._loss_sum
        mean = (total / max(self._steps, 1)).to(dtype=self._loss_dtype, device=self.device)
        # the global batches' mean losses, the same on every process
        mean = all_reduce_mean(mean, resolve_group(self.method.process_group))
        self._loss_sum, self._steps = None, 0
        self.method.end_epoch(mean)
        self.last_epoch_losses = mean
        # For loggers and callbacks (ModelCheckpoint(monitor="train_loss/<task>")); the values
        # are already the same on every process, so the sync is a mean of equal values.
        self.log_dict(
            {f"train_loss/{n}": v for n, v in zip(self.task_names, mean, strict=True)},
            on_step=False,
            on_epoch=True,
            sync_dist=True,
        )
        batches = self.refit_batches()
        if batches is not None:
            training = self.training
            self.eval()
            try:
                with torch.no_grad():
                    self.method.before_evaluation(
                        self.current_epoch, self._head_list(), self._features(batches)
                    )
            finally:
                self.train(training)
        self._step_schedulers("epoch", 1)

    def _features(
        self, batches: Iterable[Any]
    ) -> Callable[[], Iterator[tuple[Tensor, Sequence[Tensor]]]]:
        def features() -> Iterator[tuple[Tensor, Sequence[Tensor]]]:
            for batch in batches:
                x, targets = self.split_batch(move_data_to_device(batch, self.device))
                yield self.encoder(x), targets

        return features

    def _head_list(self) -> Sequence[nn.Module]:
        # The ModuleList itself, as the runner passes it (an nn.ModuleList is a sequence at run
        # time, though not declared as one).
        return cast("Sequence[nn.Module]", self.heads)

    def _optimizers(self) -> list[torch.optim.Optimizer]:
        return list(self.trainer.optimizers)

    def _step_schedulers(self, interval: str, optimizers: int) -> None:
        """Step the non-plateau schedulers of ``interval`` every ``frequency`` steps or epochs."""
        done = (
            self.current_epoch + 1
            if interval == "epoch"
            else self.global_step // max(optimizers, 1)
        )
        for config in self.trainer.lr_scheduler_configs:
            scheduler = config.scheduler
            if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                continue  # it needs a metric: the user's to step
            if config.interval == interval and done % config.frequency == 0:
                scheduler.step()
