"""CIFAR-MTL: the official python pickles (built tiny in tmp_path), targets, split, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import default_collate

from bayesagg.benchmarks.cifar_mtl import data as cifar
from bayesagg.benchmarks.paths import MissingDataError
from bayesagg.benchmarks.splits import DataFormatError
from fixtures.formats import write_cifar100


def test_load_on_fixture(tmp_path) -> None:
    written = write_cifar100(tmp_path / "cifar-100-python", list(cifar.COARSE_CLASSES))
    splits = cifar.load(tmp_path, seed=0, val_size=10)
    assert [len(s) for s in splits] == [30, 10, 20]
    assert set(splits.train.indices.tolist()).isdisjoint(splits.val.indices.tolist())
    data, coarse = written["test"]
    x, (y,) = splits.test[3]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    assert y.shape == (20,) and y.dtype == torch.float32 and int(y.argmax()) == coarse[3]
    # Rows are the R, G, B planes in turn; Normalize(0.5, 0.5) maps [0, 255] to [-1, 1].
    expected = data[3].reshape(3, 32, 32).astype(np.float32) / 255.0 * 2 - 1
    torch.testing.assert_close(x, torch.from_numpy(expected))
    x, (y,) = default_collate([splits.train[k] for k in range(5)])
    assert x.shape == (5, 3, 32, 32) and y.shape == (5, 20) and (y.sum(1) == 1).all()
    assert [len(s) for s in cifar.load(tmp_path, val_size=10, limit=15)] == [15, 5, 10]


def test_nested_layout_and_errors(tmp_path) -> None:
    with pytest.raises(MissingDataError, match="cifar-100-python"):
        cifar.load(tmp_path)
    folder = tmp_path / "cifar100" / "cifar-100-python"
    write_cifar100(folder, list(cifar.COARSE_CLASSES))
    assert len(cifar.load(tmp_path, val_size=5).val) == 5
    with pytest.raises(ValueError, match="val_size 5000"):
        cifar.load(tmp_path)  # the default 5000 does not fit 40 training images
    write_cifar100(folder, [f"class_{k}" for k in range(20)])
    with pytest.raises(DataFormatError, match="coarse_label_names"):
        cifar.load(tmp_path, val_size=5)
    (folder / "train").write_bytes(b"\x80\x02truncated")
    write_cifar100(folder / "unused", list(cifar.COARSE_CLASSES))
    (folder / "meta").write_bytes((folder / "unused" / "meta").read_bytes())
    with pytest.raises(DataFormatError, match=r"train: not a CIFAR python pickle"):
        cifar.load(tmp_path, val_size=5)
