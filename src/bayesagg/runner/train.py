"""The training loop: one model, one method, one protocol; selection on validation.

Per step (methods/base.py contract): forward, the K task losses, ``method.backward``,
``optimizer.step``, and FAMO's ``after_step`` on the same batch; per epoch: ``end_epoch`` with
the epoch's mean task losses, evaluation of validation and test, the learning-rate schedule, a
CSV row. The reported test metrics are those of the epoch with the best validation criterion
(never chosen on test).
"""

from __future__ import annotations

import contextlib
import math
import random
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from bayesagg.benchmarks.pyg import torch_geometric
from bayesagg.benchmarks.registry import Benchmark, MultiTaskModel, Protocol
from bayesagg.benchmarks.splits import Splits, collate
from bayesagg.diagnostics import TrainingDiagnostics
from bayesagg.methods.base import Method
from bayesagg.metrics import evaluate
from bayesagg.runner.checkpoint import Checkpoint, Progress, Scheduler
from bayesagg.runner.clipping import GradientClipping
from bayesagg.runner.launch import Context
from bayesagg.runner.plan import Plan
from bayesagg.runner.results import EpochLog, flatten
from bayesagg.runner.selection import Criterion
from bayesagg.tasks import Multiclass, Regression, TaskGroup, task_losses

__all__ = [
    "DIVERGENCE_FACTOR",
    "TargetScaler",
    "TrainResult",
    "TrainingLoop",
    "check_divergence",
    "deterministic",
    "evaluate_split",
    "fit_scaler",
    "make_loader",
    "make_optimizer",
    "seed_everything",
    "split_batch",
    "target_scaler",
    "train",
    "training_step",
]

#: Steps at the start of the timed segment left out of the median (allocator, caches, solvers).
WARMUP_STEPS = 5

#: A run stops as diverged when an epoch's mean training loss of a task exceeds this many times
#: the task's loss at the run's first step (the model as initialised). A healthy run's losses
#: fall from there; one a thousand times higher has left any useful region (``--lr 1000``
#: reaches 1e8 within the first epoch), and its metrics would be written as a normal result.
DIVERGENCE_FACTOR = 1e3


def check_divergence(
    epoch: int,
    epochs: int,
    losses: Sequence[float],
    initial: Sequence[float] | None,
    names: Sequence[str],
    *,
    watched: Sequence[int] | None = None,
    fitted: Sequence[int] = (),
    label: str = "",
) -> None:
    """Raise FloatingPointError naming the epoch and task if training has diverged.

    Diverged: a watched task's mean training loss of epoch ``epoch`` (0-based) is not finite,
    or exceeds :data:`DIVERGENCE_FACTOR` times its loss at the first step (``initial``, None:
    only the finiteness check). ``watched``: the task indices to check (default all; an STL
    model trains one task, the others' untrained heads may drift). ``fitted``: tasks whose heads
    hold a fit instead of the optimiser's state (BayesAgg-MTL's regression heads,
    :attr:`bayesagg.BayesAgg.fitted_tasks`): only their finiteness is checked, since a fit on
    earlier features can be far off on features the encoder has since moved.
    """
    where = f"{label}: " if label else ""
    for k in range(len(names)) if watched is None else watched:
        value = float(losses[k])
        start = None if initial is None else float(initial[k])
        if not math.isfinite(value):
            problem = f"mean training loss {value}"
        elif (
            k not in fitted
            and start is not None
            and start > 0
            and value > DIVERGENCE_FACTOR * start
        ):
            problem = (
                f"mean training loss {value:.3g}, {value / start:.3g} times its first step's "
                f"{start:.3g} (the limit is {DIVERGENCE_FACTOR:g} times)"
            )
        else:
            continue
        raise FloatingPointError(
            f"{where}training diverged in epoch {epoch + 1} of {epochs} (counted from 1, as in "
            f"epochs.csv): task {names[k]!r} has {problem}; lower --lr or check the data"
        )


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) with ``seed``."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextlib.contextmanager
def deterministic() -> Iterator[None]:
    """Run the block with ``torch.use_deterministic_algorithms`` on (warn-only), then restore."""
    before = torch.are_deterministic_algorithms_enabled()
    before_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before, warn_only=before_warn)


