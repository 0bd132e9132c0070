"""Hyper-parameter grids for ``bayesagg sweep``, kept with the methods and with their sources.

Only grids with a source are listed. Where a paper publishes its grid, it is used as published;
where it publishes only the chosen value, the grid is this project's and says so.

BayesAgg-MTL (Achituve et al. 2024, App. B): the power ``s`` on the precisions (Sec. 3.1, after
Eq. 7) was searched per benchmark, by task type:

- regression only (QM9): ``s`` in {0.75, 0.85, 0.95};
- classification only (CIFAR-MTL, ChestX-ray14): ``s`` in {5e-2, 5e-3, 5e-4}, and the linear
  scalarisation warm-up in {1, 3} epochs;
- mixed (UTKFace): ``s`` in {0.3, 0.5, 0.8} for regression and {0.005, 0.05, 0.1} for
  classification.

No grid is published for the prior variance ``gamma``; the authors' code uses 5e-4
(CIFAR-MTL) and 5e-3 (ChestX-ray14, UTKFace), and the grid here is those two values. The
warm-up is not searched: the runner's protocols scale it with their epoch budgets, and the
published {1, 3} is for 50-epoch CIFAR-MTL.

Aligned-MTL-UB: the BayesAgg-MTL paper (App. B, QM9) searched the scale mode over {min, median,
rmse} and whether the scale also applies to the task-specific parameters.

CAGrad (Liu et al. 2021): the paper publishes ``c = 0.4`` (the official code's and the
published baselines' value), not a grid; the grid here, {0.2, 0.4, 0.6, 0.8}, spans it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import product
from typing import Any

__all__ = ["SearchSpace", "names", "search_space"]


@dataclass(frozen=True)
class SearchSpace:
    """A method's grid: each hyper-parameter's values, and where the grid comes from."""

    method: str
    grid: Mapping[str, tuple[Any, ...]]
    source: str

    def points(self) -> list[dict[str, Any]]:
        """Return every combination, in a fixed order (the first values first)."""
        keys = list(self.grid)
        return [dict(zip(keys, values, strict=True)) for values in product(*self.grid.values())]

    def __len__(self) -> int:
        return len(self.points())


_BAYESAGG_GAMMA = (5e-4, 5e-3)
_GAMMA_SOURCE = "gamma: the two values of the authors' code (no gamma grid is published)"


def _bayesagg(kinds: Sequence[str]) -> SearchSpace:
    regression = "regression" in kinds
    classification = any(k != "regression" for k in kinds)
    if regression and classification:
        grid = {
            "s_regression": (0.3, 0.5, 0.8),
            "s_classification": (0.005, 0.05, 0.1),
            "gamma": _BAYESAGG_GAMMA,
        }
        source = "BayesAgg-MTL paper App. B, UTKFace (mixed tasks) s grids; " + _GAMMA_SOURCE
    elif regression:
        grid = {"s_regression": (0.75, 0.85, 0.95), "gamma": _BAYESAGG_GAMMA}
        source = "BayesAgg-MTL paper App. B, QM9 (regression) s grid; " + _GAMMA_SOURCE
    else:
        grid = {"s_classification": (5e-2, 5e-3, 5e-4), "gamma": _BAYESAGG_GAMMA}
        source = "BayesAgg-MTL paper App. B, CIFAR-MTL (classification) s grid; " + _GAMMA_SOURCE
    return SearchSpace("bayesagg", grid, source)


_FIXED = {
    "aligned-mtl-ub": SearchSpace(
        "aligned-mtl-ub",
        {"scale_mode": ("min", "median", "rmse"), "scale_task_gradients": (False, True)},
        "BayesAgg-MTL paper App. B (QM9): scale modes and whether to scale the task-specific "
        "parameters too",
    ),
    "cagrad": SearchSpace(
        "cagrad",
        {"c": (0.2, 0.4, 0.6, 0.8)},
        "this project's grid around CAGrad's published c = 0.4 (Liu et al. 2021; no grid "
        "published)",
    ),
}


def names() -> list[str]:
    """Return the methods that have a search space."""
    return sorted(["bayesagg", "bayesagg-paper", *_FIXED])


def search_space(method: str, task_kinds: Sequence[str]) -> SearchSpace:
    """Return the grid of ``method`` for a benchmark whose tasks are of ``task_kinds``.

    Raises KeyError naming the methods that have one.
    """
    if method in ("bayesagg", "bayesagg-paper"):
        space = _bayesagg(task_kinds)
        return SearchSpace(method, space.grid, space.source)
    if method in _FIXED:
        return _FIXED[method]
    raise KeyError(f"method {method!r} has no published search space; methods with one: {names()}")
