"""Batched fetching of in-memory datasets (so the loader does not dominate a training step):
the same batches as item-by-item loading."""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Subset

from bayesagg.benchmarks.splits import IndexedImages, ScaleNormalise
from bayesagg.runner.train import make_loader


def _dataset(transform=None) -> IndexedImages:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (50, 1, 6, 6), generator=g, dtype=torch.uint8)
    targets = (torch.randint(0, 10, (50,), generator=g), torch.rand(50, 3, generator=g))
    # A non-identity index map (as a validation split of a larger array has).
    indices = np.random.default_rng(1).permutation(50)[:37]
    return IndexedImages(images, targets, indices, transform)


def _item_by_item(dataset, batch_size: int, seed: int, drop_last: bool) -> list:
    """The reference: torch's per-item fetching and default_collate, same seeded shuffling."""
    loader = DataLoader(
        _PerItem(dataset),
        batch_size=batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
        drop_last=drop_last,
    )
    return list(loader)


class _PerItem(torch.utils.data.Dataset):
    """Hides ``__getitems__``: torch then fetches and collates one item at a time."""

    def __init__(self, dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        return self.dataset[i]


@pytest.mark.parametrize("transform", [None, ScaleNormalise(0.3, 0.2)])
@pytest.mark.parametrize("subset", [False, True])
@pytest.mark.parametrize("drop_last", [False, True])
def test_batched_fetching_gives_the_item_by_item_batches(transform, subset, drop_last) -> None:
    dataset = _dataset(transform)
    if subset:  # what limit_splits makes of a split
        dataset = Subset(dataset, [3, 0, 7, 11, 20, 21, 30, 36, 5, 9, 14])
    spec = types.SimpleNamespace(graph=False)
    batched = list(make_loader(spec, dataset, 4, shuffle=True, seed=5, drop_last=drop_last))
    reference = _item_by_item(dataset, 4, 5, drop_last)
    assert len(batched) == len(reference)
    for (x, targets), (x_ref, targets_ref) in zip(batched, reference, strict=True):
        assert torch.equal(x, x_ref) and x.dtype == x_ref.dtype
        assert len(targets) == len(targets_ref)
        for t, t_ref in zip(targets, targets_ref, strict=True):
            assert torch.equal(t, t_ref)


def test_random_transforms_still_go_item_by_item() -> None:
    calls = []

    def transform(x):
        calls.append(x.shape)
        return x.float()

    loader = make_loader(
        types.SimpleNamespace(graph=False), _dataset(transform), 8, shuffle=False, seed=0
    )
    x, _ = next(iter(loader))
    assert x.shape == (8, 1, 6, 6)
    assert calls[0] == (1, 6, 6)  # one image per call
