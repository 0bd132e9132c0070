"""One run from a :class:`RunConfig`: resolve the recipe, train, write JSON + CSV.

``run`` checks everything it can before loading data (benchmark, protocol, method,
hyper-parameters, references), skips a run whose ``result.json`` already holds the same
config (unless ``force``), resumes an interrupted one from its ``checkpoint.pt``, and for
``method="stl"`` trains one model per task and refreshes this project's STL references file.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from bayesagg.benchmarks.registry import References
from bayesagg.benchmarks.splits import Splits
from bayesagg.metrics import delta_m
from bayesagg.runner.checkpoint import CHECKPOINT_FILE, Checkpoint
from bayesagg.runner.checks import check_writable
from bayesagg.runner.config import RunConfig, check_device
from bayesagg.runner.launch import context as distributed_context
from bayesagg.runner.launch import distributed_fields, is_main
from bayesagg.runner.lock import RunLock, remove_stale_temporaries
from bayesagg.runner.plan import Plan, normalised, plan
from bayesagg.runner.references import write_own_references
from bayesagg.runner.results import (
    EPOCH_FILE,
    RESULT_FILE,
    SCHEMA,
    EpochLog,
    foreign_reason,
    package_versions,
    read_json,
    run_dir,
    write_json_atomic,
)
from bayesagg.runner.splits import SplitsCache, check_splits
from bayesagg.runner.train import TrainResult, deterministic, seed_everything, train
from bayesagg.tasks import task_kinds

__all__ = ["Plan", "finished_result", "plan", "result_path", "run"]


def finished_result(
    config: RunConfig, settings: dict[str, Any], task: str | None = None
) -> dict[str, Any] | None:
    """Return the finished result of exactly this run, or None (absent, other config, corrupt).

    ``settings``: the run's protocol settings as its plan holds them (:attr:`Plan.settings`).
    """
    return _finished(run_dir(config, task) / RESULT_FILE, normalised(config.identity()), settings)


def _finished(
    path: Path, identity: dict[str, Any], settings: dict[str, Any]
) -> dict[str, Any] | None:
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


def _say_if_replaced(
    path: Path, identity: dict[str, Any], settings: dict[str, Any], say: Callable[[str], None]
) -> None:
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


def run(
    config: RunConfig,
    *,
    force: bool = False,
    progress: bool = False,
    command: str | None = None,
    device: str = "cpu",
    echo: Callable[[str], None] | None = None,
    data: SplitsCache | None = None,
) -> list[dict[str, Any]]:
    """Run (or reuse) one training run; return its result documents (one per STL task).

    A run whose ``result.json`` holds the same config is returned as is unless ``force``.
    ``data``: splits already loaded by earlier runs (a compare's), reused where they are this
    run's data.
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
            splits = (data or SplitsCache()).get(p)
            sizes = check_splits(p, splits)
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
    splits: Splits,
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
    started = _dt.datetime.now(_dt.timezone.utc)
    wall = time.perf_counter()
    with deterministic():
        seed_everything(config.seed)
        model = spec.build_model(p.groups, **dict(protocol.model_options))
        method = p.create_method(task)
        label = p.label + (f" {task_name}" if task_name else "")
        outcome = train(
            plan=p,
            splits=splits,
            model=model,
            method=method,
            criterion=p.criterion(task),
            device=device,
            task=task,
            epoch_log=EpochLog(folder / EPOCH_FILE) if is_main() else None,
            progress=progress and is_main(),
            label=f"{spec.name} {label} seed {config.seed}",
            distributed=ctx,
            checkpoint=checkpoint,
        )
    document = _document(p, outcome, sizes, task, command, started, wall, model)
    document["resumed_after_epoch"] = None if checkpoint is None else checkpoint.resumed_from
    if is_main():
        write_json_atomic(folder / RESULT_FILE, document)
        if checkpoint is not None:
            checkpoint.discard()  # result.json now holds everything the run is for
        say(f"wrote {folder / RESULT_FILE}")
    return document


def _delta_m(references: References | None, metrics: Mapping[str, Any]) -> float | None:
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
    command: str | None,
    started: _dt.datetime,
    wall: float,
    model: torch.nn.Module,
) -> dict[str, Any]:
    config, spec, protocol = p.config, p.spec, p.protocol
    stl_metric = p.stl_metric(task)
    refs = p.references
    delta = None
    if refs is not None:
        delta = {
            "test": _delta_m(refs, outcome.test),
            "val": _delta_m(refs, outcome.val),
            "references": p.references_json,
        }
    hp = {k: v for k, v in p.hparams.items()}
    return normalised(
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
