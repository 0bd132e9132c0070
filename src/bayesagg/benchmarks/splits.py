"""Shared pieces of the benchmarks' data loaders: the train/val/test triple, IDX files, splits.

Every ``<benchmark>/data.py`` returns a :class:`Splits` whose items are ``(x, targets)`` with
``targets`` a tuple of one tensor per task group, so ``default_collate`` yields batched tuples.
Only numpy and torch are imported here; the loaders import their heavy libraries lazily.
"""

from __future__ import annotations

import gzip
import hashlib
import itertools
import logging
import math
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, Subset

__all__ = [
    "IDX_FILES",
    "DataFormatError",
    "ImageFiles",
    "IndexedImages",
    "ScaleNormalise",
    "Splits",
    "check_label_fraction",
    "crop_transform",
    "kept_labels",
    "limit_splits",
    "limited_sizes",
    "random_split_indices",
    "read_idx",
    "read_mnist_layout",
    "say_kept_labels",
    "stratified_split_indices",
    "warn_skipped",
]


class Splits(NamedTuple):
    """The three datasets of a benchmark: model fitting, model selection, final report."""

    train: Dataset
    val: Dataset
    test: Dataset


class DataFormatError(ValueError):
    """A data file exists but is not in the expected format; the message names the file."""


# IDX type codes (LeCun's MNIST page): 0x08 ubyte, 0x09 byte, 0x0B short, 0x0C int, 0x0D float,
# 0x0E double; multi-byte values are big-endian.
_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: str | Path) -> np.ndarray:
    """Return the array stored in an IDX file (gzipped when the name ends in ``.gz``).

    Raises :class:`DataFormatError` naming the file when the magic number, the type code or the
    payload length is wrong (e.g. a truncated download), and ``FileNotFoundError`` if absent.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as error:
        if isinstance(error, FileNotFoundError):
            raise
        raise DataFormatError(f"{path}: cannot be read as an IDX file ({error})") from error
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataFormatError(f"{path}: not an IDX file (bad magic number {raw[:4].hex()!r})")
    code, ndim = raw[2], raw[3]
    if code not in _IDX_DTYPES:
        raise DataFormatError(f"{path}: unknown IDX type code 0x{code:02x}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataFormatError(f"{path}: truncated IDX header ({len(raw)} bytes)")
    shape = tuple(int.from_bytes(raw[4 + 4 * d : 8 + 4 * d], "big") for d in range(ndim))
    dtype = _IDX_DTYPES[code]
    expected = header + math.prod(shape) * dtype.itemsize
    if len(raw) != expected:
        raise DataFormatError(
            f"{path}: IDX payload of shape {shape} needs {expected} bytes, file has {len(raw)} "
            "(truncated or corrupt; fetch the file again)"
        )
    return (
        np.frombuffer(raw, dtype=dtype, offset=header)
        .reshape(shape)
        .astype(dtype.newbyteorder("="))
    )


def warn_skipped(what: str, count: int, examples: Sequence[str], where: str | Path) -> None:
    """Issue one warning saying how many ``what`` were skipped in ``where``, with examples."""
    if count == 0:
        return
    shown = ", ".join(repr(e) for e in list(examples)[:5])
    warnings.warn(f"skipped {count} {what} in {where}: {shown}", stacklevel=3)


def random_split_indices(n: int, sizes: Sequence[int], seed: int) -> tuple[np.ndarray, ...]:
    """Return disjoint index arrays of the given sizes from a seeded permutation of ``range(n)``.

    The last size may be ``-1`` for "the rest".
    """
    sizes = list(sizes)
    if sizes and sizes[-1] == -1:
        sizes[-1] = n - sum(sizes[:-1])
    if any(s < 0 for s in sizes) or sum(sizes) > n:
        raise ValueError(f"split sizes {sizes} do not fit {n} examples")
    order = np.random.default_rng(seed).permutation(n)
    bounds = np.cumsum([0, *sizes])
    return tuple(np.sort(order[a:b]) for a, b in itertools.pairwise(bounds))


def stratified_split_indices(
    strata: Sequence[int] | np.ndarray, fractions: Sequence[float], seed: int
) -> tuple[np.ndarray, ...]:
    """Return index arrays splitting each stratum in the given fractions (seeded, disjoint, complete).

    Each stratum is shuffled and cut by largest remainder, so a split's share of every stratum is
    within one example of its fraction. Written here rather than with scikit-learn's
    ``train_test_split(stratify=...)`` because that refuses strata of one example, which UTKFace's
    ages have (e.g. a single 110-year-old).
    """
    fractions = np.asarray(fractions, dtype=np.float64)
    if fractions.ndim != 1 or (fractions < 0).any() or not np.isclose(fractions.sum(), 1.0):
        raise ValueError(f"split fractions {fractions.tolist()} must be >= 0 and sum to 1")
    strata = np.asarray(strata)
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[] for _ in fractions]
    # A running remainder carried across strata keeps the overall sizes close to the fractions
    # even when every stratum is tiny.
    carry = np.zeros_like(fractions)
    for value in np.unique(strata):
        members = rng.permutation(np.flatnonzero(strata == value))
        want = fractions * len(members) + carry
        counts = np.floor(want).astype(int)
        short = len(members) - counts.sum()
        counts[np.argsort(-(want - counts), kind="stable")[:short]] += 1
        carry = want - counts
        bounds = np.cumsum([0, *counts])
        for k in range(len(fractions)):
            parts[k].append(members[bounds[k] : bounds[k + 1]])
    return tuple(np.sort(np.concatenate(p)) if p else np.zeros(0, int) for p in parts)


def limited_sizes(train: int, val: int, test: int, limit: int | None) -> tuple[int, int, int]:
    """Return (train, val, test) sizes with train capped at ``limit`` and val/test scaled alike."""
    if limit is None or limit >= train:
        return train, val, test
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    scale = limit / train
    return limit, max(1, math.ceil(val * scale)), max(1, math.ceil(test * scale))


def limit_splits(splits: Splits, limit: int | None, seed: int) -> Splits:
    """Return ``splits`` with at most ``limit`` train examples and proportionally fewer val/test.

    The kept examples are a seeded random subset (the same for the same seed).
    """
    if limit is None:
        return splits
    sizes = limited_sizes(len(splits.train), len(splits.val), len(splits.test), limit)
    out = []
    for k, (dataset, size) in enumerate(zip(splits, sizes, strict=True)):
        if size >= len(dataset):
            out.append(dataset)
            continue
        keep = np.sort(np.random.default_rng([seed, k]).permutation(len(dataset))[:size])
        out.append(Subset(dataset, keep.tolist()))
    return Splits(*out)


def check_label_fraction(fraction: float) -> float:
    """Return ``fraction`` as a float if it is in (0, 1]; ValueError naming the option otherwise."""
    value = float(fraction)
    if not 0.0 < value <= 1.0:
        raise ValueError(f"label_fraction must be in (0, 1], got {fraction!r}")
    return value


def kept_labels(keys: Sequence[str], tasks: int, fraction: float, seed: int = 0) -> np.ndarray:
    """Return which labels a ``label_fraction`` run keeps: bool [len(keys), tasks].

    Each (example, task) label is kept independently with probability ``fraction``. The draw
    of an example comes from its ``key`` (a file name, a molecule id) and ``seed`` alone, so an
    example has the same labels in every run: whatever the method, the run seed, the split
    or the training limit. That is what makes runs at one fraction comparable.
    """
    fraction = check_label_fraction(fraction)
    keep = np.ones((len(keys), tasks), dtype=bool)
    if fraction == 1.0:
        return keep
    for i, key in enumerate(keys):
        digest = hashlib.blake2b(f"{seed}/{key}".encode(), digest_size=8).digest()
        keep[i] = np.random.default_rng(int.from_bytes(digest, "little")).random(tasks) < fraction
    return keep


def say_kept_labels(where: str, names: Sequence[str], keep: np.ndarray, fraction: float) -> None:
    """Log how many training labels of each task a ``label_fraction`` run keeps."""
    if fraction == 1.0:
        return
    counts = ", ".join(f"{n} {int(c)}" for n, c in zip(names, keep.sum(axis=0), strict=True))
    logging.getLogger("bayesagg").info(
        "%s: label_fraction %g keeps %s of %d training labels", where, fraction, counts, len(keep)
    )


def crop_transform(
    size: int,
    train: bool,
    *,
    resize: int | None,
    mean: Sequence[float],
    std: Sequence[float],
    from_pil: bool = False,
) -> Any:
    """Return the image benchmarks' torchvision crop pipeline -> normalised float32 [3, S, S].

    In order: a PIL image to a uint8 tensor (``from_pil``); the shorter side resized to
    ``resize`` (None: the images come resized); a ``size`` crop, random and flipped
    horizontally at random in training, central otherwise; floats in [0, 1] normalised per
    channel with ``mean`` and ``std``.
    """
    from torchvision.transforms import v2

    steps: list[Any] = [v2.PILToTensor()] if from_pil else []
    if resize is not None:
        steps.append(v2.Resize(resize, antialias=True))
    if train:
        steps += [v2.RandomCrop(size), v2.RandomHorizontalFlip()]
    else:
        steps.append(v2.CenterCrop(size))
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
    return v2.Compose(steps)


class ImageFiles(Dataset):
    """Items ``(transform(RGB image), (labels[i],))``: image files decoded with PIL, one binary
    label per task (CelebA's attributes, ChestX-ray14's findings).

    ``labels`` holds ``tasks`` values per image (the subclass's ``tasks``); the whole label
    tensor is served without decoding any image (:meth:`target_tensors`).
    """

    #: Labels per image (the benchmark's binary tasks).
    tasks: int

    def __init__(self, paths: list[Path], labels: np.ndarray, transform: Any) -> None:
        self.paths = paths
        self.labels = torch.from_numpy(labels.reshape(-1, self.tasks))
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[Tensor, tuple[Tensor]]:
        from PIL import Image

        with Image.open(self.paths[i]) as image:
            return self.transform(image.convert("RGB")), (self.labels[i],)

    def target_tensors(self) -> tuple[Tensor]:
        """Return all labels at once (no image decoding)."""
        return (self.labels,)


class IndexedImages(Dataset):
    """Items ``(transform(images[i]), tuple(t[i] for t in targets))`` over in-memory tensors.

    ``images`` is a uint8 tensor (kept compact; converted per item by ``transform``) and
    ``targets`` one tensor per task group, all indexed by ``indices``.
    """

    def __init__(
        self,
        images: Tensor,
        targets: Sequence[Tensor],
        indices: np.ndarray | Sequence[int] | None = None,
        transform: Callable[[Tensor], Any] | None = None,
    ) -> None:
        if any(len(t) != len(images) for t in targets):
            raise ValueError(
                f"{len(images)} images but targets of lengths {[len(t) for t in targets]}"
            )
        self.images = images
        self.targets = tuple(targets)
        self.indices = (
            torch.arange(len(images))
            if indices is None
            else torch.as_tensor(np.asarray(indices), dtype=torch.long)
        )
        self.transform = transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[Any, tuple[Tensor, ...]]:
        j = int(self.indices[i])
        x = self.images[j]
        if self.transform is not None:
            x = self.transform(x)
        return x, tuple(t[j] for t in self.targets)

    def target_tensors(self) -> tuple[Tensor, ...]:
        """Return every item's targets at once, one tensor per task group (no image decoding)."""
        return tuple(t[self.indices] for t in self.targets)

    def __getitems__(self, items: Sequence[int]) -> Any:
        """Return the collated batch of ``items`` by one indexing per tensor (DataLoader hook).

        torch's DataLoader calls this instead of ``__getitem__`` per item (and ``Subset``
        forwards it); the result is what ``default_collate`` makes of the items, marked as
        collated so that :func:`collate` passes it through. Per-item fetching and stacking cost
        about a third of a MultiMNIST epoch on a CPU (docs/speed.md, "The training loop's own costs").
        Transforms other than :class:`ScaleNormalise` may be random per image: those fall back
        to one item at a time.
        """
        if self.transform is not None and not isinstance(self.transform, ScaleNormalise):
            return [self[i] for i in items]
        j = self.indices[torch.as_tensor(items, dtype=torch.long)]
        x = self.images[j]
        if self.transform is not None:
            x = self.transform(x)
        return Collated([x, [t[j] for t in self.targets]])


class Collated(list):
    """A batch already collated by a dataset's ``__getitems__`` (see :func:`collate`)."""


def collate(batch: Any) -> Any:
    """``default_collate``, except for batches a dataset collated itself (:class:`Collated`)."""
    from torch.utils.data import default_collate

    return list(batch) if isinstance(batch, Collated) else default_collate(batch)


class ScaleNormalise:
    """Map a uint8 image tensor to float32 in [0, 1], then standardise: ``(x / 255 - mean) / std``.

    A class rather than a lambda so that datasets stay picklable for DataLoader workers.
    """

    def __init__(self, mean: float, std: float) -> None:
        if not std > 0:
            raise ValueError(f"normalisation std must be > 0, got {std}")
        self.mean = float(mean)
        self.std = float(std)

    def __call__(self, x: Tensor) -> Tensor:
        return (x.to(torch.float32) / 255.0 - self.mean) / self.std

    def __repr__(self) -> str:
        return f"ScaleNormalise(mean={self.mean:.4f}, std={self.std:.4f})"


#: The four MNIST-layout file names (as torchvision's ``MNIST/raw/`` and Fashion-MNIST use).
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def read_mnist_layout(folder: Path) -> dict[str, np.ndarray]:
    """Return the four arrays of an MNIST-layout folder (``.gz`` or plain IDX files).

    Raises ``MissingDataError`` naming the missing file and :class:`DataFormatError` when images
    and labels disagree in count or the images are not ``[N, 28, 28]`` uint8.
    """
    from .paths import MissingDataError

    arrays: dict[str, np.ndarray] = {}
    for key, stem in IDX_FILES.items():
        candidates = [folder / f"{stem}.gz", folder / stem]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            raise MissingDataError(
                f"{candidates[0]} not found: {folder} must hold the four MNIST-layout IDX files "
                f"({', '.join(s + '.gz' for s in IDX_FILES.values())}); pass --data-dir or set "
                "$BAYESAGG_DATA_DIR"
            )
        arrays[key] = read_idx(path)
    for part in ("train", "test"):
        images, labels = arrays[f"{part}_images"], arrays[f"{part}_labels"]
        if images.ndim != 3 or images.shape[1:] != (28, 28) or images.dtype != np.uint8:
            raise DataFormatError(
                f"{folder / IDX_FILES[part + '_images']}: expected uint8 [N, 28, 28], got "
                f"{images.dtype} {list(images.shape)}"
            )
        if labels.ndim != 1 or len(labels) != len(images):
            raise DataFormatError(
                f"{folder}: {len(images)} {part} images but labels of shape {list(labels.shape)}"
            )
        if labels.max(initial=0) > 9:
            raise DataFormatError(f"{folder}: {part} labels outside 0..9")
    return arrays
