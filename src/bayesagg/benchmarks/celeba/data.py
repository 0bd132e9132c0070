"""CelebA (Liu et al., ICCV 2015): 40 binary face attributes, as in Sener & Koltun (2018).

Reads the official release in ``<root>/celeba``: ``list_attr_celeba.txt`` (a count line, the 40
attribute names, then ``<image> +-1 x 40``), ``list_eval_partition.txt`` (``<image> 0|1|2`` for
train/val/test) and the aligned JPEGs in ``img_align_celeba/``. Items: ``x`` float32
[3, S, S] (S = 64 by default: the central 178x178 square resized, no augmentation); targets a
1-tuple with the binary float32 [40] attribute vector (+1 -> 1, -1 -> 0).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bayesagg.tasks import Binary

from ..paths import DataDir, MissingDataError, dataset_dir, folder_locator
from ..splits import DataFormatError, ImageFiles, Splits, limit_splits, warn_skipped

__all__ = [
    "ATTRIBUTES",
    "FOLDER",
    "GROUPS",
    "CelebAImages",
    "load",
    "locate",
    "read_attributes",
    "read_partition",
]

#: CelebA's 40 attributes in the order of ``list_attr_celeba.txt``.
ATTRIBUTES = (
    "5_o_Clock_Shadow",
    "Arched_Eyebrows",
    "Attractive",
    "Bags_Under_Eyes",
    "Bald",
    "Bangs",
    "Big_Lips",
    "Big_Nose",
    "Black_Hair",
    "Blond_Hair",
    "Blurry",
    "Brown_Hair",
    "Bushy_Eyebrows",
    "Chubby",
    "Double_Chin",
    "Eyeglasses",
    "Goatee",
    "Gray_Hair",
    "Heavy_Makeup",
    "High_Cheekbones",
    "Male",
    "Mouth_Slightly_Open",
    "Mustache",
    "Narrow_Eyes",
    "No_Beard",
    "Oval_Face",
    "Pale_Skin",
    "Pointy_Nose",
    "Receding_Hairline",
    "Rosy_Cheeks",
    "Sideburns",
    "Smiling",
    "Straight_Hair",
    "Wavy_Hair",
    "Wearing_Earrings",
    "Wearing_Hat",
    "Wearing_Lipstick",
    "Wearing_Necklace",
    "Wearing_Necktie",
    "Young",
)

GROUPS = (Binary("attribute", 40, labels=ATTRIBUTES),)

_MEAN = (0.5, 0.5, 0.5)
_STD = (0.5, 0.5, 0.5)


def _require(path: Path) -> Path:
    if not path.exists():
        raise MissingDataError(
            f"{path} not found: the celeba/ folder must hold list_attr_celeba.txt, "
            "list_eval_partition.txt and img_align_celeba/; pass --data-dir or set $BAYESAGG_DATA_DIR"
        )
    return path


def read_attributes(path: Path) -> tuple[list[str], np.ndarray]:
    """Return (image names, binary float32 [N, 40]) from ``list_attr_celeba.txt``."""
    lines = _require(path).read_text().splitlines()
    if len(lines) < 2:
        raise DataFormatError(f"{path}: needs a count line and an attribute-name line")
    try:
        count = int(lines[0].strip())
    except ValueError as error:
        raise DataFormatError(
            f"{path}, line 1: expected the image count, got {lines[0]!r}"
        ) from error
    header = tuple(lines[1].split())
    if header != ATTRIBUTES:
        raise DataFormatError(f"{path}, line 2: attribute names {header} differ from CelebA's 40")
    names, values = [], []
    for line_no, line in enumerate(lines[2:], start=3):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 41 or any(v not in ("1", "-1") for v in fields[1:]):
            raise DataFormatError(f"{path}, line {line_no}: expected a name and 40 values of +-1")
        names.append(fields[0])
        values.append([v == "1" for v in fields[1:]])
    if len(names) != count:
        raise DataFormatError(f"{path}: header says {count} images, file lists {len(names)}")
    return names, np.asarray(values, dtype=np.float32).reshape(-1, 40)


def read_partition(path: Path) -> dict[str, int]:
    """Return ``{image name: 0 train | 1 val | 2 test}`` from ``list_eval_partition.txt``."""
    partition: dict[str, int] = {}
    for line_no, line in enumerate(_require(path).read_text().splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
            raise DataFormatError(f"{path}, line {line_no}: expected '<image> 0|1|2', got {line!r}")
        partition[fields[0]] = int(fields[1])
    return partition


class CelebAImages(ImageFiles):
    """CelebA's aligned JPEG faces, each with its 40 attributes."""

    tasks = 40


def _transform(image_size: int) -> Any:
    from torchvision.transforms import v2

    return v2.Compose(
        [
            v2.PILToTensor(),
            v2.CenterCrop(178),  # the aligned images are 178 x 218: keep the face square
            v2.Resize(image_size, antialias=True),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(_MEAN, _STD),
        ]
    )


#: The folder under the data root that holds the files.
FOLDER = "celeba"

locate = folder_locator(FOLDER)


def load(
    data_dir: DataDir = None, *, seed: int = 0, limit: int | None = None, image_size: int = 64
) -> Splits:
    """Return CelebA train/val/test from the official partition file.

    Images listed in the attribute file but absent from ``img_align_celeba/`` or the partition
    are skipped with one counted warning.
    """
    folder = dataset_dir(FOLDER, data_dir)
    names, labels = read_attributes(folder / "list_attr_celeba.txt")
    partition = read_partition(folder / "list_eval_partition.txt")
    images = _require(folder / "img_align_celeba")
    present = {entry.name for entry in os.scandir(images)}
    missing = [n for n in names if n not in present or n not in partition]
    warn_skipped("CelebA images without a file or a partition entry", len(missing), missing, folder)
    transform = _transform(image_size)
    parts = []
    for part in (0, 1, 2):
        keep = [i for i, n in enumerate(names) if n in present and partition.get(n) == part]
        parts.append(CelebAImages([images / names[i] for i in keep], labels[keep], transform))
    return limit_splits(Splits(*parts), limit, seed)
