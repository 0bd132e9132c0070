"""ChestX-ray14 (Wang et al., CVPR 2017): 14 binary disease tasks on frontal chest X-rays.

Reads the NIH release as it unpacks into ``<root>/chestxray``: ``Data_Entry_2017.csv`` ("Image
Index", "Finding Labels" with '|'-separated diseases or "No Finding", "Patient ID"), the PNGs in
``images*/`` folders (any depth, e.g. ``images_001/images/``), and the official patient-disjoint
``train_val_list.txt`` / ``test_list.txt``. Items: ``x`` float32 [3, 224, 224] (grey replicated
to RGB, ImageNet normalisation for the ImageNet-initialised ResNet-34); targets a 1-tuple with
the binary float32 [14] disease vector in :data:`DISEASES` order.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

import numpy as np

from bayesagg.tasks import Binary

from ..paths import DataDir, MissingDataError, dataset_dir, folder_locator
from ..splits import DataFormatError, ImageFiles, Splits, crop_transform, limit_splits, warn_skipped

__all__ = ["DISEASES", "FOLDER", "GROUPS", "ChestXrayImages", "load", "locate", "read_entries"]

#: The 14 labels in alphabetical order (docs/data.md, ChestX-ray14).
DISEASES = (
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Effusion",
    "Emphysema",
    "Fibrosis",
    "Hernia",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pleural_Thickening",
    "Pneumonia",
    "Pneumothorax",
)

GROUPS = (Binary("disease", 14, labels=DISEASES),)

_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)


def read_entries(path: Path) -> dict[str, tuple[np.ndarray, str]]:
    """Return ``{image name: (binary float32 [14] labels, patient id)}`` from Data_Entry_2017.csv."""
    if not path.is_file():
        raise MissingDataError(
            f"{path} not found: the chestxray/ folder must hold the NIH ChestX-ray14 release; "
            "pass --data-dir or set $BAYESAGG_DATA_DIR"
        )
    entries: dict[str, tuple[np.ndarray, str]] = {}
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        fields = reader.fieldnames or []
        for needed in ("Image Index", "Finding Labels"):
            if needed not in fields:
                raise DataFormatError(f"{path}: column {needed!r} missing (has {fields})")
        for line, row in enumerate(reader, start=2):
            name, findings = row["Image Index"].strip(), row["Finding Labels"].strip()
            labels = np.zeros(len(DISEASES), dtype=np.float32)
            for finding in findings.split("|"):
                if finding == "No Finding":
                    continue
                if finding not in DISEASES:
                    raise DataFormatError(f"{path}, line {line}: unknown finding {finding!r}")
                labels[DISEASES.index(finding)] = 1.0
            # Image names are <patient>_<follow-up>.png; the column is used when present.
            patient = (row.get("Patient ID") or name.split("_")[0]).strip()
            entries[name] = (labels, patient)
    return entries


def _read_list(path: Path) -> list[str]:
    if not path.is_file():
        raise MissingDataError(
            f"{path} not found: the NIH release's official split lists are needed; pass "
            "--data-dir DIR whose chestxray/ folder holds them, or set $BAYESAGG_DATA_DIR"
        )
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def _find_images(folder: Path) -> dict[str, Path]:
    images: dict[str, Path] = {}
    for sub in sorted(folder.glob("images*")):
        if sub.is_dir():
            for dirpath, _, files in os.walk(sub):
                for name in files:
                    if name.endswith(".png"):
                        images[name] = Path(dirpath) / name
    return images


class ChestXrayImages(ImageFiles):
    """ChestX-ray14's PNG radiographs (read as RGB), each with its 14 findings."""

    tasks = len(DISEASES)


def _transforms(image_size: int, train: bool) -> Any:
    resize = round(image_size * 256 / 224)
    return crop_transform(image_size, train, resize=resize, mean=_MEAN, std=_STD, from_pil=True)


#: The folder under the data root that holds the files.
FOLDER = "chestxray"

locate = folder_locator(FOLDER)


def load(
    data_dir: DataDir = None,
    *,
    seed: int = 0,
    limit: int | None = None,
    val_fraction: float = 0.1,
    image_size: int = 224,
) -> Splits:
    """Return ChestX-ray14 train/val/test: the official test list, and a seeded
    ``val_fraction`` of train_val's *patients* as validation (patient-disjoint from train).

    Images are resized to ``image_size * 256 / 224`` then cropped to ``image_size`` (random crop
    and horizontal flip for training, centre crop otherwise). Listed images without a PNG are
    skipped with one counted warning.
    """
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    folder = dataset_dir(FOLDER, data_dir)
    entries = read_entries(folder / "Data_Entry_2017.csv")
    images = _find_images(folder)
    if not images:
        raise MissingDataError(f"no PNG images under {folder}/images*/")
    train_val, test = (_read_list(folder / n) for n in ("train_val_list.txt", "test_list.txt"))
    missing = [n for n in (*train_val, *test) if n not in images or n not in entries]
    warn_skipped(
        "listed ChestX-ray14 images without a PNG or a Data_Entry row",
        len(missing),
        missing,
        folder,
    )
    train_val = [n for n in train_val if n in images and n in entries]
    test = [n for n in test if n in images and n in entries]

    patients = sorted({entries[n][1] for n in train_val})
    order = np.random.default_rng(seed).permutation(len(patients))
    n_val = max(1, round(val_fraction * len(patients))) if len(patients) > 1 else 0
    val_patients = {patients[i] for i in order[:n_val]}
    parts = {
        "train": [n for n in train_val if entries[n][1] not in val_patients],
        "val": [n for n in train_val if entries[n][1] in val_patients],
        "test": test,
    }

    def dataset(names: list[str], train: bool) -> ChestXrayImages:
        labels = (
            np.stack([entries[n][0] for n in names]) if names else np.zeros((0, 14), np.float32)
        )
        return ChestXrayImages([images[n] for n in names], labels, _transforms(image_size, train))

    splits = Splits(
        dataset(parts["train"], True), dataset(parts["val"], False), dataset(parts["test"], False)
    )
    return limit_splits(splits, limit, seed)
