"""MultiMNIST: the composite recipe against a brute-force reference, splits, errors, real MNIST."""

from __future__ import annotations

import gzip
import hashlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import default_collate

from bayesagg.benchmarks.multimnist import data as multimnist
from bayesagg.benchmarks.paths import MissingDataError
from bayesagg.benchmarks.splits import DataFormatError
from bayesagg.tasks import Multiclass
from conftest import real_data_dir
from fixtures.formats import write_mnist_layout


def _reference_composite(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """One composite the slow way: canvas, pixel-wise max, torch nearest resize."""
    canvas = np.zeros((36, 36), dtype=np.uint8)
    canvas[0:28, 0:28] = first
    canvas[6:34, 6:34] = np.maximum(canvas[6:34, 6:34], second)
    resized = F.interpolate(torch.from_numpy(canvas)[None, None].float(), size=28, mode="nearest")
    return resized[0, 0].to(torch.uint8).numpy()


def test_compose_matches_brute_force() -> None:
    rng = np.random.default_rng(0)
    first = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    second = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    out = multimnist.compose(first, second)
    assert out.shape == (5, 28, 28) and out.dtype == np.uint8
    for k in range(5):
        np.testing.assert_array_equal(out[k], _reference_composite(first[k], second[k]))


def test_partners_are_seeded_and_never_self() -> None:
    j = multimnist.partners(1000, seed=5)
    assert (j != np.arange(1000)).all() and j.min() >= 0 and j.max() < 1000
    np.testing.assert_array_equal(j, multimnist.partners(1000, seed=5))


def test_load_on_fixture(tmp_path) -> None:
    arrays = write_mnist_layout(tmp_path / "mnist", n_train=60, n_test=20)
    splits = multimnist.load(tmp_path, seed=3)
    assert [len(s) for s in splits] == [54, 6, 20]
    assert (Multiclass("left", 10), Multiclass("right", 10)) == multimnist.GROUPS
    j = multimnist.partners(60, seed=3)
    composites = multimnist.compose(arrays["train_images"], arrays["train_images"][j])
    normalise = splits.train.transform
    for k in range(len(splits.val)):
        i = int(splits.val.indices[k])
        x, (left, right) = splits.val[k]
        assert x.shape == (1, 28, 28) and x.dtype == torch.float32
        assert left.dtype == right.dtype == torch.int64
        assert int(left) == arrays["train_labels"][i] and int(right) == arrays["train_labels"][j[i]]
        torch.testing.assert_close(x, normalise(torch.from_numpy(composites[i])[None]))
    train = torch.stack([splits.train[k][0] for k in range(len(splits.train))])
    assert abs(float(train.mean())) < 1e-4 and abs(float(train.std()) - 1) < 1e-2
    assert set(splits.train.indices.tolist()).isdisjoint(splits.val.indices.tolist())
    x, (left, right) = default_collate([splits.test[k] for k in range(4)])
    assert x.shape == (4, 1, 28, 28) and left.shape == right.shape == (4,)


def test_limit_keeps_proportions(tmp_path) -> None:
    write_mnist_layout(tmp_path / "mnist", n_train=60, n_test=20)
    splits = multimnist.load(tmp_path, limit=27)
    assert [len(s) for s in splits] == [27, 3, 10]


def test_missing_and_truncated_files(tmp_path) -> None:
    with pytest.raises(MissingDataError, match=r"mnist.*--data-dir"):
        multimnist.load(tmp_path)
    write_mnist_layout(tmp_path / "mnist", n_train=30, n_test=10)
    path = tmp_path / "mnist" / "t10k-images-idx3-ubyte.gz"
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[:-28]))
    with pytest.raises(DataFormatError, match=r"t10k-images-idx3-ubyte\.gz"):
        multimnist.load(tmp_path)


# ----------------------------------------------------------------------------- real MNIST

MNIST_SHA256 = {
    "train-images-idx3-ubyte.gz": "ba891046e6505d7a",
    "train-labels-idx1-ubyte.gz": "65a50cbbf4e906d7",
    "t10k-images-idx3-ubyte.gz": "0fa7898d509279e4",
    "t10k-labels-idx1-ubyte.gz": "ff7bcfd416de3373",
}


def test_real_mnist_hashes_and_label_counts() -> None:
    folder = real_data_dir("mnist")
    for name, prefix in MNIST_SHA256.items():
        content = gzip.decompress((folder / name).read_bytes())
        assert hashlib.sha256(content).hexdigest()[:16] == prefix, name
    from bayesagg.benchmarks.splits import read_mnist_layout

    arrays = read_mnist_layout(folder)
    counts = np.bincount(arrays["train_labels"], minlength=10).tolist()
    assert counts == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert arrays["test_images"].shape == (10_000, 28, 28)


def test_real_multimnist_shapes_and_labels() -> None:
    folder = real_data_dir("mnist")
    splits = multimnist.load(folder.parent, seed=0)
    assert [len(s) for s in splits] == [54_000, 6_000, 10_000]
    from bayesagg.benchmarks.splits import read_mnist_layout

    arrays = read_mnist_layout(folder)
    labels = arrays["test_labels"]
    j = multimnist.partners(10_000, seed=1)
    for k in (0, 1, 9_999):
        x, (left, right) = splits.test[k]
        assert x.shape == (1, 28, 28)
        assert (int(left), int(right)) == (labels[k], labels[j[k]])
    # Both digits leave ink: composites have more lit pixels than single digits.
    composite_ink = float((splits.train.images[:5000] > 0).float().mean())
    digit_ink = float((arrays["train_images"][:5000] > 0).mean())
    assert composite_ink > 1.05 * digit_ink
