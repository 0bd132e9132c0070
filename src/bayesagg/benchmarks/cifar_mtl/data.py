"""CIFAR-MTL (Rosenbaum et al. 2018; BayesAgg-MTL Sec. 5): 20 binary tasks "coarse label == k".

Reads the official python release of CIFAR-100 (``cifar-100-python/{train,test,meta}`` pickles,
Krizhevsky 2009) from ``<root>/cifar-100-python`` (or ``<root>/cifar100/cifar-100-python``).
Items: ``x`` float32 [3, 32, 32] with Normalize(0.5, 0.5), no augmentation; targets a 1-tuple
with the binary float32 [20] one-hot superclass vector.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bayesagg.tasks import Binary

from ..paths import DataDir, MissingDataError, data_root, dataset_dir
from ..splits import (
    DataFormatError,
    IndexedImages,
    ScaleNormalise,
    Splits,
    limit_splits,
    random_split_indices,
)

__all__ = ["COARSE_CLASSES", "GROUPS", "load", "locate", "read_pickle"]

#: CIFAR-100's 20 superclasses in label order (the ``coarse_label_names`` of ``meta``).
COARSE_CLASSES = (
    "aquatic_mammals",
    "fish",
    "flowers",
    "food_containers",
    "fruit_and_vegetables",
    "household_electrical_devices",
    "household_furniture",
    "insects",
    "large_carnivores",
    "large_man-made_outdoor_things",
    "large_natural_outdoor_scenes",
    "large_omnivores_and_herbivores",
    "medium_mammals",
    "non-insect_invertebrates",
    "people",
    "reptiles",
    "small_mammals",
    "trees",
    "vehicles_1",
    "vehicles_2",
)

GROUPS = (Binary("coarse", 20, labels=COARSE_CLASSES),)


def read_pickle(path: Path) -> dict[str, Any]:
    """Return a CIFAR python-release pickle as a dict with ``str`` keys."""
    if not path.is_file():
        raise MissingDataError(
            f"{path} not found: the folder must hold the official cifar-100-python/ "
            "(train, test, meta); pass --data-dir or set $BAYESAGG_DATA_DIR"
        )
    try:
        with open(path, "rb") as f:
            raw = pickle.load(f, encoding="bytes")
    except (pickle.UnpicklingError, EOFError, ValueError) as error:
        raise DataFormatError(f"{path}: not a CIFAR python pickle ({error})") from error
    if not isinstance(raw, dict):
        raise DataFormatError(f"{path}: expected a dict, got {type(raw).__name__}")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in raw.items()}


def _images_and_coarse(path: Path) -> tuple[np.ndarray, np.ndarray]:
    batch = read_pickle(path)
    for key in ("data", "coarse_labels"):
        if key not in batch:
            raise DataFormatError(f"{path}: key {key!r} missing (has {sorted(batch)})")
    data = np.asarray(batch["data"], dtype=np.uint8)
    coarse = np.asarray(batch["coarse_labels"], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(data) != len(coarse):
        raise DataFormatError(
            f"{path}: data {list(data.shape)} and {len(coarse)} labels; expected [N, 3072] and N"
        )
    if coarse.size and (coarse.min() < 0 or coarse.max() > 19):
        raise DataFormatError(f"{path}: coarse labels outside 0..19")
    # Rows are the red, green, blue 32x32 planes in turn (the release's documented layout).
    return data.reshape(-1, 3, 32, 32), coarse


def _folder(data_dir: DataDir) -> Path:
    try:
        return dataset_dir("cifar-100-python", data_dir)
    except MissingDataError as error:
        root = data_root(data_dir)
        nested = root / "cifar100" / "cifar-100-python" if root is not None else None
        if nested is None or not nested.is_dir():
            raise error from None
        return nested


def locate(data_dir: DataDir = None) -> str:
    """Return where :func:`load` would read the data from, without reading it (a folder check:
    cheap enough for ``bayesagg list``); raise MissingDataError naming the fix if it is absent."""
    return str(_folder(data_dir))


def load(
    data_dir: DataDir = None, *, seed: int = 0, limit: int | None = None, val_size: int = 5000
) -> Splits:
    """Return CIFAR-MTL train/val/test: ``val_size`` seeded training images held out for validation."""
    folder = _folder(data_dir)
    meta = read_pickle(folder / "meta")
    names = tuple(
        n.decode() if isinstance(n, bytes) else str(n) for n in meta.get("coarse_label_names", [])
    )
    if names != COARSE_CLASSES:
        raise DataFormatError(
            f"{folder / 'meta'}: coarse_label_names {names} differ from CIFAR-100's"
        )
    x, y = _images_and_coarse(folder / "train")
    if not 0 < val_size < len(x):
        raise ValueError(f"val_size {val_size} must be in (0, {len(x)}) for {folder / 'train'}")
    val_idx, train_idx = random_split_indices(len(x), [val_size, -1], seed)
    normalise = ScaleNormalise(0.5, 0.5)

    def dataset(images: np.ndarray, labels: np.ndarray, idx=None) -> IndexedImages:
        one_hot = torch.nn.functional.one_hot(torch.from_numpy(labels), 20).to(torch.float32)
        return IndexedImages(torch.from_numpy(images), (one_hot,), idx, normalise)

    test_x, test_y = _images_and_coarse(folder / "test")
    splits = Splits(dataset(x, y, train_idx), dataset(x, y, val_idx), dataset(test_x, test_y))
    return limit_splits(splits, limit, seed)
