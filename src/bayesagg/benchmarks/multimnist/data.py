"""MultiMNIST (Sener & Koltun, NeurIPS 2018, Sec. 5.1): two overlapping MNIST digits per image.

Built on the fly from the four MNIST IDX files in ``<root>/mnist`` (nothing is cached: the
70,000 composites take about a second). Items: ``x`` float32 [1, 28, 28] standardised with the
training composites' pixel mean/std; targets ``(left, right)``, two int64 class ids.
"""

from __future__ import annotations

import numpy as np
import torch

from bayesagg.tasks import Multiclass

from ..paths import DataDir, dataset_dir, folder_locator
from ..splits import (
    IndexedImages,
    ScaleNormalise,
    Splits,
    limit_splits,
    random_split_indices,
    read_mnist_layout,
)

__all__ = ["CANVAS", "FOLDER", "GROUPS", "compose", "load", "locate", "partners"]

GROUPS = (Multiclass("left", 10), Multiclass("right", 10))

#: The composite canvas: the first digit at [0:28, 0:28], the second at [6:34, 6:34].
CANVAS = 36
SHIFT = 6


def partners(n: int, seed: int) -> np.ndarray:
    """Return a seeded random partner ``j != i`` for each of ``n`` images."""
    offsets = np.random.default_rng(seed).integers(1, n, size=n) if n > 1 else np.zeros(n, int)
    return (np.arange(n) + offsets) % max(n, 1)


def compose(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Return the 28x28 composites of two uint8 stacks [N, 28, 28] (Sener & Koltun's recipe).

    ``first`` goes top-left, ``second`` bottom-right on a 36x36 canvas, the overlap keeping the
    pixel-wise maximum; the canvas is then resized to 28x28 by nearest-neighbour sampling (source
    pixel ``floor(i * 36 / 28)``, the rule of ``F.interpolate(mode="nearest")``).
    """
    n = len(first)
    canvas = np.zeros((n, CANVAS, CANVAS), dtype=np.uint8)
    canvas[:, :28, :28] = first
    window = canvas[:, SHIFT : SHIFT + 28, SHIFT : SHIFT + 28]
    np.maximum(window, second, out=window)
    rows = (np.arange(28) * CANVAS) // 28
    return canvas[:, rows][:, :, rows]


#: The folder under the data root that holds the files.
FOLDER = "mnist"

locate = folder_locator(FOLDER)


def load(
    data_dir: DataDir = None, *, seed: int = 0, limit: int | None = None, val_fraction: float = 0.1
) -> Splits:
    """Return MultiMNIST train/val/test built from MNIST in ``<data_dir>/mnist``.

    Partners are drawn within each MNIST split with ``seed`` (test partners with ``seed + 1``);
    validation is a seeded ``val_fraction`` of the 60,000 training composites.
    """
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    arrays = read_mnist_layout(dataset_dir(FOLDER, data_dir))
    parts = {}
    for name, part_seed in (("train", seed), ("test", seed + 1)):
        images, labels = arrays[f"{name}_images"], arrays[f"{name}_labels"].astype(np.int64)
        j = partners(len(images), part_seed)
        parts[name] = (compose(images, images[j]), labels, labels[j])

    x, left, right = parts["train"]
    n_val = round(val_fraction * len(x))
    val_idx, train_idx = random_split_indices(len(x), [n_val, -1], seed)
    # Standardise with the training composites only (validation and test stay unseen).
    pixels = x[train_idx].astype(np.float64) / 255.0
    normalise = ScaleNormalise(pixels.mean(), pixels.std())

    def dataset(images: np.ndarray, a: np.ndarray, b: np.ndarray, idx=None) -> IndexedImages:
        targets = (torch.from_numpy(a), torch.from_numpy(b))
        return IndexedImages(torch.from_numpy(images).unsqueeze(1), targets, idx, normalise)

    splits = Splits(
        train=dataset(x, left, right, train_idx),
        val=dataset(x, left, right, val_idx),
        test=dataset(*parts["test"]),
    )
    return limit_splits(splits, limit, seed)