@dataclass
class TrainResult:
    """What a finished training run hands back to be written to disk."""

    best_epoch: int
    criterion: Criterion
    criterion_value: float | None
    val: dict[str, float | None]
    test: dict[str, float | None]
    history: list[dict[str, Any]]
    step_seconds: list[float]
    timed_from_step: int
    weights_per_epoch: list[list[float] | None]
    notes: list[str] = field(default_factory=list)

    def time_per_step(self) -> dict[str, Any]:
        """Return the median seconds of a whole training step (forward, backward, step)."""
        segment = self.step_seconds[self.timed_from_step :]
        skip = min(WARMUP_STEPS, max(len(segment) - 1, 0))
        timed = segment[skip:]
        all_steps = self.step_seconds[min(WARMUP_STEPS, max(len(self.step_seconds) - 1, 0)) :]
        return {
            "median_ms": 1000 * statistics.median(timed) if timed else None,
            "steps_timed": len(timed),
            "first_step_timed": self.timed_from_step + skip,
            "all_steps_median_ms": 1000 * statistics.median(all_steps) if all_steps else None,
            "steps": len(self.step_seconds),
        }


# -- batches ----------------------------------------------------------------------------------
def make_loader(
    spec: Benchmark,
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int,
    drop_last: bool = False,
) -> DataLoader:
    """Return a single-process loader whose shuffling is seeded (same seed, same order)."""
    extra: dict[str, Any] = {}
    loader: type[DataLoader] = DataLoader
    if spec.graph:
        loader = torch_geometric().loader.DataLoader
    else:
        # In-memory datasets collate whole batches themselves (IndexedImages.__getitems__).
        extra["collate_fn"] = collate
    return loader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        generator=torch.Generator().manual_seed(seed),
        num_workers=0,
        drop_last=drop_last,
        **extra,
    )


def split_batch(
    spec: Benchmark, groups: Sequence[TaskGroup], batch: Any, device: torch.device
) -> tuple[Any, list[Tensor]]:
    """Return (inputs, one target tensor per group) of a collated batch, on ``device``."""
    if spec.graph:
        batch = batch.to(device)
        y = batch.y
        targets, start = [], 0
        for g in groups:
            width = g.head_outputs if not isinstance(g, Multiclass) else 1
            targets.append(y[:, start : start + width])
            start += width
        return batch, _shape_targets(groups, targets)
    x, ts = batch
    if isinstance(ts, Tensor):
        ts = (ts,)
    if len(ts) != len(groups):
        raise ValueError(f"{spec.name}: a batch has {len(ts)} targets for {len(groups)} groups")
    return x.to(device), _shape_targets(groups, [t.to(device) for t in ts])


def _shape_targets(groups: Sequence[TaskGroup], targets: Sequence[Tensor]) -> list[Tensor]:
    out = []
    for g, t in zip(groups, targets, strict=True):
        if isinstance(g, Multiclass):
            out.append(t.reshape(-1).long())
        else:
            out.append(t.reshape(len(t), g.outputs).float())
    return out


class TargetScaler:
    """Standardises regression targets with training mean/std (QM9), and undoes it."""

    def __init__(self, groups: Sequence[TaskGroup], stats: dict[int, tuple[Tensor, Tensor]]):
        self.groups = groups
        self.stats = stats

    def forward(self, targets: list[Tensor]) -> list[Tensor]:
        out = list(targets)
        for i, (mean, std) in self.stats.items():
            out[i] = (out[i] - mean.to(out[i])) / std.to(out[i])
        return out

    def inverse(self, predictions: list[Tensor]) -> list[Tensor]:
        out = list(predictions)
        for i, (mean, std) in self.stats.items():
            out[i] = out[i] * std.to(out[i]) + mean.to(out[i])
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            self.groups[i].name: {"mean": m.tolist(), "std": s.tolist()}
            for i, (m, s) in self.stats.items()
        }


