"""Every multi-task method behind one interface: ``names()`` and ``create(name, num_tasks=K)``.

Each method lives in its own module. What the registry knows about a method beyond its
entry (its ``-ub`` form, whether it is Gramian-based, which keywords it requires) is derived
from its class, so listing the names imports every method module once; the solvers (SciPy,
cvxpy, scikit-learn) are imported only when a method first uses them, so a user of one method
never loads the solvers of another. See :mod:`bayesagg.methods.base` for the training-loop
contract, :mod:`bayesagg.methods.gramian` and :mod:`bayesagg.methods.weighting.loss_weighting` for the
two bases most methods are built on, and CONTRIBUTING.md for adding one.
"""

from __future__ import annotations

import functools
import importlib
import inspect
from typing import Any

from bayesagg.methods.base import Aggregator, Method

__all__ = [
    "Aggregator",
    "Method",
    "create",
    "describe",
    "gramian_based",
    "method_class",
    "names",
    "needs_groups",
    "representation_forms",
    "required_arguments",
]

# name -> (module under bayesagg.methods, class name, one-line description)
_REGISTRY: dict[str, tuple[str, str, str]] = {
    # loss weightings (Sec. 5 of the BayesAgg-MTL paper and its baselines)
    "ls": ("weighting.ls", "LinearScalarization", "linear scalarisation: sum of task losses"),
    "stl": ("weighting.stl", "SingleTask", "single-task learning: one task's loss only"),
    "si": ("weighting.si", "ScaleInvariant", "scale-invariant: sum of log losses"),
    "rlw": ("weighting.rlw", "RandomLossWeighting", "random loss weighting (Lin et al. 2022)"),
    "dwa": ("weighting.dwa", "DynamicWeightAverage", "dynamic weight average (Liu et al. 2019)"),
    "uw": (
        "weighting.uw",
        "UncertaintyWeighting",
        "homoscedastic uncertainty (Kendall et al. 2018)",
    ),
    "gradnorm": ("weighting.gradnorm", "GradNorm", "gradient normalisation (Chen et al. 2018)"),
    "igbv2": ("weighting.igbv2", "IGBv2", "improvable gap balancing v2 (Dai et al. 2023)"),
    "famo": ("weighting.famo", "FAMO", "fast adaptive multitask optimisation (Liu et al. 2023)"),
    "db-mtl": ("weighting.db_mtl", "DBMTL", "dual-balancing MTL (Lin et al. 2023)"),
    "stch": (
        "weighting.stch",
        "SmoothTchebycheff",
        "smooth Tchebycheff scalarisation (Lin et al. 2024)",
    ),
    "go4align": ("weighting.go4align", "GO4Align", "group risk minimisation (Shen et al. 2024)"),
    "uw-so": (
        "weighting.uw_so",
        "SoftOptimalUncertaintyWeighting",
        "analytical uncertainty weights, softmax (Kirchdorfer et al. 2024)",
    ),
    # gradient aggregators
    "mgda": (
        "gradient.mgda",
        "MGDA",
        "multiple-gradient descent, Frank-Wolfe (Sener & Koltun 2018)",
    ),
    "mgda-ub": ("gradient.mgda", "MGDAUB", "MGDA on the representation's gradients (upper bound)"),
    "pcgrad": ("gradient.pcgrad", "PCGrad", "projecting conflicting gradients (Yu et al. 2020)"),
    "cagrad": ("gradient.cagrad", "CAGrad", "conflict-averse gradient descent (Liu et al. 2021)"),
    "imtl-g": ("gradient.imtl", "IMTLG", "impartial MTL, gradient part (Liu et al. 2021)"),
    "imtl-g-ub": ("gradient.imtl", "IMTLGUB", "IMTL-G on the representation's gradients"),
    "nash-mtl": ("gradient.nash_mtl", "NashMTL", "Nash bargaining (Navon et al. 2022)"),
    "aligned-mtl": ("gradient.aligned_mtl", "AlignedMTL", "Aligned-MTL (Senushkin et al. 2023)"),
    "aligned-mtl-ub": (
        "gradient.aligned_mtl",
        "AlignedMTLUB",
        "Aligned-MTL on the representation's gradients",
    ),
    "upgrad": (
        "gradient.upgrad",
        "UPGrad",
        "unconflicting projection of gradients (Quinton & Rey 2024)",
    ),
    "graddrop": ("gradient.graddrop", "GradDrop", "gradient sign dropout (Chen et al. 2020)"),
    "gradvac": ("gradient.gradvac", "GradVac", "gradient vaccine (Wang et al. 2021)"),
    "fairgrad": ("gradient.fairgrad", "FairGrad", "alpha-fair resource allocation (Ban & Ji 2024)"),
    "config": ("gradient.config", "ConFIG", "conflict-free inverse gradients (Liu et al. 2025)"),
    "dualproj": (
        "gradient.dualproj",
        "DualProj",
        "mean gradient projected on the dual cone (Quinton & Rey 2024)",
    ),
    "excess-mtl": ("gradient.excess_mtl", "ExcessMTL", "excess-risk weighting (He et al. 2024)"),
    "modo": ("gradient.modo", "MoDo", "MGDA with double sampling (Chen et al. 2023)"),
    "sdmgrad": ("gradient.sdmgrad", "SDMGrad", "direction-oriented MGDA (Xiao et al. 2023)"),
    "ntkmtl": ("gradient.ntkmtl", "NTKMTL", "NTK-eigenvalue task balancing (Qin et al. 2025)"),
    "ntkmtl-sr": (
        "gradient.ntkmtl",
        "NTKMTLSR",
        "NTKMTL through the shared representation (Qin et al. 2025)",
    ),
    # the method of this project
    "bayesagg": ("bayesagg_mtl", "BayesAggMTL", "BayesAgg-MTL (Achituve et al. 2024)"),
    "bayesagg-paper": (
        "bayesagg_mtl",
        "BayesAggMTLPaper",
        "BayesAgg-MTL exactly as published (undamped Newton fits, unscaled gradient)",
    ),
}


