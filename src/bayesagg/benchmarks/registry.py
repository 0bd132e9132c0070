"""The benchmark registry: each benchmark's name -> its :class:`Benchmark` specification (the
classes live in :mod:`bayesagg.benchmarks.spec` and :mod:`bayesagg.benchmarks.heads`, re-exported here).

A specification says everything the runner needs and nothing it must guess: where the data
loader and the model live (imported only when used), the published training protocols, which
metric each task is judged by, how the model is selected, and the STL references with their
provenance (docs/benchmarks.md: "The benchmarks", "STL and Delta_m", and the settings of the
`paper` protocols with their sources).
"""

from __future__ import annotations

import importlib

from bayesagg.benchmarks.heads import MultiTaskModel, linear_heads
from bayesagg.benchmarks.spec import Benchmark, Protocol, References

__all__ = [
    "Benchmark",
    "MultiTaskModel",
    "Protocol",
    "References",
    "get",
    "linear_heads",
    "names",
    "register",
    "unregister",
]

# benchmark name (CLI spelling) -> package under bayesagg.benchmarks
_PACKAGES: dict[str, str] = {
    "qm9": "qm9",
    "utkface": "utkface",
    "multimnist": "multimnist",
    "fashion-mtl": "fashion_mtl",
    "cifar-mtl": "cifar_mtl",
    "chestxray": "chestxray",
    "celeba": "celeba",
}


_REGISTERED: dict[str, Benchmark] = {}


def register(spec: Benchmark) -> None:
    """Add a benchmark defined outside this project (its ``package`` a full dotted path)."""
    if spec.name in _PACKAGES:
        raise ValueError(f"benchmark {spec.name!r} is built in; choose another name")
    _REGISTERED[spec.name] = spec


def unregister(name: str) -> None:
    """Remove a benchmark added with :func:`register` (no error if absent)."""
    _REGISTERED.pop(name, None)


def names() -> list[str]:
    """Return the benchmark names: the built-in ones, then any registered ones."""
    return [*_PACKAGES, *_REGISTERED]


def get(name: str) -> Benchmark:
    """Return the specification of benchmark ``name`` (KeyError naming the known ones)."""
    if name in _REGISTERED:
        return _REGISTERED[name]
    key = name.lower().replace("_", "-")
    if key not in _PACKAGES:
        raise KeyError(f"unknown benchmark {name!r}; known benchmarks: {', '.join(names())}")
    return importlib.import_module(f"bayesagg.benchmarks.{_PACKAGES[key]}").SPEC