def fit_scaler(
    spec: Benchmark, groups: Sequence[TaskGroup], train_loader: DataLoader, device: torch.device
) -> TargetScaler:
    """Return the scaler of the training targets (mean and population std per output)."""
    sums: dict[int, list[Tensor]] = {
        i: [] for i, g in enumerate(groups) if isinstance(g, Regression)
    }
    for batch in train_loader:
        _, targets = split_batch(spec, groups, batch, torch.device("cpu"))
        for i in sums:
            sums[i].append(targets[i].double())
    stats = {}
    for i, parts in sums.items():
        y = torch.cat(parts)
        std = y.std(0, unbiased=False)
        if bool((std == 0).any()):
            raise ValueError(f"{spec.name}: a regression target of {groups[i].name!r} is constant")
        stats[i] = (y.mean(0).float().to(device), std.float().to(device))
    return TargetScaler(groups, stats)


def forward_precision(precision: str, device: torch.device) -> torch.autocast:
    """Return the context of a forward pass at ``precision`` ("fp32" or "bf16") on ``device``."""
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def parameter_device(model: nn.Module) -> torch.device:
    """Return the device of the model's first parameter (CPU for a model without any)."""
    return next((p.device for p in model.parameters()), torch.device("cpu"))


# -- evaluation -------------------------------------------------------------------------------
@torch.no_grad()
def predict(
    model: MultiTaskModel,
    spec: Benchmark,
    groups: Sequence[TaskGroup],
    loader: DataLoader,
    device: torch.device,
    scaler: TargetScaler | None,
) -> tuple[list[Tensor], list[Tensor]]:
    """Return the stacked predictions (original units) and targets of each group."""
    model.eval()
    preds: list[list[Tensor]] = [[] for _ in groups]
    targs: list[list[Tensor]] = [[] for _ in groups]
    for batch in loader:
        x, targets = split_batch(spec, groups, batch, device)
        _, outputs = model(x)
        if scaler is not None:
            outputs = scaler.inverse(outputs)
        for i in range(len(groups)):
            preds[i].append(outputs[i].cpu())
            targs[i].append(targets[i].cpu())
    # multi-process runs (runner/launch.py): each process predicted its shard
    gather = getattr(loader, "gather", lambda t: t)
    return [gather(torch.cat(p)) for p in preds], [gather(torch.cat(t)) for t in targs]


def evaluate_split(
    model: MultiTaskModel,
    spec: Benchmark,
    groups: Sequence[TaskGroup],
    loader: DataLoader,
    device: torch.device,
    scaler: TargetScaler | None,
) -> dict[str, float | None]:
    """Return the benchmark's metrics of the model on one split."""
    preds, targs = predict(model, spec, groups, loader, device, scaler)
    return evaluate(
        groups,
        preds,
        targs,
        regression_metric=spec.regression_metric,
        regression_scale=spec.regression_scale,
        argmax_accuracy=spec.argmax_accuracy,
        calibration=spec.calibration,
    )


def training_step(
    model: MultiTaskModel,
    method: Method,
    optimizer: torch.optim.Optimizer,
    groups: Sequence[TaskGroup],
    x: Any,
    targets: Sequence[Tensor],
    *,
    sync: Callable[[], None] | None = None,
    clip: Callable[[MultiTaskModel], None] | None = None,
    precision: str = "fp32",
) -> Tensor:
    """Run one whole training step; return the K task losses (detached).

    Forward, the task losses, ``method.backward`` (which fills the encoder's and heads'
    gradients), ``sync`` (called after ``method.backward``: multi-process runs average the
    gradients there), the protocol's gradient clipping (``clip``, on the global gradient),
    ``optimizer.step()``, and FAMO's ``after_step`` on the same batch. ``precision="bf16"``:
    the forward passes and losses under ``torch.autocast`` with bfloat16 (losses in float32).
    """
    with forward_precision(precision, parameter_device(model)):
        h, outputs = model(x)
        losses = task_losses(groups, outputs, targets).float()
    optimizer.zero_grad(set_to_none=True)
    method.backward(
        losses,
        shared_parameters=[p for p in model.encoder.parameters() if p.requires_grad],
        task_parameters=[p for p in model.heads.parameters() if p.requires_grad],
        representation=h,
        heads=model.heads,
        targets=list(targets),
    )
    if sync is not None:
        sync()
    if clip is not None:
        clip(model)
    optimizer.step()
    if method.needs_after_step:
        with torch.no_grad(), forward_precision(precision, parameter_device(model)):
            _, after = model(x)
            after_losses = task_losses(groups, after, targets).float()
        method.after_step(after_losses)
    return losses.detach()


