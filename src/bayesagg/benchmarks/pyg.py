"""PyTorch Geometric, imported once, without its import-time deprecation warning.

``import torch_geometric`` calls ``torch.jit.script`` at module level (``SelectOutput``,
``ConnectOutput``), and torch >= 2.12 answers with a FutureWarning on every QM9 run, the demo
included: noise a user cannot act on (pyg-team/pytorch_geometric#10697, open at 2.8.1). Only
that message is hidden, only while PyG imports; any other warning still shows.
"""

from __future__ import annotations

import functools
import warnings
from types import ModuleType

__all__ = ["torch_geometric"]


@functools.cache
def torch_geometric() -> ModuleType:
    """Return the ``torch_geometric`` module (``.nn``, ``.data``, ``.loader``, ``.datasets``)."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning
        )
        import torch_geometric as pyg
        import torch_geometric.datasets
        import torch_geometric.loader
        import torch_geometric.nn  # the submodules the benchmarks use, loaded here
    return pyg
