"""Every multi-task method behind one interface: ``names()`` and ``create(name, num_tasks=K)``.

Each method lives in its own module and is imported only when created, so a user of one
method never imports the solvers of another. See :mod:`bayesagg.methods.base` for the
training-loop contract.
"""

from __future__ import annotations

import importlib
from typing import Any

from bayesagg.methods.base import Aggregator, Method

__all__ = ["Aggregator", "Method", "create", "describe", "method_class", "names"]

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

# "<method>-ub" -> "<method>": the aggregator applied to the per-example gradients w.r.t. the
# shared representation (bayesagg.methods.representation). Listed by names() after _REGISTRY.
# MGDA-UB, IMTL-G-UB and Aligned-MTL-UB are in _REGISTRY (own classes, official defaults);
# GradDrop is defined on the representation already; ExcessMTL keeps per-coordinate state
# (bayesagg.methods.representation.representation_variant refuses it).
_REPRESENTATION: dict[str, str] = {
    "pcgrad-ub": "pcgrad",
    "cagrad-ub": "cagrad",
    "nash-mtl-ub": "nash-mtl",
    "upgrad-ub": "upgrad",
    "gradvac-ub": "gradvac",
    "fairgrad-ub": "fairgrad",
    "config-ub": "config",
    "dualproj-ub": "dualproj",
    "modo-ub": "modo",
    "sdmgrad-ub": "sdmgrad",
    "ntkmtl-ub": "ntkmtl",
}


def names() -> list[str]:
    """Return the registry names of every method, in a stable order."""
    return list(_REGISTRY) + list(_REPRESENTATION)


def describe(name: str) -> str:
    """Return the one-line description of a registered method."""
    if name.lower() in _REPRESENTATION:
        return f"{_REPRESENTATION[name.lower()]} on the representation's per-example gradients"
    return _entry(name)[2]


def _entry(name: str) -> tuple[str, str, str]:
    key = name.lower()
    if key not in _REGISTRY:
        raise KeyError(f"unknown method {name!r}; known methods: {', '.join(names())}")
    return _REGISTRY[key]


def method_class(name: str) -> type[Method]:
    """Return the class of a registered method (imports its module on first use)."""
    if name.lower() in _REPRESENTATION:
        from bayesagg.methods.representation import representation_variant

        base = method_class(_REPRESENTATION[name.lower()])
        return representation_variant(base, name.lower())  # type: ignore[arg-type]
    module, cls, _ = _entry(name)
    return getattr(importlib.import_module(f"bayesagg.methods.{module}"), cls)


def create(name: str, *, num_tasks: int, **hparams: Any) -> Method:
    """Build method ``name`` for ``num_tasks`` tasks with its hyper-parameters."""
    cls = method_class(name)
    try:
        return cls(num_tasks=num_tasks, **hparams)
    except TypeError as err:
        raise TypeError(f"bad hyper-parameters for method {name!r}: {err}") from err
