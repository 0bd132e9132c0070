"""Fashion-MNIST one-vs-rest: 10 binary tasks "class == k", the runnable stand-in for CIFAR-MTL.

Not a published benchmark (docs/data.md, Fashion-MNIST one-vs-rest): it mirrors CIFAR-MTL's "coarse label == k" tasks on
data that is available here. Reads the four IDX files in ``<root>/fashion-mnist``. Items: ``x``
float32 [1, 28, 28] standardised with the training images' pixel mean/std; targets a 1-tuple
with the binary float32 [10] one-hot class vector.
"""

from __future__ import annotations

import numpy as np
import torch

from bayesagg.tasks import Binary

from ..paths import DataDir, dataset_dir, folder_locator
from ..splits import (
    IndexedImages,
    ScaleNormalise,
    Splits,
    limit_splits,
    read_mnist_layout,
    stratified_split_indices,
)

__all__ = ["CLASSES", "FOLDER", "GROUPS", "load", "locate"]

#: Fashion-MNIST's class names in label order (Xiao, Rasul & Vollgraf, 2017).
CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

GROUPS = (Binary("class", 10, labels=CLASSES),)


#: The folder under the data root that holds the files.
FOLDER = "fashion-mnist"

locate = folder_locator(FOLDER)


def load(
    data_dir: DataDir = None, *, seed: int = 0, limit: int | None = None, val_fraction: float = 0.1
) -> Splits:
    """Return train/val/test of the 10 one-vs-rest tasks from ``<data_dir>/fashion-mnist``.

    Validation is a seeded ``val_fraction`` of the 60,000 training images, stratified by class.
    """
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    arrays = read_mnist_layout(dataset_dir(FOLDER, data_dir))
    x, y = arrays["train_images"], arrays["train_labels"].astype(np.int64)
    train_idx, val_idx = stratified_split_indices(y, [1 - val_fraction, val_fraction], seed)
    pixels = x[train_idx].astype(np.float64) / 255.0
    normalise = ScaleNormalise(pixels.mean(), pixels.std())

    def dataset(images: np.ndarray, labels: np.ndarray, idx=None) -> IndexedImages:
        one_hot = torch.nn.functional.one_hot(torch.from_numpy(labels), 10).to(torch.float32)
        return IndexedImages(torch.from_numpy(images).unsqueeze(1), (one_hot,), idx, normalise)

    splits = Splits(
        train=dataset(x, y, train_idx),
        val=dataset(x, y, val_idx),
        test=dataset(arrays["test_images"], arrays["test_labels"].astype(np.int64)),
    )
    return limit_splits(splits, limit, seed)
