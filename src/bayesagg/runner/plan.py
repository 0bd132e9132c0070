"""A checked run, resolved once: :class:`Plan` and :func:`plan`.

A run flows one way, so that no stage can disagree with another about what the run is:
:func:`plan` resolves a :class:`RunConfig` against the benchmark registry, the protocol, the
method's registry entry, the STL references and the results layout; training reads the plan
(and writes checkpoints); the result document is written from the plan and the training
outcome. Nothing later goes back to the registry or the results layout to recompute what the
plan holds.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bayesagg import methods
from bayesagg.benchmarks import registry
from bayesagg.benchmarks.registry import Benchmark, Protocol, References
from bayesagg.methods.base import Method
from bayesagg.runner.checks import check_finite_options, check_seed
from bayesagg.runner.config import ConfigError, RunConfig
from bayesagg.runner.hparams import protocol_hparams, validate_hparams
from bayesagg.runner.references import resolve_references
from bayesagg.runner.results import method_label, protocol_dir, run_dir
from bayesagg.runner.selection import Criterion, make_criterion
from bayesagg.tasks import TaskGroup, num_tasks, task_names

__all__ = ["Plan", "benchmark_spec", "effective_protocol", "normalised", "plan"]


@dataclass(frozen=True)
class Plan:
    """A checked run, resolved once: everything training and writing need, derived here."""

    config: RunConfig
    spec: Benchmark
    protocol: Protocol
    groups: tuple[TaskGroup, ...]
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

    @property
    def seed(self) -> int:
        return self.config.seed

    @property
    def timed_from_epoch(self) -> int:
        """Return the first epoch whose steps count in the time per step.

        A method's ``warmup_epochs`` hyper-parameter (BayesAgg-MTL's linear-scalarisation
        warm-up) is left out of the timing, unless it spans the whole run.
        """
        warmup = int(self.hparams.get("warmup_epochs", 0) or 0)
        return warmup if warmup < self.protocol.epochs else 0

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

    def stl_metric(self, task: int | None) -> str | None:
        """Return the metric an STL model of task ``task`` is judged by (None: not STL)."""
        return None if task is None else self.metrics[task]

    def criterion(self, task: int | None = None) -> Criterion:
        """Return the validation criterion of the run (of task ``task``'s STL model)."""
        return make_criterion(
            self.spec, self.names, self.metrics, self.references, self.stl_metric(task)
        )

    def create_method(self, task: int | None = None) -> Method:
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


def benchmark_spec(name: str) -> Benchmark:
    """Return the registry's benchmark ``name`` (ConfigError naming the known ones)."""
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
    for key, value in (
        ("batch_size", config.batch_size),
        ("lr", config.lr),
        ("train_limit", config.train_limit),
        ("eval_limit", config.eval_limit),
    ):
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
    spec = benchmark_spec(config.benchmark)
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
        references_json=None if references is None else normalised(references.to_json()),
        names=names,
        metrics=tuple(spec.task_metrics(groups)),
        label=method_label(config.method, config.hparams),
        identity=normalised(config.identity()),
        settings=normalised(protocol.recorded_settings()),
        folder=folder,
        run_dirs={key: run_dir(config, key) for key in keys},
    )
    # Build the method once now, so bad values fail before any data is loaded.
    p.create_method(0 if config.method == "stl" else None)
    if config.method == "stl":
        p.stl_tasks()
    return p


def normalised(data: Any) -> Any:
    """Return ``data`` as it reads back from JSON (tuples as lists, objects as strings)."""
    return json.loads(json.dumps(data, default=str))
