"""ChestX-ray14: a tiny fake NIH release (CSV, images*/ PNGs, official lists), labels and splits."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import default_collate

from bayesagg.benchmarks.chestxray import data as chestxray
from bayesagg.benchmarks.paths import MissingDataError
from bayesagg.benchmarks.splits import DataFormatError
from fixtures.formats import write_image

HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
    "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],"
)
FINDINGS = ["No Finding", "Effusion", "Cardiomegaly|Effusion", "Hernia", "Atelectasis|Mass|Nodule"]


def _fake_release(folder, patients: int = 10, per_patient: int = 2) -> dict[str, str]:
    rows, findings = [HEADER], {}
    for p in range(1, patients + 1):
        for f in range(per_patient):
            name = f"{p:08d}_{f:03d}.png"
            finding = FINDINGS[(p + f) % len(FINDINGS)]
            rows.append(f"{name},{finding},{f},{p},50,M,PA,1024,1024,0.14,0.14,")
            findings[name] = finding
            sub = "images_001/images" if p % 2 else "images_002/images"
            write_image(folder / sub / name, (40, 40), mode="L", seed=p * 10 + f)
    (folder / "Data_Entry_2017.csv").write_text("\n".join(rows) + "\n")
    names = sorted(findings)
    test = [n for n in names if int(n[:8]) > patients - 2]
    (folder / "train_val_list.txt").write_text("\n".join(n for n in names if n not in test) + "\n")
    (folder / "test_list.txt").write_text("\n".join(test) + "\n")
    return findings


def test_load_on_fixture(tmp_path) -> None:
    findings = _fake_release(tmp_path / "chestxray")
    splits = chestxray.load(tmp_path, seed=0, image_size=32)
    assert [len(s) for s in splits] == [14, 2, 4]
    patient = lambda path: path.name[:8]  # noqa: E731
    train_patients = {patient(p) for p in splits.train.paths}
    val_patients = {patient(p) for p in splits.val.paths}
    test_patients = {patient(p) for p in splits.test.paths}
    assert len(val_patients) == 1 and train_patients.isdisjoint(val_patients)
    assert test_patients == {"00000009", "00000010"}
    for split in splits:
        (labels,) = split.target_tensors()
        for path, row in zip(split.paths, labels, strict=True):
            expected = [d in findings[path.name].split("|") for d in chestxray.DISEASES]
            assert row.tolist() == [float(v) for v in expected]
    x, (y,) = splits.train[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and y.shape == (14,)
    x, (y,) = default_collate([splits.test[k] for k in range(3)])
    assert x.shape == (3, 3, 32, 32) and y.shape == (3, 14)


def test_missing_image_is_counted_and_unknown_finding_fails(tmp_path) -> None:
    folder = tmp_path / "chestxray"
    _fake_release(folder)
    next(folder.glob("images_001/images/*.png")).unlink()
    with pytest.warns(UserWarning, match="skipped 1 listed ChestX-ray14 images"):
        splits = chestxray.load(tmp_path, image_size=32)
    assert sum(len(s) for s in splits) == 19
    csv = folder / "Data_Entry_2017.csv"
    csv.write_text(csv.read_text().replace("Hernia", "Covid", 1))
    with pytest.raises(DataFormatError, match="unknown finding 'Covid'"):
        chestxray.load(tmp_path)


def test_missing_release(tmp_path) -> None:
    with pytest.raises(MissingDataError, match="chestxray"):
        chestxray.load(tmp_path)
    (tmp_path / "chestxray").mkdir()
    with pytest.raises(MissingDataError, match=r"Data_Entry_2017\.csv"):
        chestxray.load(tmp_path)