def make_optimizer(
    model: MultiTaskModel, method: Method, protocol: Protocol
) -> torch.optim.Optimizer:
    """Return Adam over the model (weight decay) and the method's own parameters (none).

    As the authors' trainers: two groups, shared (encoder) and task-specific (heads), at the
    same learning rate with the same coupled (Adam, not AdamW) weight decay.
    """
    groups: list[dict[str, Any]] = [
        {"params": [p for p in part.parameters() if p.requires_grad]}
        for part in (model.encoder, model.heads)
    ]
    for group in groups:
        group["weight_decay"] = protocol.weight_decay
    if method.parameters():
        # The method's own parameters (UW's log-variances, ...): same lr, no weight decay.
        groups.append({"params": list(method.parameters()), "weight_decay": 0.0})
    return torch.optim.Adam(groups, lr=protocol.lr)


def _training_features(
    model: MultiTaskModel,
    spec: Benchmark,
    groups: Sequence[TaskGroup],
    loader: DataLoader,
    device: torch.device,
    scaler: TargetScaler | None,
) -> Callable[[], Iterator[tuple[Tensor, list[Tensor]]]]:
    """Return a function yielding ``(h, targets)`` of the training set, encoder in eval mode.

    The means for :meth:`Method.before_evaluation` (BayesAgg-MTL's eval-mode refit of its
    regression heads): targets standardised as the training steps see them.
    """

    def batches() -> Iterator[tuple[Tensor, list[Tensor]]]:
        model.eval()
        for batch in loader:
            x, targets = split_batch(spec, groups, batch, device)
            if scaler is not None:
                targets = scaler.forward(targets)
            yield model.encoder(x), targets

    return batches


# -- training ---------------------------------------------------------------------------------
def _scheduler(
    protocol: Protocol, optimizer: torch.optim.Optimizer, mode: str
) -> tuple[Scheduler | None, bool]:
    """Return (scheduler or None, whether it steps on the validation criterion)."""
    if protocol.scheduler == "plateau":
        return (
            torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer,
                mode=mode,
                factor=protocol.plateau_factor,
                patience=protocol.plateau_patience,
                min_lr=protocol.min_lr,
            ),
            True,
        )
    if protocol.scheduler == "multistep":
        milestones = sorted({max(1, round(f * protocol.epochs)) for f in protocol.milestones})
        return (
            torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma=protocol.decay),
            False,
        )
    return None, False


@dataclass
class _Loaders:
    """The loaders of one run: shuffled training batches, and ordered evaluation batches."""

    #: torch DataLoaders, or in a multi-process run the context's sharded ones (which gather).
    train: DataLoader
    val: DataLoader
    test: DataLoader
    #: The training set in order, at the evaluation batch size (for before_evaluation).
    ordered_train: DataLoader


@dataclass
class _EpochSteps:
    """What the steps of one epoch leave: summed losses and weights, counts and timings."""

    loss_sum: Tensor
    weight_sum: Tensor | None
    weight_count: int
    steps: int
    #: ``time.perf_counter()`` at the epoch's start.
    start: float
    data_seconds: float


def target_scaler(
    p: Plan, splits: Splits, device: torch.device, eval_size: int
) -> TargetScaler | None:
    """Return the scaler of the regression targets where the benchmark standardises them."""
    spec, groups = p.spec, p.groups
    if not spec.standardise_targets:
        return None
    regression = [i for i, g in enumerate(groups) if isinstance(g, Regression)]
    # A data module may know its training statistics (QM9's loader computes them once).
    statistics_of = getattr(spec.data_module(), "target_statistics", None)
    if statistics_of is not None and len(regression) == 1:
        mean, std = statistics_of(splits.train)
        return TargetScaler(
            groups, {regression[0]: (mean.float().to(device), std.float().to(device))}
        )
    ordered = make_loader(spec, splits.train, eval_size, shuffle=False, seed=p.seed)
    return fit_scaler(spec, groups, ordered, device)


