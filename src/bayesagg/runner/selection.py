"""Model selection on validation: the criterion a run selects its reported epoch by.

The reported test metrics are those of the epoch with the best validation criterion (never
chosen on test): the benchmark's Delta_m against the STL references, the mean of one metric
over the tasks, or one metric (an STL model: its own task's).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from bayesagg.benchmarks.registry import Benchmark, References
from bayesagg.metrics import delta_m, higher_is_better

__all__ = ["Criterion", "make_criterion"]


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
    names: Sequence[str],
    metrics: Sequence[str],
    references: References | None,
    stl_metric: str | None = None,
) -> Criterion:
    """Return the selection criterion of ``spec`` (for an STL model: its own task's metric).

    ``names`` and ``metrics``: the tasks and each task's metric key (``spec.task_metrics``),
    as the run's plan holds them. Where the protocol selects on validation Delta_m but no STL
    references exist, the mean of the task metrics (same direction) replaces it; the run's
    JSON names the criterion used.
    """
    keys = tuple(metrics)
    if stl_metric is not None:
        return Criterion(stl_metric, "max" if higher_is_better(stl_metric) else "min")
    selection = spec.selection
    if selection == "delta_m":
        if references is not None:
            return Criterion("delta_m", "min", references, keys)
        kinds = {k.rpartition("/")[2] for k in keys}
        if len(kinds) != 1:
            raise ValueError(
                f"{spec.name}: selection on Delta_m needs STL references (tasks use {kinds})"
            )
        selection = f"mean/{kinds.pop()}"
    if selection.startswith("mean/"):
        metric = selection.partition("/")[2]
        chosen = tuple(k for k in keys if k.endswith(f"/{metric}"))
        chosen = chosen or tuple(f"{n}/{metric}" for n in names)
        return Criterion(selection, "max" if metric in ("accuracy", "auc") else "min", None, chosen)
    return Criterion(selection, "max" if higher_is_better(selection) else "min")
