"""What a benchmark is: its training protocols, STL references and the specification the runner reads.

A :class:`Benchmark` says everything the runner needs and nothing it must guess: where the data
loader and the model live (imported only when used), the published training protocols
(:class:`Protocol`), which metric each task is judged by, how the model is selected, and the STL
references with their provenance (:class:`References`; docs/benchmarks.md: "The benchmarks",
"STL and Delta_m", and the settings of the `paper` protocols with their sources). The benchmark
packages build their ``SPEC`` from these classes; :mod:`bayesagg.benchmarks.registry` finds them
by name.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType, ModuleType
from typing import Any, Literal

from bayesagg.benchmarks.heads import MultiTaskModel
from bayesagg.tasks import Binary, Regression, TaskGroup

__all__ = ["RECORDED_FAMILIES", "Benchmark", "Protocol", "References"]


def _frozen(mapping: Mapping[str, Any] | None = None) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping or {}))


@dataclass(frozen=True)
class Protocol:
    """One training recipe: budget, optimiser, schedule, and the BayesAgg-MTL settings.

    ``paper`` is the published recipe; ``quick`` the same recipe on a CPU budget; ``smoke`` a
    run that only proves the pipeline works. ``note`` says how the recipe departs from the
    paper's, and is printed with every table that uses it.
    """

    name: str
    epochs: int
    batch_size: int
    lr: float = 1e-3
    weight_decay: float = 0.0
    #: "plateau": ReduceLROnPlateau on the selection criterion; "multistep": x``decay`` at
    #: the ``milestones`` (fractions of the epochs); "none": constant learning rate.
    scheduler: Literal["none", "plateau", "multistep"] = "none"
    milestones: tuple[float, ...] = ()
    decay: float = 0.1
    plateau_factor: float = 0.7
    plateau_patience: int = 5
    min_lr: float = 1e-5
    #: Examples kept per split (train, validation, test); None keeps the split whole.
    train_limit: int | None = None
    eval_limit: int | None = None
    #: Extra keyword arguments for the data loader (e.g. QM9's graph construction).
    data_options: Mapping[str, Any] = field(default_factory=_frozen)
    #: Extra keyword arguments for the model builder (e.g. a reduced width for smoke tests).
    model_options: Mapping[str, Any] = field(default_factory=_frozen)
    #: Per-method settings of this protocol, keyed by method family (a method's
    #: ``settings_family``; today ``"bayesagg"``: BayesAgg-MTL's hyper-parameters, keys of its
    #: constructor). A method's ``--hp`` values override them.
    method_settings: Mapping[str, Mapping[str, Any]] = field(default_factory=_frozen)
    #: Gradient-norm clipping, applied to every method of the protocol: the heads' gradient
    #: (all heads jointly) at every step, and the shared parameters' gradient from the end of
    #: the warm-up on (``torch.nn.utils.clip_grad_norm_``, as in the authors' trainers).
    #: None: no clipping.
    clip_heads: float | None = None
    clip_shared: float | None = None
    #: Drop the last, smaller training batch of every epoch (CIFAR-MTL's trainer).
    drop_last: bool = False
    #: Task groups of this recipe when they differ from the data module's ``GROUPS`` (UTKFace
    #: ``paper``: gender as a 2-class multiclass group, as the authors' trainer); same names
    #: and order, so the metric keys and the STL references stay the same.
    groups: tuple[TaskGroup, ...] | None = None
    note: str = ""

    def derive(
        self,
        name: str,
        *,
        epochs: int,
        note: str,
        method_settings: Mapping[str, Mapping[str, Any]] | None = None,
        **changes: Any,
    ) -> Protocol:
        """Return this recipe on another budget: same settings, warm-up scaled to ``epochs``.

        ``quick`` and ``smoke`` are derived from ``paper`` so they keep its optimiser,
        schedule, clipping, task groups and BayesAgg-MTL settings (s, gamma, warm-up, ...),
        except the paper's BayesAgg-MTL behaviour (``PAPER_BEHAVIOUR``, pinned by ``paper``
        protocols): ``bayesagg`` runs the library's defaults there, ``bayesagg-paper`` the
        paper's; ``changes`` are the budget (batch size, example limits, model width, ...) and
        ``method_settings`` overrides per method family (e.g. ``{"bayesagg": {"num_samples":
        64}}``: fewer Monte-Carlo samples in a smoke run).
        """
        from bayesagg.bayes_agg import PAPER_BEHAVIOUR

        derived = self.with_epochs(epochs)
        settings = {family: dict(hp) for family, hp in derived.method_settings.items()}
        # A derived recipe runs the library's BayesAgg-MTL (its sturdier defaults, chosen by the
        # ablation in docs/bayesagg.md, "The ablation that chose the defaults"); the published one stays available there as
        # the method ``bayesagg-paper``.
        if "bayesagg" in settings:
            settings["bayesagg"] = {
                k: v for k, v in settings["bayesagg"].items() if k not in PAPER_BEHAVIOUR
            }
        for family, hp in (method_settings or {}).items():
            settings[family] = {**settings.get(family, {}), **hp}
        return replace(
            derived, name=name, note=note, method_settings=_frozen_settings(settings), **changes
        )

    def smoke(
        self, *, batch_size: int, train_limit: int, eval_limit: int, what: str, **changes: Any
    ) -> Protocol:
        """Return the ``smoke`` recipe: this one for 1 epoch on a few examples, to prove the
        pipeline works.

        One epoch leaves no warm-up; BayesAgg-MTL draws 64 Monte-Carlo samples instead of its
        recipe's. The note is "pipeline check only: " followed by ``what`` (the budget in
        words); ``changes`` are further budget changes, as for :meth:`derive`.
        """
        return self.derive(
            "smoke",
            epochs=1,
            batch_size=batch_size,
            train_limit=train_limit,
            eval_limit=eval_limit,
            method_settings={"bayesagg": {"num_samples": 64}},
            note=f"pipeline check only: {what}",
            **changes,
        )

    def with_epochs(self, epochs: int) -> Protocol:
        """Return this protocol with another epoch budget, warm-up scaled in proportion."""
        if epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {epochs}")
        settings = {}
        for family, mapping in self.method_settings.items():
            hp = dict(mapping)
            if "warmup_epochs" in hp and self.epochs > 0:
                scaled = round(hp["warmup_epochs"] * epochs / self.epochs)
                hp["warmup_epochs"] = max(min(epochs - 1, scaled), 0)
            settings[family] = hp
        return replace(self, epochs=epochs, method_settings=_frozen_settings(settings))

    def settings_of(self, family: str | None) -> Mapping[str, Any]:
        """Return the settings of one method family (empty for None or a family without any)."""
        return _frozen() if family is None else self.method_settings.get(family, _frozen())

    @property
    def warmup_epochs(self) -> int:
        """Return the protocol's warm-up: the longest ``warmup_epochs`` of its method settings.

        A method without a warm-up of its own starts the shared clip at its end, so all the
        methods of a protocol clip from the same epoch (0: no method settings hold one).
        """
        return max(
            (int(hp.get("warmup_epochs", 0) or 0) for hp in self.method_settings.values()),
            default=0,
        )

    def recorded_settings(self) -> dict[str, Any]:
        """Return the protocol's fields as a result file records them (``protocol_settings``).

        Each method family's settings appear as a field of their own in the field's place,
        under the family's name: ``"bayesagg"`` always (empty when the protocol has none), as
        every result file written before the settings became a mapping holds it.
        """
        out: dict[str, Any] = {}
        for key, value in self.__dict__.items():
            if key == "method_settings":
                for family in dict.fromkeys((*RECORDED_FAMILIES, *self.method_settings)):
                    out[family] = dict(self.settings_of(family))
            else:
                out[key] = dict(value) if isinstance(value, Mapping) else value
        return out


#: Method families whose settings every result file records, even when empty.
RECORDED_FAMILIES = ("bayesagg",)


def _frozen_settings(settings: Mapping[str, Mapping[str, Any]]) -> Mapping[str, Mapping[str, Any]]:
    return _frozen({family: _frozen(hp) for family, hp in settings.items()})


@dataclass(frozen=True)
class References:
    """STL reference values (one per Delta_m metric) and where they come from."""

    values: Mapping[str, float]
    #: "published" or "own-stl".
    kind: str
    #: Human-readable provenance: the paper/table, or the runs that produced them.
    source: str

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "source": self.source, "values": dict(self.values)}


@dataclass(frozen=True)
class Benchmark:
    """Everything the runner needs about one benchmark (docs/benchmarks.md)."""

    name: str
    #: Package under ``bayesagg.benchmarks`` (or a full dotted path) with ``data`` and ``model``.
    package: str
    description: str
    protocols: Mapping[str, Protocol]
    #: "delta_m" or a metric key such as "mean/accuracy" (``task/metric``, "mean" = task mean).
    selection: str
    #: The metric each task is judged by (Delta_m, mean rank), by group kind.
    regression_metric: Literal["mae", "mse"] = "mae"
    binary_metric: Literal["accuracy", "auc", "error"] = "accuracy"
    #: Per-task multipliers for reporting regression metrics (QM9: energies in meV).
    regression_scale: tuple[float, ...] | None = None
    #: Standardise regression targets with the training statistics (QM9).
    standardise_targets: bool = False
    #: Also report k-way accuracy of the argmax over the binary logits (one-vs-rest tasks).
    argmax_accuracy: bool = False
    #: Also report ECE (15 bins) and Brier score of the classification tasks.
    calibration: bool = False
    #: The inputs are PyG graphs (batched with torch_geometric's DataLoader).
    graph: bool = False
    #: Published STL test values, one per task in task order (None: not published).
    published_stl: tuple[float, ...] | None = None
    #: Where ``published_stl`` comes from (paper, table).
    published_source: str = ""
    #: True when the data ships with a pip package (no data directory needed).
    data_included: bool = False
    #: A sentence every table of this benchmark must carry (e.g. "stands in for CIFAR-MTL").
    caveat: str = ""

    # -- lazily imported pieces -------------------------------------------------------------
    def _module(self, part: str) -> ModuleType:
        # A dotted package is a full module path (a benchmark defined outside this project).
        base = self.package if "." in self.package else f"bayesagg.benchmarks.{self.package}"
        return importlib.import_module(f"{base}.{part}")

    @property
    def groups(self) -> tuple[TaskGroup, ...]:
        """Return the benchmark's task groups (from its data module's ``GROUPS``)."""
        return tuple(self._module("data").GROUPS)

    def groups_for(self, protocol: Protocol) -> tuple[TaskGroup, ...]:
        """Return the task groups a run of ``protocol`` trains (the protocol's, if it has some).

        A protocol may declare a task as another kind (UTKFace's gender as a 2-class
        multiclass group) but not rename, add or reorder tasks: the metric keys, the STL
        references and the data's targets stay those of ``GROUPS``.
        """
        declared = self.groups
        if protocol.groups is None:
            return declared
        mine = tuple(protocol.groups)
        if [g.name for g in mine] != [g.name for g in declared] or [g.num_tasks for g in mine] != [
            g.num_tasks for g in declared
        ]:
            raise ValueError(
                f"{self.name} protocol {protocol.name!r}: its task groups "
                f"{[g.name for g in mine]} must be the data's {[g.name for g in declared]} "
                "with the same number of tasks each"
            )
        return mine

    def load(self, data_dir: str | None = None, *, seed: int = 0, **options: Any) -> Any:
        """Return the data module's ``Splits(train, val, test)``."""
        return self._module("data").load(data_dir, seed=seed, **options)

    def data_module(self) -> ModuleType:
        return self._module("data")

    def locate_data(self, data_dir: str | None = None) -> str | None:
        """Return where :meth:`load` would read the data from, by folder checks only (cheap).

        Raises MissingDataError (naming the fix) when the data is not there; None when the data
        module cannot tell (it has no ``locate``).
        """
        locate = getattr(self._module("data"), "locate", None)
        return None if locate is None else str(locate(data_dir))

    def build_model(
        self, groups: Sequence[TaskGroup] | None = None, **options: Any
    ) -> MultiTaskModel:
        """Return a freshly initialised model (encoder + one linear head per group).

        ``groups``: the task groups of the run (:meth:`groups_for`); default ``GROUPS``.
        """
        return self._module("model").build_model(
            self.groups if groups is None else tuple(groups), **options
        )

    def protocol(self, name: str) -> Protocol:
        if name not in self.protocols:
            raise KeyError(
                f"benchmark {self.name!r} has no protocol {name!r}; "
                f"known: {', '.join(self.protocols)}"
            )
        return self.protocols[name]

    def published_references(self) -> References | None:
        """Return the published STL references keyed by metric, or None if none exist."""
        if self.published_stl is None:
            return None
        keys = self.task_metrics()
        if len(keys) != len(self.published_stl):
            raise ValueError(
                f"{self.name}: {len(self.published_stl)} published STL values for {len(keys)} tasks"
            )
        return References(
            values=dict(zip(keys, self.published_stl, strict=True)),
            kind="published",
            source=self.published_source,
        )

    # -- metrics ------------------------------------------------------------------------------
    def task_metrics(self, groups: Sequence[TaskGroup] | None = None) -> list[str]:
        """Return the metric key (``task/metric``) that judges each of the K tasks."""
        from bayesagg.tasks import task_names

        groups = self.groups if groups is None else groups
        keys: list[str] = []
        names = iter(task_names(groups))
        for g in groups:
            for _ in range(g.num_tasks):
                if isinstance(g, Regression):
                    metric = self.regression_metric
                elif isinstance(g, Binary):
                    metric = self.binary_metric
                else:
                    metric = "accuracy"
                keys.append(f"{next(names)}/{metric}")
        return keys