class TrainingLoop:
    """One training run of a plan, phase by phase: steps, epoch end, evaluation, log, checkpoint.

    Built in the order the run needs (loaders, target scaling, the model on its device, the
    optimiser and schedule, the clipping, the checkpoint's state); :meth:`run` then runs the
    protocol's epochs and returns the selected epoch's metrics.

    ``task``: the task an STL model trains (the divergence check watches it only).
    ``distributed``: this process's :class:`bayesagg.runner.launch.Context` in a multi-process
    run (None: one process). ``diagnostics``: BayesAgg-MTL runs add
    :mod:`bayesagg.diagnostics`'s per-epoch columns to the epoch log. ``checkpoint``: resume
    from it if it holds this run, and save it at the end of every epoch (runner/checkpoint.py;
    in a multi-process run only rank 0 saves). The time per step leaves out the plan's
    :attr:`~bayesagg.runner.plan.Plan.timed_from_epoch` first epochs (BayesAgg-MTL's warm-up
    epochs are linear scalarisation).
    """

    def __init__(
        self,
        p: Plan,
        splits: Splits,
        *,
        model: MultiTaskModel,
        method: Method,
        criterion: Criterion,
        device: torch.device,
        task: int | None = None,
        epoch_log: EpochLog | None = None,
        progress: bool = False,
        label: str = "",
        distributed: Context | None = None,
        diagnostics: bool = True,
        checkpoint: Checkpoint | None = None,
    ) -> None:
        self.plan, self.protocol, self.groups = p, p.protocol, p.groups
        self.method, self.criterion, self.device = method, criterion, device
        self.epoch_log, self.progress, self.label = epoch_log, progress, label
        self.distributed, self.checkpoint = distributed, checkpoint
        self.names = list(p.names)
        # An STL model trains one task; the others' untrained heads may drift.
        self.watched = None if task is None else [task]
        model.to(device)
        self.loaders, self.scaler = self._loaders(splits)
        self.model: MultiTaskModel = model
        self.sync: Callable[[], None] | None = None
        if distributed is not None:  # shards of the same batches, DDP, gradient averaging
            wrapped = distributed.wrap(model, device)
            self.model = wrapped  # type: ignore[assignment]
            self.sync = lambda: distributed.sync_gradients(wrapped, method)
        self.optimizer = make_optimizer(self.model, method, self.protocol)
        self.scheduler, self.on_criterion = _scheduler(
            self.protocol, self.optimizer, criterion.mode
        )
        # The method's own warm-up, else the protocol's, so all methods of a protocol clip alike.
        own_warmup = method.own_warmup_epochs()
        self.warmup = int((self.protocol.warmup_epochs if own_warmup is None else own_warmup) or 0)
        self.clipping = GradientClipping(
            self.protocol.clip_heads, self.protocol.clip_shared, self.warmup
        )
        self.probe = TrainingDiagnostics.for_method(method) if diagnostics else None
        self.states = dict(
            model=self.model,
            method=method,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            loader=self.loaders.train,
        )
        done = (checkpoint.load(**self.states) if checkpoint is not None else None) or Progress()
        if epoch_log is not None and done.rows:
            epoch_log.restore(done.rows)
        if done.initial_losses is None and done.history:  # a checkpoint from before they existed
            done.initial_losses = list(done.history[0]["train_loss"])
        self.done = done
        self.first_step: Tensor | None = None
        self.fitted = list(method.fitted_tasks())
        self.training_features = _training_features(
            self.model, p.spec, self.groups, self.loaders.ordered_train, device, self.scaler
        )
        # A bar only on a terminal: redirected to a log file, tqdm's carriage returns and escape
        # sequences make it unreadable, so a plain line per epoch stands in for the bar there.
        self.bar = progress and _is_terminal(sys.stderr)

    def _loaders(self, splits: Splits) -> tuple[_Loaders, TargetScaler | None]:
        p, distributed = self.plan, self.distributed
        spec, batch_size, seed = p.spec, self.protocol.batch_size, p.seed
        train = make_loader(
            spec,
            splits.train,
            batch_size,
            shuffle=True,
            seed=seed,
            drop_last=self.protocol.drop_last,
        )
        eval_size = max(batch_size, 256)
        val = make_loader(spec, splits.val, eval_size, shuffle=False, seed=seed)
        test = make_loader(spec, splits.test, eval_size, shuffle=False, seed=seed)
        scaler = target_scaler(p, splits, self.device, eval_size)
        ordered = make_loader(spec, splits.train, eval_size, shuffle=False, seed=seed)
        if distributed is not None:  # each process reads its shard of the same batches
            train = distributed.train_loader(spec, splits.train, batch_size, seed)
            val = distributed.eval_loader(spec, splits.val, eval_size, seed)
            test = distributed.eval_loader(spec, splits.test, eval_size, seed)
            ordered = distributed.eval_loader(spec, splits.train, eval_size, seed)
        return _Loaders(train, val, test, ordered), scaler

    # -- the run ----------------------------------------------------------------------------
    def run(self) -> TrainResult:
        """Train the remaining epochs; return the epoch selected on validation."""
        epochs = tqdm(
            range(self.done.epoch, self.protocol.epochs),
            desc=self.label or "epochs",
            disable=not self.bar,
            leave=False,
        )
        for epoch in epochs:
            self.run_epoch(epoch, epochs)
        return self.result()

    def run_epoch(self, epoch: int, bar: tqdm) -> None:
        """One epoch: its steps, its end, evaluation, schedule, log, checkpoint, progress."""
        self.start_epoch(epoch)
        steps = self.train_steps(epoch)
        epoch_losses = self.end_epoch(epoch, steps)
        train_seconds = time.perf_counter() - steps.start
        val, test, eval_seconds = self.evaluate(epoch)
        value = self.criterion.value(val)
        if self.done.best is None or self.criterion.better(value, self.done.best[1]):
            self.done.best = (epoch, value, val, test)
        lr = self.optimizer.param_groups[0]["lr"]
        self.step_schedule(value)
        self.log_epoch(
            epoch, lr, epoch_losses, steps, train_seconds, eval_seconds, value, val, test
        )
        self.save_checkpoint(epoch)
        self.report(epoch, bar, value, train_seconds + eval_seconds)

    def start_epoch(self, epoch: int) -> None:
        """Training mode, the timing's start, and the end of the method's warm-up."""
        self.model.train()
        if epoch == self.plan.timed_from_epoch:
            self.done.timed_from_step = len(self.done.step_seconds)
        if self.warmup > 0 and epoch == self.warmup:
            self.method.end_warmup(self.optimizer, list(self.model.encoder.parameters()))

    def train_steps(self, epoch: int) -> _EpochSteps:
        """Run the epoch's training steps; return their summed losses, weights and timings."""
        model, method, device, done = self.model, self.method, self.device, self.done
        clip = self.clipping.for_epoch(epoch)
        if self.probe is not None:
            self.probe.start_epoch(len(self.loaders.train))
        loss_sum = torch.zeros(len(self.names), dtype=torch.float64)
        weight_sum: Tensor | None = None
        weight_count = 0
        steps = 0
        start = time.perf_counter()
        # Time spent waiting for the loader and moving batches (a loader must not dominate a
        # step, and this column shows when it does): from the end of one step to the start of
        # the next.
        data_seconds = 0.0
        fetch_from = start
        batches = tqdm(
            self.loaders.train, desc=f"epoch {epoch + 1}", disable=not self.bar, leave=False
        )
        for batch in batches:
            x, targets = split_batch(self.plan.spec, self.groups, batch, device)
            if self.scaler is not None:
                targets = self.scaler.forward(targets)
            data_seconds += time.perf_counter() - fetch_from
            if self.probe is not None and self.probe.due(steps):
                self.probe.measure(model, self.groups, x, targets)
            t0 = time.perf_counter()
            try:
                losses = training_step(
                    model,
                    method,
                    self.optimizer,
                    self.groups,
                    x,
                    targets,
                    sync=self.sync,
                    clip=clip,
                    precision=self.plan.config.precision,
                )
            except FloatingPointError as err:
                raise self._diverged_in_step(epoch, steps, err) from err
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            done.step_seconds.append(time.perf_counter() - t0)
            fetch_from = time.perf_counter()
            loss_sum += losses.detach().double().cpu()
            if self.first_step is None and done.initial_losses is None:
                self.first_step = losses.detach().double().cpu()
            if method.last_weights is not None:
                w = method.last_weights.detach().double().cpu().reshape(-1)
                weight_sum = w if weight_sum is None else weight_sum + w
                weight_count += 1
            steps += 1
        steps_done = _EpochSteps(loss_sum, weight_sum, weight_count, steps, start, data_seconds)
        return steps_done

    def _diverged_in_step(
        self, epoch: int, step: int, err: FloatingPointError
    ) -> FloatingPointError:
        # The runner counts epochs from 1 (epochs.csv, result.json); the library's own messages
        # (``agg.epoch``) from 0: say so where both appear in one line.
        library = (
            "; the library's message that follows counts from 0" if "epoch" in str(err) else ""
        )
        return FloatingPointError(
            f"{self.label or self.method.name}: training diverged in epoch {epoch + 1} of "
            f"{self.protocol.epochs} (counted from 1, as in epochs.csv{library}), "
            f"step {step + 1}: {err}"
        )

    def end_epoch(self, epoch: int, steps: _EpochSteps) -> Tensor:
        """Return the epoch's mean task losses after the divergence check and ``end_epoch``."""
        distributed, device, done = self.distributed, self.device, self.done
        if distributed is not None:  # the global batches' losses and weights
            steps.loss_sum = distributed.mean(steps.loss_sum, device)
            if steps.weight_sum is not None:
                steps.weight_sum = distributed.mean(steps.weight_sum, device)
        epoch_losses = (steps.loss_sum / max(steps.steps, 1)).float()
        if done.initial_losses is None and self.first_step is not None:
            first_step = self.first_step
            if distributed is not None:  # the same reference on every process
                first_step = distributed.mean(first_step, device)
            done.initial_losses = first_step.tolist()
        check_divergence(
            epoch,
            self.protocol.epochs,
            epoch_losses.tolist(),
            done.initial_losses,
            self.names,
            watched=self.watched,
            fitted=self.fitted,
            label=self.label or self.method.name,
        )
        self.method.end_epoch(epoch_losses.to(device))
        return epoch_losses

    def evaluate(
        self, epoch: int
    ) -> tuple[dict[str, float | None], dict[str, float | None], float]:
        """Return the validation and test metrics (after the method's ``before_evaluation``)."""
        with torch.no_grad():
            self.method.before_evaluation(epoch, self.model.heads, self.training_features)
        spec, groups, model = self.plan.spec, self.groups, self.model
        eval_start = time.perf_counter()
        val = evaluate_split(model, spec, groups, self.loaders.val, self.device, self.scaler)
        test = evaluate_split(model, spec, groups, self.loaders.test, self.device, self.scaler)
        return val, test, time.perf_counter() - eval_start

    def step_schedule(self, value: float | None) -> None:
        """Step the learning-rate schedule (a plateau schedule on the validation criterion)."""
        if self.scheduler is None:
            return
        if self.on_criterion:
            if value is not None:
                self.scheduler.step(value)
        else:
            self.scheduler.step()

    def log_epoch(
        self,
        epoch: int,
        lr: float,
        epoch_losses: Tensor,
        steps: _EpochSteps,
        train_seconds: float,
        eval_seconds: float,
        value: float | None,
        val: dict[str, float | None],
        test: dict[str, float | None],
    ) -> None:
        """Record the epoch: its task weights, ``epochs.csv`` row and history entry."""
        done, names = self.done, self.names
        weights = (
            None if steps.weight_sum is None else (steps.weight_sum / steps.weight_count).tolist()
        )
        done.weights_per_epoch.append(weights)
        n = steps.steps
        row: dict[str, Any] = {
            "epoch": epoch + 1,
            "lr": lr,
            "train_seconds": round(train_seconds, 4),
            "step_ms_median": round(
                1000 * statistics.median(done.step_seconds[-n:]) if n else 0.0, 4
            ),
            "data_seconds": round(steps.data_seconds, 4),
            "eval_seconds": round(eval_seconds, 4),
            f"val/{self.criterion.name}": value,
        }
        row.update({f"train_loss/{k}": float(v) for k, v in zip(names, epoch_losses, strict=True)})
        row.update(flatten("val/", val))
        row.update(flatten("test/", test))
        if weights is not None:
            row.update({f"weight/{k}": w for k, w in zip(names, weights, strict=True)})
        if self.probe is not None:
            row.update(self.probe.end_epoch())
        done.history.append(
            {
                "epoch": epoch + 1,
                "lr": lr,
                "train_loss": epoch_losses.tolist(),
                "val_criterion": value,
                "train_seconds": train_seconds,
            }
        )
        if self.epoch_log is not None:
            self.epoch_log.append(row)

    def save_checkpoint(self, epoch: int) -> None:
        """Save the run after ``epoch`` (in a multi-process run, rank 0 only)."""
        if self.checkpoint is None or not (self.distributed is None or self.distributed.rank == 0):
            return
        done = self.done
        rows = [] if self.epoch_log is None else self.epoch_log.rows
        saved = Progress(
            epoch + 1,
            done.history,
            done.step_seconds,
            done.timed_from_step,
            done.weights_per_epoch,
            done.best,
            rows,
            done.initial_losses,
        )
        self.checkpoint.save(saved, **self.states)

    def report(self, epoch: int, bar: tqdm, value: float | None, seconds: float) -> None:
        """Show the epoch on the progress bar, or as a line where there is no terminal."""
        best = self.done.best
        assert best is not None
        # The last epoch's value is not the reported one: results are those of the epoch with
        # the best validation criterion, so the bar and the log line name that epoch too.
        selected = f"{_number(best[1])} at epoch {best[0] + 1}"
        name = self.criterion.name
        bar.set_postfix({name: _number(value), "selected": selected})
        if self.progress and not self.bar:
            print(
                f"{self.label or 'epochs'}: epoch {epoch + 1}/{self.protocol.epochs}, validation "
                f"{name} {_number(value)} (selected so far: {selected}), {seconds:.1f} s",
                file=sys.stderr,
                flush=True,
            )

    def result(self) -> TrainResult:
        """Return the selected epoch's metrics and the run's history."""
        done = self.done
        assert done.best is not None
        notes = self.method.report_notes()
        if self.distributed is not None:
            notes.extend(self.distributed.finish_notes(self.loaders.train))
        epoch, value, val, test = done.best
        return TrainResult(
            best_epoch=epoch + 1,
            criterion=self.criterion,
            criterion_value=value,
            val=val,
            test=test,
            history=done.history,
            step_seconds=done.step_seconds,
            timed_from_step=done.timed_from_step,
            weights_per_epoch=done.weights_per_epoch,
            notes=notes,
        )


def train(*, plan: Plan, splits: Splits, **options: Any) -> TrainResult:
    """Train under the plan's protocol and return the selected epoch: ``TrainingLoop(plan,
    splits, **options).run()``, whose class documents every option (model, method, criterion,
    device, task, epoch_log, progress, label, distributed, diagnostics, checkpoint).

    The one seam between a run's bookkeeping (runner/run.py) and its training: the tests of
    ``compare``, ``sweep`` and the operator checks replace it to stay fast.
    """
    return TrainingLoop(plan, splits, **options).run()


def _is_terminal(stream: Any) -> bool:
    """Return whether ``stream`` is an interactive terminal (False for files and pipes)."""
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty()) if isatty is not None else False
    except (OSError, ValueError):  # a closed stream
        return False


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
