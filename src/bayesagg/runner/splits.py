"""The data of a run: its benchmark's splits as the protocol caps them.

:func:`load_splits` reads the train/validation/test splits of a plan (the protocol's example
limits applied, the validation and test caps drawn with the run's seed); :class:`SplitsCache`
lets consecutive runs on the same data (a compare's methods and seeds, STL's tasks) reuse
them; whoever runs them holds the cache.
"""

from __future__ import annotations

import json
from typing import Any

import torch
from torch.utils.data import Subset

from bayesagg.benchmarks.splits import Splits
from bayesagg.runner.config import ConfigError
from bayesagg.runner.plan import Plan

__all__ = ["SplitsCache", "check_splits", "load_splits"]


def load_splits(p: Plan) -> Splits:
    """Return the plan's splits: the training limit applied, val and test capped at random."""
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


def check_splits(p: Plan, splits: Splits) -> dict[str, int]:
    """Return the split sizes; ConfigError if one is empty."""
    sizes = {name: len(ds) for name, ds in zip(("train", "val", "test"), splits, strict=True)}
    empty = [name for name, n in sizes.items() if n == 0]
    if empty:
        raise ConfigError(
            f"{p.spec.name}: the {', '.join(empty)} split is empty (limit too small?)"
        )
    return sizes


class SplitsCache:
    """The last splits loaded, keyed by everything that shapes them (one data set at a time)."""

    def __init__(self) -> None:
        self._key: tuple[Any, ...] | None = None
        self._splits: Splits | None = None

    def get(self, p: Plan) -> Splits:
        """Return the plan's splits, loading them unless the last ones are the same data."""
        config, protocol = p.config, p.protocol
        key = (
            p.spec.name,
            str(config.data_dir),
            config.seed,
            protocol.train_limit,
            protocol.eval_limit,
            json.dumps(dict(protocol.data_options), sort_keys=True, default=str),
        )
        if self._splits is None or key != self._key:
            self._key, self._splits = None, None  # free the old data before loading the new
            self._splits = load_splits(p)
            self._key = key
        return self._splits