def _own_class(name: str) -> type[Method]:
    module, cls, _ = _REGISTRY[name]
    return getattr(importlib.import_module(f"bayesagg.methods.{module}"), cls)


@functools.cache
def representation_forms() -> dict[str, str]:
    """Return ``{"<method>-ub": "<method>"}``: the derived representation-level variants.

    Every registered parameter-space aggregator has one (:mod:`bayesagg.methods.representation`:
    the aggregator applied to the per-example gradients w.r.t. the shared representation),
    except those that keep state per coordinate of the Jacobian (ExcessMTL) and those whose
    ``-ub`` form is registered as its own class (MGDA-UB, IMTL-G-UB, Aligned-MTL-UB: their
    official defaults differ). Methods already in representation space (GradDrop) have none.
    Imports every registered module once (cheap: the solvers are imported on first use).
    """
    out: dict[str, str] = {}
    for name in _REGISTRY:
        cls = _own_class(name)
        if (
            issubclass(cls, Aggregator)
            and cls.space == "parameters"
            and not getattr(cls, "per_coordinate_state", False)
            and f"{name}-ub" not in _REGISTRY
        ):
            out[f"{name}-ub"] = name
    return out


def names() -> list[str]:
    """Return the registry names of every method, in a stable order."""
    return list(_REGISTRY) + list(representation_forms())


def describe(name: str) -> str:
    """Return the one-line description of a registered method."""
    forms = representation_forms()
    if name.lower() in forms:
        return f"{forms[name.lower()]} on the representation's per-example gradients"
    return _entry(name)[2]


def _entry(name: str) -> tuple[str, str, str]:
    key = name.lower()
    if key not in _REGISTRY:
        raise KeyError(f"unknown method {name!r}; known methods: {', '.join(names())}")
    return _REGISTRY[key]


def method_class(name: str) -> type[Method]:
    """Return the class of a registered method (imports its module on first use)."""
    forms = representation_forms()
    if name.lower() in forms:
        from bayesagg.methods.representation import representation_variant

        base = method_class(forms[name.lower()])
        return representation_variant(base, name.lower())  # type: ignore[arg-type]
    _entry(name)
    return _own_class(name.lower())


def gramian_based(name: str) -> bool:
    """Whether method ``name`` is a Gramian weighting (direction ``w(J J^T, losses) @ J``).

    Derived from the class (:class:`bayesagg.methods.gramian.GramianWeighting`, not overridden
    in a way that loses its data-parallel form): such a method is exact under data parallelism
    through the Gramian's square root, and its weights are what ``last_weights`` holds.
    """
    from bayesagg.methods.gramian import GramianWeighting

    cls = method_class(name)
    return issubclass(cls, GramianWeighting) and cls.data_parallel


def required_arguments(name: str) -> list[str]:
    """Return the keyword arguments method ``name`` cannot be built without (beyond num_tasks).

    Read from the constructor: ``["groups"]`` for BayesAgg-MTL (it needs the task groups),
    ``["task"]`` for STL, ``[]`` for the others.
    """
    signature = inspect.signature(method_class(name).__init__)
    return [
        p.name
        for p in signature.parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is inspect.Parameter.empty
    ]


def needs_groups(name: str) -> bool:
    """Whether method ``name`` needs the task groups (``groups=``) to be built."""
    return "groups" in required_arguments(name)


def create(name: str, *, num_tasks: int, **hparams: Any) -> Method:
    """Build method ``name`` for ``num_tasks`` tasks with its hyper-parameters."""
    cls = method_class(name)
    try:
        return cls(num_tasks=num_tasks, **hparams)
    except TypeError as err:
        raise TypeError(f"bad hyper-parameters for method {name!r}: {err}") from err
