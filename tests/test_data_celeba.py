"""CelebA: a tiny fake release (attribute and partition lists, aligned JPEGs), targets, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bayesagg.benchmarks.celeba import data as celeba
from bayesagg.benchmarks.paths import MissingDataError
from bayesagg.benchmarks.splits import DataFormatError
from fixtures.formats import write_image


def _fake_release(folder, n: int = 9) -> np.ndarray:
    rng = np.random.default_rng(0)
    values = rng.choice([-1, 1], size=(n, 40))
    names = [f"{i:06d}.jpg" for i in range(1, n + 1)]
    lines = [str(n), " ".join(celeba.ATTRIBUTES)]
    # The release pads single-digit values with two spaces; split() must cope.
    lines += [
        f"{name} " + " ".join(f"{v:2d}" for v in row)
        for name, row in zip(names, values, strict=True)
    ]
    folder.mkdir(parents=True)
    (folder / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
    (folder / "list_eval_partition.txt").write_text(
        "\n".join(f"{name} {i % 3}" for i, name in enumerate(names)) + "\n"
    )
    for i, name in enumerate(names):
        write_image(folder / "img_align_celeba" / name, (178, 218), seed=i)
    return (values > 0).astype(np.float32)


def test_load_on_fixture(tmp_path) -> None:
    expected = _fake_release(tmp_path / "celeba")
    splits = celeba.load(tmp_path, image_size=32)
    assert [len(s) for s in splits] == [3, 3, 3]
    for part, split in enumerate(splits):
        for path, row in zip(split.paths, split.labels, strict=True):
            i = int(path.stem) - 1
            assert i % 3 == part
            np.testing.assert_array_equal(row.numpy(), expected[i])
    x, (y,) = splits.val[1]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    assert y.shape == (40,) and set(y.unique().tolist()) <= {0.0, 1.0}
    # The item carries its own image's attributes (as the release lists them).
    np.testing.assert_array_equal(y.numpy(), expected[int(splits.val.paths[1].stem) - 1])
    assert celeba.GROUPS[0].labels[20] == "Male"


def test_missing_image_counted_and_bad_lines(tmp_path) -> None:
    folder = tmp_path / "celeba"
    _fake_release(folder)
    (folder / "img_align_celeba" / "000004.jpg").unlink()
    with pytest.warns(UserWarning, match=r"skipped 1 CelebA images.*000004.jpg"):
        splits = celeba.load(tmp_path, image_size=32)
    assert sum(len(s) for s in splits) == 8
    attr = folder / "list_attr_celeba.txt"
    attr.write_text(
        attr.read_text()
        .replace("000002.jpg -1", "000002.jpg 0", 1)
        .replace("000002.jpg  1", "000002.jpg 0", 1)
    )
    with pytest.raises(DataFormatError, match=r"list_attr_celeba.txt, line 4"):
        celeba.load(tmp_path)


def test_missing_release(tmp_path) -> None:
    with pytest.raises(MissingDataError, match="celeba"):
        celeba.load(tmp_path)
    (tmp_path / "celeba").mkdir()
    with pytest.raises(MissingDataError, match=r"list_attr_celeba\.txt"):
        celeba.load(tmp_path)
