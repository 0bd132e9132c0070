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

from bayesagg.benchmarks.pyg import torch_geometric
from bayesagg.benchmarks.registry import Benchmark, MultiTaskModel, Protocol, References
from bayesagg.diagnostics import TrainingDiagnostics
from bayesagg.methods.base import Method
from bayesagg.metrics import delta_m, evaluate, higher_is_better
from bayesagg.runner.checkpoint import Checkpoint, Progress
from bayesagg.runner.clipping import GradientClipping
from bayesagg.runner.results import EpochLog, flatten
from bayesagg.tasks import Multiclass, Regression, TaskGroup, task_losses, task_names

__all__ = [
    "DIVERGENCE_FACTOR",
    "Criterion",
    "TrainResult",
    "check_divergence",
    "deterministic",
    "make_optimizer",
    "seed_everything",
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


@dataclass(frozen=True)
class Criterion:
    """The validation criterion of model selection: a metric key or "delta_m", and its mode."""

    name: str
    mode: str  # "min" or "max"
    references: References | None = None
    keys: tuple[str, ...] = ()

    def value(self, metrics: dict[str, float | None]) -> float | None:
        """Return the criterion on ``metrics`` (None when a needed metric is undefined)."""
        try:
            if self.name == "delta_m":
                assert self.references is not None
                return delta_m(metrics, self.references.values)
            if self.name.startswith("mean/"):
                values = [metrics.get(k) for k in self.keys]
                if any(v is None for v in values):
                    return None
                return statistics.fmean(values)  # type: ignore[arg-type]
            return metrics.get(self.name)
        except KeyError:
            return None

    def better(self, new: float | None, best: float | None) -> bool:
        """Return True if ``new`` improves on ``best`` (an undefined value never does)."""
        if new is None or math.isnan(new):
            return False
        if best is None:
            return True
        return new < best if self.mode == "min" else new > best


def make_criterion(
    spec: Benchmark,
    groups: Sequence[TaskGroup],
    references: References | None,
    stl_metric: str | None = None,
) -> Criterion:
    """Return the selection criterion of ``spec`` (for an STL model: its own task's metric).

    Where the protocol selects on validation Delta_m but no STL references exist, the mean of
    the task metrics (same direction) replaces it; the run's JSON names the criterion used.
    """
    keys = tuple(spec.task_metrics(groups))
    if stl_metric is not None:
        return Criterion(stl_metric, "max" if higher_is_better(stl_metric) else "min")
    selection = spec.selection
    if selection == "delta_m":
        if references is not None:
            return Criterion("delta_m", "min", references, keys)
        metrics = {k.rpartition("/")[2] for k in keys}
        if len(metrics) != 1:
            raise ValueError(
                f"{spec.name}: selection on Delta_m needs STL references (tasks use {metrics})"
            )
        selection = f"mean/{metrics.pop()}"
    if selection.startswith("mean/"):
        metric = selection.partition("/")[2]
        chosen = tuple(k for k in keys if k.endswith(f"/{metric}"))
        chosen = chosen or tuple(f"{n}/{metric}" for n in task_names(groups))
        return Criterion(selection, "max" if metric in ("accuracy", "auc") else "min", None, chosen)
    return Criterion(selection, "max" if higher_is_better(selection) else "min")


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
    dataset: Any,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int,
    drop_last: bool = False,
) -> torch.utils.data.DataLoader:
    """Return a single-process loader whose shuffling is seeded (same seed, same order)."""
    extra: dict[str, Any] = {}
    if spec.graph:
        DataLoader = torch_geometric().loader.DataLoader
    else:
        from torch.utils.data import DataLoader

        from bayesagg.benchmarks.splits import collate

        # In-memory datasets collate whole batches themselves (IndexedImages.__getitems__).
        extra["collate_fn"] = collate
    return DataLoader(
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
    spec: Benchmark, groups: Sequence[TaskGroup], train_loader: Any, device: torch.device
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


# -- evaluation -------------------------------------------------------------------------------
@torch.no_grad()
def predict(
    model: MultiTaskModel,
    spec: Benchmark,
    groups: Sequence[TaskGroup],
    loader: Any,
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
    # multi-process runs (runner/distributed.py): each process predicted its shard
    gather = getattr(loader, "gather", lambda t: t)
    return [gather(torch.cat(p)) for p in preds], [gather(torch.cat(t)) for t in targs]


def evaluate_split(
    model: MultiTaskModel,
    spec: Benchmark,
    groups: Sequence[TaskGroup],
    loader: Any,
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
) -> Tensor:
    """Run one whole training step; return the K task losses (detached).

    Forward, the task losses, ``method.backward`` (which fills the encoder's and heads'
    gradients), ``sync`` (called after ``method.backward``: multi-process runs average the
    gradients there), the protocol's gradient clipping (``clip``, on the global gradient),
    ``optimizer.step()``, and FAMO's ``after_step`` on the same batch.
    """
    h, outputs = model(x)
    losses = task_losses(groups, outputs, targets)
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
        with torch.no_grad():
            _, after = model(x)
            method.after_step(task_losses(groups, after, targets))
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
    loader: Any,
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
def _scheduler(protocol: Protocol, optimizer: torch.optim.Optimizer, mode: str) -> tuple[Any, bool]:
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


def train(
    *,
    spec: Benchmark,
    protocol: Protocol,
    groups: Sequence[TaskGroup],
    model: MultiTaskModel,
    method: Method,
    splits: Any,
    criterion: Criterion,
    seed: int,
    device: torch.device,
    epoch_log: EpochLog | None = None,
    timed_from_epoch: int = 0,
    progress: bool = False,
    label: str = "",
    distributed: Any = None,
    diagnostics: bool = True,
    checkpoint: Checkpoint | None = None,
    watched: Sequence[int] | None = None,
) -> TrainResult:
    """Train ``model`` with ``method`` under ``protocol``; return the selected epoch's metrics.

    ``timed_from_epoch``: the first epoch whose steps count in the time per step (BayesAgg-MTL's
    warm-up epochs are linear scalarisation and are left out). ``distributed``: this process's
    :class:`bayesagg.runner.distributed.Context` in a multi-process run (None: one process).
    ``diagnostics``: BayesAgg-MTL runs add :mod:`bayesagg.diagnostics`'s per-epoch columns to
    the epoch log. ``checkpoint``: resume from it if it holds this run, and save it at the end
    of every epoch (runner/checkpoint.py; in a multi-process run only rank 0 saves).
    ``watched``: the tasks the divergence check watches (None: all; an STL run its own).
    """
    from tqdm.auto import tqdm

    model.to(device)
    train_loader = make_loader(
        spec,
        splits.train,
        protocol.batch_size,
        shuffle=True,
        seed=seed,
        drop_last=protocol.drop_last,
    )
    eval_size = max(protocol.batch_size, 256)
    val_loader = make_loader(spec, splits.val, eval_size, shuffle=False, seed=seed)
    test_loader = make_loader(spec, splits.test, eval_size, shuffle=False, seed=seed)
    scaler = None
    if spec.standardise_targets:
        regression = [i for i, g in enumerate(groups) if isinstance(g, Regression)]
        statistics_of = getattr(spec.data_module(), "target_statistics", None)
        if statistics_of is not None and len(regression) == 1:
            mean, std = statistics_of(splits.train)
            scaler = TargetScaler(
                groups, {regression[0]: (mean.float().to(device), std.float().to(device))}
            )
        else:
            scaler = fit_scaler(
                spec,
                groups,
                make_loader(spec, splits.train, eval_size, shuffle=False, seed=seed),
                device,
            )

    ordered_train = make_loader(spec, splits.train, eval_size, shuffle=False, seed=seed)
    sync = None
    if distributed is not None:  # shards of the same batches, DDP, gradient averaging
        train_loader = distributed.train_loader(spec, splits.train, protocol.batch_size, seed)
        val_loader = distributed.eval_loader(spec, splits.val, eval_size, seed)
        test_loader = distributed.eval_loader(spec, splits.test, eval_size, seed)
        ordered_train = distributed.eval_loader(spec, splits.train, eval_size, seed)
        model = distributed.wrap(model, device)
        sync = lambda: distributed.sync_gradients(model, method)  # noqa: E731

    optimizer = make_optimizer(model, method, protocol)
    scheduler, on_criterion = _scheduler(protocol, optimizer, criterion.mode)
    # The method's own warm-up, else the protocol's, so all methods of a protocol clip alike.
    own_warmup = method.own_warmup_epochs()
    warmup = int((protocol.warmup_epochs if own_warmup is None else own_warmup) or 0)
    clipping = GradientClipping(protocol.clip_heads, protocol.clip_shared, warmup)
    probe = TrainingDiagnostics.for_method(method) if diagnostics else None
    names = task_names(groups)

    states = dict(
        model=model, method=method, optimizer=optimizer, scheduler=scheduler, loader=train_loader
    )
    done = (checkpoint.load(**states) if checkpoint is not None else None) or Progress()
    if epoch_log is not None and done.rows:
        epoch_log.restore(done.rows)
    history = done.history
    step_seconds = done.step_seconds
    timed_from_step = done.timed_from_step
    weights_per_epoch = done.weights_per_epoch
    best = done.best
    initial_losses = done.initial_losses
    if initial_losses is None and history:  # a checkpoint written before initial_losses existed
        initial_losses = list(history[0]["train_loss"])
    first_step: Tensor | None = None
    fitted = list(method.fitted_tasks())
    training_features = _training_features(model, spec, groups, ordered_train, device, scaler)
    # A bar only on a terminal: redirected to a log file, tqdm's carriage returns and escape
    # sequences make it unreadable, so a plain line per epoch stands in for the bar there.
    bar = progress and _is_terminal(sys.stderr)
    epochs = tqdm(
        range(done.epoch, protocol.epochs),
        desc=label or "epochs",
        disable=not bar,
        leave=False,
    )
    for epoch in epochs:
        model.train()
        if epoch == timed_from_epoch:
            timed_from_step = len(step_seconds)
        if warmup > 0 and epoch == warmup:
            method.end_warmup(optimizer, list(model.encoder.parameters()))
        clip = clipping.for_epoch(epoch)
        if probe is not None:
            probe.start_epoch(len(train_loader))
        loss_sum = torch.zeros(len(names), dtype=torch.float64)
        weight_sum: Tensor | None = None
        weight_count = 0
        steps = 0
        start = time.perf_counter()
        # Time spent waiting for the loader and moving batches (a loader must not dominate a
        # step, and this column shows when it does): from the end of one step to the start of
        # the next.
        data_seconds = 0.0
        fetch_from = start
        batches = tqdm(train_loader, desc=f"epoch {epoch + 1}", disable=not bar, leave=False)
        for batch in batches:
            x, targets = split_batch(spec, groups, batch, device)
            if scaler is not None:
                targets = scaler.forward(targets)
            data_seconds += time.perf_counter() - fetch_from
            if probe is not None and probe.due(steps):
                probe.measure(model, groups, x, targets)
            t0 = time.perf_counter()
            try:
                losses = training_step(
                    model, method, optimizer, groups, x, targets, sync=sync, clip=clip
                )
            except FloatingPointError as err:
                # The runner counts epochs from 1 (epochs.csv, result.json); the library's
                # own messages (``agg.epoch``) from 0: say so where both appear in one line.
                library = (
                    "; the library's message that follows counts from 0"
                    if "epoch" in str(err)
                    else ""
                )
                raise FloatingPointError(
                    f"{label or method.name}: training diverged in epoch {epoch + 1} of "
                    f"{protocol.epochs} (counted from 1, as in epochs.csv{library}), "
                    f"step {steps + 1}: {err}"
                ) from err
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            step_seconds.append(time.perf_counter() - t0)
            fetch_from = time.perf_counter()
            loss_sum += losses.detach().double().cpu()
            if first_step is None and initial_losses is None:
                first_step = losses.detach().double().cpu()
            if method.last_weights is not None:
                w = method.last_weights.detach().double().cpu().reshape(-1)
                weight_sum = w if weight_sum is None else weight_sum + w
                weight_count += 1
            steps += 1
        if distributed is not None:  # the global batches' losses and weights
            loss_sum = distributed.mean(loss_sum, device)
            weight_sum = None if weight_sum is None else distributed.mean(weight_sum, device)
        epoch_losses = (loss_sum / max(steps, 1)).float()
        if initial_losses is None and first_step is not None:
            if distributed is not None:  # the same reference on every process
                first_step = distributed.mean(first_step, device)
            initial_losses = first_step.tolist()
        check_divergence(
            epoch,
            protocol.epochs,
            epoch_losses.tolist(),
            initial_losses,
            names,
            watched=watched,
            fitted=fitted,
            label=label or method.name,
        )
        method.end_epoch(epoch_losses.to(device))
        train_seconds = time.perf_counter() - start

        with torch.no_grad():
            method.before_evaluation(epoch, model.heads, training_features)
        eval_start = time.perf_counter()
        val = evaluate_split(model, spec, groups, val_loader, device, scaler)
        test = evaluate_split(model, spec, groups, test_loader, device, scaler)
        eval_seconds = time.perf_counter() - eval_start
        value = criterion.value(val)
        if best is None or criterion.better(value, best[1]):
            best = (epoch, value, val, test)
        lr = optimizer.param_groups[0]["lr"]
        if scheduler is not None:
            if on_criterion:
                if value is not None:
                    scheduler.step(value)
            else:
                scheduler.step()
        weights = None if weight_sum is None else (weight_sum / weight_count).tolist()
        weights_per_epoch.append(weights)
        row: dict[str, Any] = {
            "epoch": epoch + 1,
            "lr": lr,
            "train_seconds": round(train_seconds, 4),
            "step_ms_median": round(
                1000 * statistics.median(step_seconds[-steps:]) if steps else 0.0, 4
            ),
            "data_seconds": round(data_seconds, 4),
            "eval_seconds": round(eval_seconds, 4),
            f"val/{criterion.name}": value,
        }
        row.update({f"train_loss/{n}": float(v) for n, v in zip(names, epoch_losses, strict=True)})
        row.update(flatten("val/", val))
        row.update(flatten("test/", test))
        if weights is not None:
            row.update({f"weight/{n}": w for n, w in zip(names, weights, strict=True)})
        if probe is not None:
            row.update(probe.end_epoch())
        history.append(
            {
                "epoch": epoch + 1,
                "lr": lr,
                "train_loss": epoch_losses.tolist(),
                "val_criterion": value,
                "train_seconds": train_seconds,
            }
        )
        if epoch_log is not None:
            epoch_log.append(row)
        if checkpoint is not None and (distributed is None or distributed.rank == 0):
            rows = [] if epoch_log is None else epoch_log.rows
            done = Progress(
                epoch + 1,
                history,
                step_seconds,
                timed_from_step,
                weights_per_epoch,
                best,
                rows,
                initial_losses,
            )
            checkpoint.save(done, **states)
        # The last epoch's value is not the reported one: results are those of the epoch with
        # the best validation criterion, so the bar and the log line name that epoch too.
        selected = f"{_number(best[1])} at epoch {best[0] + 1}"
        epochs.set_postfix({criterion.name: _number(value), "selected": selected})
        if progress and not bar:
            print(
                f"{label or 'epochs'}: epoch {epoch + 1}/{protocol.epochs}, validation "
                f"{criterion.name} {_number(value)} (selected so far: {selected}), "
                f"{train_seconds + eval_seconds:.1f} s",
                file=sys.stderr,
                flush=True,
            )

    assert best is not None
    notes = method.report_notes()
    if distributed is not None:
        notes.extend(distributed.finish_notes(train_loader))
    epoch, value, val, test = best
    return TrainResult(
        best_epoch=epoch + 1,
        criterion=criterion,
        criterion_value=value,
        val=val,
        test=test,
        history=history,
        step_seconds=step_seconds,
        timed_from_step=timed_from_step,
        weights_per_epoch=weights_per_epoch,
        notes=notes,
    )


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
