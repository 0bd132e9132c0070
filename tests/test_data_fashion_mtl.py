"""Fashion-MNIST one-vs-rest: targets, stratified validation, errors, real class balance."""

from __future__ import annotations

import gzip
import hashlib

import numpy as np
import pytest
import torch
from torch.utils.data import default_collate

from bayesagg.benchmarks.fashion_mtl import data as fashion
from bayesagg.benchmarks.paths import MissingDataError
from bayesagg.tasks import Binary, task_names
from conftest import real_data_dir
from fixtures.formats import write_mnist_layout


def test_groups_name_the_classes() -> None:
    assert (Binary("class", 10, labels=fashion.CLASSES),) == fashion.GROUPS
    assert task_names(fashion.GROUPS)[0] == "T-shirt/top"


def test_load_on_fixture(tmp_path) -> None:
    arrays = write_mnist_layout(tmp_path / "fashion-mnist", n_train=100, n_test=30)
    splits = fashion.load(tmp_path, seed=0)
    assert [len(s) for s in splits] == [90, 10, 30]
    # Stratified: exactly one validation image of each class (10 per class in train).
    val_labels = arrays["train_labels"][splits.val.indices.numpy()]
    assert np.bincount(val_labels, minlength=10).tolist() == [1] * 10
    x, (y,) = splits.val[3]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32
    assert y.dtype == torch.float32 and y.shape == (10,)
    assert float(y.sum()) == 1 and int(y.argmax()) == val_labels[3]
    x, (y,) = default_collate([splits.test[k] for k in range(8)])
    assert x.shape == (8, 1, 28, 28) and y.shape == (8, 10)
    np.testing.assert_array_equal(y.argmax(1).numpy(), arrays["test_labels"][:8])


def test_missing_folder(tmp_path) -> None:
    with pytest.raises(MissingDataError, match="fashion-mnist"):
        fashion.load(tmp_path)


FASHION_SHA256 = {
    "train-images-idx3-ubyte.gz": "c59f468a2f672dc8",
    "train-labels-idx1-ubyte.gz": "bad3541b69d91243",
    "t10k-images-idx3-ubyte.gz": "5b4141f0afbad91e",
    "t10k-labels-idx1-ubyte.gz": "0402a96d92fd2663",
}


def test_real_fashion_hashes_and_balance() -> None:
    folder = real_data_dir("fashion-mnist")
    for name, prefix in FASHION_SHA256.items():
        content = gzip.decompress((folder / name).read_bytes())
        assert hashlib.sha256(content).hexdigest()[:16] == prefix, name
    splits = fashion.load(folder.parent, seed=0)
    assert [len(s) for s in splits] == [54_000, 6_000, 10_000]
    for split, per_class in zip(splits, (5_400, 600, 1_000), strict=True):
        (y,) = split.target_tensors()
        assert y.sum(0).tolist() == [per_class] * 10
    x, _ = splits.train[0]
    assert abs(float(splits.train.transform(splits.train.images[:5000]).mean())) < 0.05
    assert x.shape == (1, 28, 28)
