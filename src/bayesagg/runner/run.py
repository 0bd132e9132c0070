"""One run from a :class:`RunConfig`: resolve the recipe, train, write JSON + CSV.

``run`` checks everything it can before loading data (benchmark, protocol, method,
hyper-parameters, references), skips a run whose ``result.json`` already holds the same
config (unless ``force``), resumes an interrupted one from its ``checkpoint.pt``, and for
``method="stl"`` trains one model per task and refreshes this project's STL references file.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from bayesagg.benchmarks.registry import Benchmark, Protocol, References
from bayesagg.runner.checkpoint import CHECKPOINT_FILE, Checkpoint
from bayesagg.runner.checks import check_finite_options, check_seed, check_writable
from bayesagg.runner.config import ConfigError, RunConfig, check_device
from bayesagg.runner.distributed import context as distributed_context
from bayesagg.runner.distributed import distributed_fields, is_main
from bayesagg.runner.hparams import protocol_hparams, validate_hparams
from bayesagg.runner.lock import RunLock, remove_stale_temporaries
from bayesagg.runner.references import resolve_references, write_own_references
from bayesagg.runner.results import (
    EPOCH_FILE,
    RESULT_FILE,
    SCHEMA,
    EpochLog,
    foreign_reason,
    method_label,
    package_versions,
    protocol_dir,
    read_json,
    run_dir,
    write_json_atomic,
)
from bayesagg.runner.train import (
    TrainResult,
    deterministic,
    make_criterion,
    seed_everything,
    train,
)
from bayesagg.tasks import num_tasks, task_kinds, task_names

__all__ = ["Plan", "finished_result", "plan", "run"]


@dataclass(frozen=True)
class Plan:
    """A checked run, resolved once: everything training and writing need, derived here.

    A run flows one way, so that no stage can disagree with another about what the run is:
    :func:`plan` resolves the config against the benchmark
    registry, the protocol, the method's registry entry, the STL references and the results
    layout; training reads the plan (and writes checkpoints); the result document is written
    from the plan and the training outcome. Nothing later goes back to the registry or
    the results layout to recompute what the plan holds.
    """

    config: RunConfig
    spec: Benchmark
    protocol: Protocol
    groups: tuple[Any, ...]
    hparams: dict[str, Any]
    references: References | None
    #: Task names and each task's metric key (``spec.task_metrics``), in task order.
    names: tuple[str, ...] = ()
    metrics: tuple[str, ...] = ()
    #: The references as written to ``result.json`` (None: no Delta_m).
    references_json: dict[str, Any] | None = None
    #: The method's label (name plus non-default hyper-parameters) and the run's identity.
    label: str = ""
    identity: dict[str, Any] = field(default_factory=dict)
    #: The protocol's settings as written to ``result.json``.
    settings: dict[str, Any] = field(default_factory=dict)
    #: ``<out>/<benchmark>/<protocol>[+overrides]`` and each run's folder (key: STL task or None).
    folder: Path = Path()
    run_dirs: dict[str | None, Path] = field(default_factory=dict)

    @property
    def num_tasks(self) -> int:
        return num_tasks(self.groups)

    def stl_tasks(self) -> list[int]:
        names = list(self.names)
        if self.config.task is None:
            return list(range(len(names)))
        if self.config.task not in names:
            raise ConfigError(
                f"benchmark {self.spec.name!r} has no task {self.config.task!r}; "
                f"tasks: {', '.join(names)}"
            )
        return [names.index(self.config.task)]

    def run_dir(self, task: int | None) -> Path:
        """Return the folder of the run (for STL, of task ``task``'s model)."""
        return self.run_dirs[None if task is None else self.names[task]]

    def create_method(self, task: int | None = None) -> Any:
        from bayesagg import methods

        kwargs = dict(self.hparams)
        if methods.method_class(self.config.method).needs_groups:
            kwargs["groups"] = self.groups
        if task is not None:
            kwargs["task"] = task
        try:
            return methods.create(self.config.method, num_tasks=self.num_tasks, **kwargs)
        except (TypeError, ValueError) as err:
            prefix = f"bad hyper-parameters for method {self.config.method!r}: "
            # methods.create already names the method in its TypeError: say it once.
            raise ConfigError(prefix + str(err).removeprefix(prefix)) from None


def _benchmark(name: str) -> Benchmark:
    from bayesagg.benchmarks import registry

    try:
        return registry.get(name)
    except KeyError:
        raise ConfigError(
            f"unknown benchmark {name!r}; known benchmarks: {', '.join(registry.names())}"
        ) from None


def effective_protocol(spec: Benchmark, config: RunConfig) -> Protocol:
    """Return the benchmark's protocol with the config's explicit overrides applied."""
    try:
        protocol = spec.protocol(config.protocol)
    except KeyError:
        raise ConfigError(
            f"unknown protocol {config.protocol!r} for {spec.name}; "
            f"known: {', '.join(spec.protocols)}"
        ) from None
    if config.epochs is not None:
        if config.epochs < 1:
            raise ConfigError(f"--epochs must be >= 1, got {config.epochs}")
        protocol = protocol.with_epochs(config.epochs)
    changes: dict[str, Any] = {}
    for key in ("batch_size", "lr", "train_limit", "eval_limit"):
        value = getattr(config, key)
        if value is not None:
            if not value > 0 or not math.isfinite(value):
                raise ConfigError(
                    f"--{key.replace('_', '-')} must be a positive finite number, got {value}"
                )
            changes[key] = value
    if config.data_options:
        changes["data_options"] = {**protocol.data_options, **config.data_options}
    if config.model_options:
        changes["model_options"] = {**protocol.model_options, **config.model_options}
    return replace(protocol, **changes) if changes else protocol


def plan(config: RunConfig) -> Plan:
    """Return the checked plan of a run, or raise ConfigError naming what is wrong."""
    from bayesagg import methods

    spec = _benchmark(config.benchmark)
    config = replace(config, benchmark=spec.name, method=config.method.lower())
    check_seed(config.seed)
    check_finite_options(config.hparams, "--hp")
    check_finite_options(config.model_options, "--model-option")
    check_finite_options(config.data_options, "--data-option")
    protocol = effective_protocol(spec, config)
    if config.method not in methods.names():
        raise ConfigError(
            f"unknown method {config.method!r}; known methods: {', '.join(methods.names())}"
        )
    if config.task is not None and config.method != "stl":
        raise ConfigError("--task is only for --method stl (single-task learning)")
    validate_hparams(config.method, config.hparams)
    hparams: dict[str, Any] = {}
    family = methods.method_class(config.method).settings_family
    if family is not None:  # the protocol's settings of the method (BayesAgg-MTL's)
        hparams.update(protocol_hparams(config.method, protocol.settings_of(family)))
    hparams.update(config.hparams)
    groups = tuple(spec.groups_for(protocol))
    folder = protocol_dir(config)
    references = None
    if config.method != "stl":
        references = resolve_references(spec, config.references, folder / "references.json")
    names = tuple(task_names(groups))
    keys: list[str | None] = list(names) if config.method == "stl" else [None]
    p = Plan(
        config,
        spec,
        protocol,
        groups,
        hparams,
        references,
        references_json=None if references is None else _normalised(references.to_json()),
        names=names,
        metrics=tuple(spec.task_metrics(groups)),
        label=method_label(config.method, config.hparams),
        identity=_normalised(config.identity()),
        settings=_normalised(_settings(protocol)),
        folder=folder,
        run_dirs={key: run_dir(config, key) for key in keys},
    )
    # Build the method once now, so bad values fail before any data is loaded.
    p.create_method(0 if config.method == "stl" else None)
    if config.method == "stl":
        p.stl_tasks()
    return p


def _normalised(data: Any) -> Any:
    return json.loads(json.dumps(data, default=str))


def finished_result(config: RunConfig, task: str | None = None) -> dict[str, Any] | None:
    """Return the finished result of exactly this run, or None (absent, other config, corrupt)."""
    protocol = effective_protocol(_benchmark(config.benchmark), config)
    return _finished(
        run_dir(config, task) / RESULT_FILE,
        _normalised(config.identity()),
        _normalised(_settings(protocol)),
    )


def _finished(path: Path, identity: Any, settings: Any) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = read_json(path)
    except (OSError, ValueError):
        return None
    if data.get("schema") != SCHEMA or data.get("config") != identity:
        return None
    # A protocol whose recipe changed since (clipping, task groups, ...) is another run.
    if data.get("protocol_settings") != settings:
        return None
    return data


def _settings(protocol: Protocol) -> dict[str, Any]:
    """Return the protocol's fields as written to ``result.json`` (``protocol_settings``)."""
    return protocol.recorded_settings()


def _say_if_replaced(path: Path, identity: Any, settings: Any, say: Callable[[str], None]) -> None:
    """Name a result file that exists but is not this run's finished result: training again
    replaces it, and the user should hear so rather than find it overwritten."""
    if not path.is_file():
        return
    try:
        data = read_json(path)
    except (OSError, ValueError) as err:
        say(f"unreadable result file {path} ({type(err).__name__}: {err}): run again")
        return
    reason = foreign_reason(data)
    if reason is None:
        config = data.get("config")
        if isinstance(config, dict):
            changed = [k for k in identity if config.get(k) != identity[k]]
        else:
            changed = ["config"]
        if data.get("protocol_settings") != settings:
            changed.append("protocol settings")
        reason = f"a run with other {', '.join(changed)}" if changed else None
    if reason is not None:
        say(f"result file {path} is {reason}: training again replaces it")


# The last data set loaded, keyed by everything that shapes it: consecutive runs of a compare
# (or of the STL tasks) on the same data reuse it instead of loading it again.
_LAST_SPLITS: dict[tuple[Any, ...], Any] = {}


def _load_splits(p: Plan) -> Any:
    config, protocol = p.config, p.protocol
    key = (
        p.spec.name,
        str(config.data_dir),
        config.seed,
        protocol.train_limit,
        protocol.eval_limit,
        json.dumps(dict(protocol.data_options), sort_keys=True, default=str),
    )
    if key not in _LAST_SPLITS:
        _LAST_SPLITS.clear()
        _LAST_SPLITS[key] = _read_splits(p)
    return _LAST_SPLITS[key]


def _read_splits(p: Plan) -> Any:
    from torch.utils.data import Subset

    config, protocol = p.config, p.protocol
    try:
        splits = p.spec.load(
            config.data_dir,
            seed=config.seed,
            limit=protocol.train_limit,
            **dict(protocol.data_options),
        )
    except TypeError as err:
        raise ConfigError(f"bad data option for {p.spec.name}: {err}") from None
    if protocol.eval_limit is None:
        return splits
    capped = []
    for k, dataset in enumerate(splits):
        if k > 0 and len(dataset) > protocol.eval_limit:
            generator = torch.Generator().manual_seed(config.seed * 1000 + k)
            keep = torch.randperm(len(dataset), generator=generator)[: protocol.eval_limit]
            dataset = Subset(dataset, sorted(keep.tolist()))
        capped.append(dataset)
    return type(splits)(*capped)


def _check_splits(p: Plan, splits: Any) -> dict[str, int]:
    sizes = {name: len(ds) for name, ds in zip(("train", "val", "test"), splits, strict=True)}
    empty = [name for name, n in sizes.items() if n == 0]
    if empty:
        raise ConfigError(
            f"{p.spec.name}: the {', '.join(empty)} split is empty (limit too small?)"
        )
    return sizes


def run(
    config: RunConfig,
    *,
    force: bool = False,
    progress: bool = False,
    command: str | None = None,
    device: str = "cpu",
    echo: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Run (or reuse) one training run; return its result documents (one per STL task).

    A run whose ``result.json`` holds the same config is returned as is unless ``force``.
    """
    p = plan(config)
    config = p.config
    check_device(device)
    say = echo or (lambda _msg: None)
    tasks: list[int | None] = p.stl_tasks() if config.method == "stl" else [None]
    todo = []
    results: list[dict[str, Any]] = []
    for t in tasks:
        path = p.run_dir(t) / RESULT_FILE
        done = None if force else _finished(path, p.identity, p.settings)
        if done is None and not force:
            _say_if_replaced(path, p.identity, p.settings, say)
        if done is not None:
            say(f"skip (finished): {p.run_dir(t)}")
            results.append(done)
        else:
            todo.append(t)
    ctx = distributed_context()
    with contextlib.ExitStack() as locks:
        if todo and is_main():
            todo = _claim(p, todo, locks, results, force, command, say, recheck=ctx is None)
        if todo:
            splits = _load_splits(p)
            sizes = _check_splits(p, splits)
            where = torch.device(device) if ctx is None else ctx.device(device)
            for t in todo:
                results.append(
                    _train_one(p, splits, sizes, t, progress, command, where, say, force)
                )
    if config.method == "stl" and is_main():
        path = write_own_references(config.out, p.spec, p.folder.name)
        say(f"STL references: {path}")
    return results


def _claim(
    p: Plan,
    todo: list[int | None],
    locks: contextlib.ExitStack,
    results: list[dict[str, Any]],
    force: bool,
    command: str | None,
    say: Callable[[str], None],
    *,
    recheck: bool,
) -> list[int | None]:
    """Check, lock and tidy the folders of the runs to train; return those still to train.

    Every folder is checked for writing first (nothing trains if one cannot be written), then
    locked (:class:`RunLock`: a second process on the same run stops, naming the first), then
    cleared of the temporary files a killed run left. ``recheck``: a run that another process
    finished while this one waited for data or checks is taken as finished (one process only;
    in a multi-process run every rank must train the same runs).
    """
    for t in todo:
        check_writable(p.run_dir(t))
    left: list[int | None] = []
    for t in todo:
        folder = p.run_dir(t)
        locks.enter_context(RunLock(folder, command, say))
        remove_stale_temporaries(folder, say)
        done = (
            None
            if force or not recheck
            else _finished(folder / RESULT_FILE, p.identity, p.settings)
        )
        if done is not None:
            say(f"skip (finished by another process): {folder}")
            results.append(done)
        else:
            left.append(t)
    return left


def _train_one(
    p: Plan,
    splits: Any,
    sizes: dict[str, int],
    task: int | None,
    progress: bool,
    command: str | None,
    device: torch.device,
    say: Callable[[str], None],
    force: bool = False,
) -> dict[str, Any]:
    config, spec, protocol = p.config, p.spec, p.protocol
    task_name = None if task is None else p.names[task]
    folder = p.run_dir(task)
    ctx = distributed_context()  # multi-process runs: only rank 0 writes
    if is_main():
        folder.mkdir(parents=True, exist_ok=True)
        (folder / EPOCH_FILE).unlink(missing_ok=True)  # rewritten from the checkpoint's rows
    identity = {"config": p.identity, "task": task_name, "references": p.references_json}
    # Every process resumes from rank 0's checkpoint; only rank 0 writes or deletes it. After
    # --force no process reads it (rank 0 deletes it, the others might still see it).
    checkpoint: Checkpoint | None = Checkpoint(folder / CHECKPOINT_FILE, identity, say)
    if force:
        if is_main():
            checkpoint.discard()
        else:
            checkpoint = None
    stl_metric = None if task is None else p.metrics[task]
    started = _dt.datetime.now(_dt.timezone.utc)
    wall = time.perf_counter()
    with deterministic():
        seed_everything(config.seed)
        model = spec.build_model(p.groups, **dict(protocol.model_options))
        method = p.create_method(task)
        criterion = make_criterion(spec, p.groups, p.references, stl_metric)
        warmup = int(p.hparams.get("warmup_epochs", 0) or 0)
        label = p.label + (f" {task_name}" if task_name else "")
        # An STL model trains one task; the others' untrained heads may drift.
        watched = None if task is None else [task]
        outcome = train(
            spec=spec,
            protocol=protocol,
            groups=p.groups,
            model=model,
            method=method,
            splits=splits,
            criterion=criterion,
            seed=config.seed,
            device=device,
            epoch_log=EpochLog(folder / EPOCH_FILE) if is_main() else None,
            timed_from_epoch=warmup if warmup < protocol.epochs else 0,
            progress=progress and is_main(),
            label=f"{spec.name} {label} seed {config.seed}",
            distributed=ctx,
            checkpoint=checkpoint,
            watched=watched,
        )
    document = _document(p, outcome, sizes, task, stl_metric, command, started, wall, model)
    document["resumed_after_epoch"] = None if checkpoint is None else checkpoint.resumed_from
    if is_main():
        write_json_atomic(folder / RESULT_FILE, document)
        if checkpoint is not None:
            checkpoint.discard()  # result.json now holds everything the run is for
        say(f"wrote {folder / RESULT_FILE}")
    return document


def _delta_m(references: References | None, metrics: Mapping[str, Any]) -> float | None:
    from bayesagg.metrics import delta_m

    if references is None:
        return None
    try:
        return delta_m(metrics, references.values)
    except KeyError:
        return None


def _document(
    p: Plan,
    outcome: TrainResult,
    sizes: dict[str, int],
    task: int | None,
    stl_metric: str | None,
    command: str | None,
    started: _dt.datetime,
    wall: float,
    model: torch.nn.Module,
) -> dict[str, Any]:
    config, spec, protocol = p.config, p.spec, p.protocol
    refs = p.references
    delta = None
    if refs is not None:
        delta = {
            "test": _delta_m(refs, outcome.test),
            "val": _delta_m(refs, outcome.val),
            "references": p.references_json,
        }
    hp = {k: v for k, v in p.hparams.items()}
    return _normalised(
        {
            "schema": SCHEMA,
            "benchmark": spec.name,
            "method": config.method,
            "method_label": p.label,
            "seed": config.seed,
            "protocol": config.protocol,
            "protocol_dir": p.folder.name,
            "protocol_settings": p.settings,
            "protocol_note": protocol.note,
            "caveat": spec.caveat,
            "config": p.identity,
            "hparams": hp,
            "groups": [{k: v for k, v in g.__dict__.items() if v is not None} for g in p.groups],
            "tasks": list(p.names),
            "task_kinds": task_kinds(p.groups),
            "task_metrics": list(p.metrics),
            "stl_task": None if task is None else p.names[task],
            "stl_metric": stl_metric,
            "split_sizes": sizes,
            "selection": {
                "criterion": outcome.criterion.name,
                "mode": outcome.criterion.mode,
                "split": "val",
                "epoch": outcome.best_epoch,
                "value": outcome.criterion_value,
            },
            "epochs": protocol.epochs,
            "val": outcome.val,
            "test": outcome.test,
            "delta_m": delta,
            "time_per_step": outcome.time_per_step(),
            "weights_per_epoch": outcome.weights_per_epoch,
            "history": outcome.history,
            "notes": outcome.notes,
            "parameters": sum(x.numel() for x in model.parameters()),
            "device": str(next(model.parameters()).device),
            **distributed_fields(),
            "torch_threads": torch.get_num_threads(),
            "versions": package_versions(),
            "command": command or "python: bayesagg.runner.run",
            "started": started.isoformat(timespec="seconds"),
            "wall_seconds": time.perf_counter() - wall,
        }
    )


def result_path(config: RunConfig, task: str | None = None) -> Path:
    return run_dir(config, task) / RESULT_FILE
