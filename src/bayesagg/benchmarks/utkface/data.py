"""UTKFace (Zhang, Song & Qi, CVPR 2017): age regression, gender and ethnicity from a face.

Reads the flat folder ``<root>/utkface`` of ``age_gender_race_datetime.jpg.chip.jpg`` files as the
official ``UTKFace.tar.gz`` unpacks; labels come from the names. Names that do not parse (5 in the
official release) are skipped with one counted warning. Items: ``x`` float32 [3, S, S] (S = 128
by default), targets ``(age, gender, ethnicity)``: standardised age float32 [1], gender float32
[1] (0 male, 1 female), ethnicity int64 [] (0 White, 1 Black, 2 Asian, 3 Indian, 4 Others).
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from bayesagg.tasks import MISSING, Binary, Multiclass, Regression

from ..paths import DataDir, MissingDataError, dataset_dir, folder_locator
from ..splits import (
    Splits,
    check_label_fraction,
    crop_transform,
    kept_labels,
    limit_splits,
    say_kept_labels,
    stratified_split_indices,
    warn_skipped,
)

__all__ = [
    "AGE_MEAN",
    "AGE_STD",
    "FOLDER",
    "GROUPS",
    "UTKFaceImages",
    "load",
    "locate",
    "parse_names",
]

GROUPS = (Regression("age", 1), Binary("gender", 1), Multiclass("ethnicity", 5))

#: Age standardisation hard-coded in the BayesAgg-MTL code (docs/data.md, UTKFace).
AGE_MEAN = 33.327
AGE_STD = 19.927

#: Train images are resized to 140 px then randomly cropped to 128 (and flipped); evaluation
#: resizes to the same 140 px and takes the centre 128, so both see faces at one scale.
RESIZE_OVER_CROP = 140 / 128

# ImageNet channel statistics, the usual choice for a ResNet on natural RGB images.
_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)

_NAME = re.compile(r"^(\d+)_([01])_([0-4])_(\d+)\.jpg\.chip\.jpg$")


def parse_names(names: list[str]) -> tuple[list[str], np.ndarray, list[str]]:
    """Return (kept names, labels int64 [N, 3] of age/gender/race, malformed names)."""
    kept, labels, bad = [], [], []
    for name in names:
        match = _NAME.match(name)
        if match is None:
            bad.append(name)
            continue
        kept.append(name)
        labels.append([int(match[1]), int(match[2]), int(match[3])])
    return kept, np.asarray(labels, dtype=np.int64).reshape(-1, 3), bad


class UTKFaceImages(Dataset):
    """Items ``(transform(image), (age, gender, ethnicity))``; images from JPEGs or a uint8 cache."""

    def __init__(
        self,
        folder: Path,
        names: list[str],
        labels: np.ndarray,
        transform: Any,
        cached: Tensor | None = None,
    ) -> None:
        self.folder = folder
        self.names = names
        self.transform = transform
        self.cached = cached
        self.age = torch.from_numpy((labels[:, 0:1] - AGE_MEAN) / AGE_STD).to(torch.float32)
        self.gender = torch.from_numpy(labels[:, 1:2]).to(torch.float32)
        self.ethnicity = torch.from_numpy(labels[:, 2]).to(torch.int64)

    def __len__(self) -> int:
        return len(self.names)

    def image(self, i: int) -> Tensor:
        """Return image ``i`` as a uint8 tensor [3, H, W] (decoded with PIL, or from the cache)."""
        if self.cached is not None:
            return self.cached[i]
        return _decode(self.folder / self.names[i])

    def __getitem__(self, i: int) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor]]:
        return self.transform(self.image(i)), (self.age[i], self.gender[i], self.ethnicity[i])

    def hide(self, keep: Tensor) -> None:
        """Mark the labels ``keep`` [N, 3] (age, gender, ethnicity) drops as missing, in place."""
        self.age[~keep[:, 0]] = float("nan")
        self.gender[~keep[:, 1]] = float(MISSING)
        self.ethnicity[~keep[:, 2]] = MISSING

    def target_tensors(self) -> tuple[Tensor, Tensor, Tensor]:
        """Return all targets at once (no image decoding)."""
        return self.age, self.gender, self.ethnicity


def _decode(path: Path) -> Tensor:
    from PIL import Image
    from torchvision.transforms.v2.functional import pil_to_tensor

    with Image.open(path) as image:
        return pil_to_tensor(image.convert("RGB"))


def _transforms(image_size: int, train: bool, resized: bool) -> Any:
    """Return the torchvision pipeline uint8 [3, H, W] -> normalised float32 [3, S, S]."""
    resize = None if resized else round(image_size * RESIZE_OVER_CROP)
    return crop_transform(image_size, train, resize=resize, mean=_MEAN, std=_STD)


def default_cache_dir() -> Path:
    """Return ``$BAYESAGG_CACHE_DIR``, else ``~/.cache/bayesagg``: where decoded data is kept."""
    return Path(
        os.environ.get("BAYESAGG_CACHE_DIR") or Path.home() / ".cache/bayesagg"
    ).expanduser()


def _cached_images(folder: Path, names: list[str], size: int, cache_dir: Path) -> Tensor:
    """Return all images resized to ``size`` px as one uint8 tensor, decoding them once to disk."""
    from torchvision.transforms import v2

    digest = hashlib.sha1("\n".join(names).encode()).hexdigest()[:12]
    path = cache_dir / f"utkface_{size}px_{len(names)}_{digest}.pt"
    if path.is_file():
        images = torch.load(path, weights_only=True)
        if images.shape == (len(names), 3, size, size):
            return images
    resize = v2.Resize(size, antialias=True)
    images = torch.empty((len(names), 3, size, size), dtype=torch.uint8)
    for i, name in enumerate(names):
        image = resize(_decode(folder / name))
        if image.shape[1:] != (size, size):  # non-square source: keep the centre
            image = v2.functional.center_crop(image, [size, size])
        images[i] = image
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save(images, tmp)
    os.replace(tmp, path)  # atomic, so concurrent loaders never read half a file
    return images


#: The folder under the data root that holds the files.
FOLDER = "utkface"

locate = folder_locator(FOLDER)


def load(
    data_dir: DataDir = None,
    *,
    seed: int = 0,
    limit: int | None = None,
    split_seed: int = 42,
    image_size: int = 128,
    cache: bool = True,
    cache_dir: str | os.PathLike[str] | None = None,
    label_fraction: float = 1.0,
    label_seed: int = 0,
) -> Splits:
    """Return UTKFace train/val/test: a 70/10/20 split stratified by age with ``split_seed``.

    ``image_size`` is the crop size (128 in the paper); images are first resized to
    ``round(image_size * 140 / 128)``. With ``cache=True`` (the default) every image is decoded
    and resized once and kept as a uint8 tensor file in ``cache_dir`` (default
    ``$BAYESAGG_CACHE_DIR/utkface``, else ``~/.cache/bayesagg/utkface``; about 1.4 GB at 128 px,
    0.35 GB at 64 px) so epochs skip JPEG decoding, which otherwise costs about as much as the
    model's step on a CPU (docs/speed.md, "The training loop's own costs"); ``cache=False`` decodes every
    image at every epoch. ``seed`` only picks the ``limit`` subset.

    ``label_fraction`` < 1 hides training labels: each training face's age, gender and
    ethnicity label is kept with that probability and otherwise missing (age NaN, gender and
    ethnicity :data:`~bayesagg.tasks.MISSING`), drawn from the file name and ``label_seed`` only,
    so every method, seed and limit sees the same labels of a face
    (:func:`~bayesagg.benchmarks.splits.kept_labels`); validation and test keep all theirs.
    """
    label_fraction = check_label_fraction(label_fraction)
    folder = dataset_dir(FOLDER, data_dir)
    files = sorted(entry.name for entry in os.scandir(folder) if entry.is_file())
    names, labels, bad = parse_names([f for f in files if f.endswith(".jpg")])
    warn_skipped("UTKFace files with malformed names", len(bad), bad, folder)
    if not names:
        raise MissingDataError(
            f"no UTKFace images named age_gender_race_datetime.jpg.chip.jpg in {folder}: "
            "pass --data-dir DIR whose utkface/ folder holds the unpacked UTKFace.tar.gz"
        )
    train_idx, val_idx, test_idx = stratified_split_indices(
        labels[:, 0], [0.7, 0.1, 0.2], split_seed
    )
    resize = round(image_size * RESIZE_OVER_CROP)
    cached = None
    if cache:
        root = Path(cache_dir) if cache_dir is not None else default_cache_dir() / "utkface"
        cached = _cached_images(folder, names, resize, root.expanduser())

    def dataset(idx: np.ndarray, train: bool) -> UTKFaceImages:
        return UTKFaceImages(
            folder,
            [names[i] for i in idx],
            labels[idx],
            _transforms(image_size, train, resized=cached is not None),
            None if cached is None else cached[torch.from_numpy(idx)],
        )

    train = dataset(train_idx, True)
    keep = kept_labels(train.names, 3, label_fraction, label_seed)
    say_kept_labels(f"UTKFace ({folder})", [g.name for g in GROUPS], keep, label_fraction)
    train.hide(torch.from_numpy(keep))
    splits = Splits(train, dataset(val_idx, False), dataset(test_idx, False))
    return limit_splits(splits, limit, seed)
