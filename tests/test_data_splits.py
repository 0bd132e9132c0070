"""Shared data pieces: IDX reading (good, truncated, corrupt files), splits, limits, warnings."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch

from bayesagg.benchmarks.paths import MissingDataError
from bayesagg.benchmarks.splits import (
    DataFormatError,
    IndexedImages,
    ScaleNormalise,
    Splits,
    limit_splits,
    limited_sizes,
    random_split_indices,
    read_idx,
    read_mnist_layout,
    stratified_split_indices,
    warn_skipped,
)
from fixtures.formats import write_idx


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_read_idx_round_trip(tmp_path, suffix) -> None:
    array = np.random.default_rng(0).integers(0, 256, (7, 5, 3), dtype=np.uint8)
    path = write_idx(tmp_path / f"images-idx3-ubyte{suffix}", array)
    out = read_idx(path)
    assert out.dtype == np.uint8 and out.shape == (7, 5, 3)
    np.testing.assert_array_equal(out, array)
    out[0, 0, 0] = 1  # the returned array is an owned, writable copy


def test_read_idx_big_endian_int32(tmp_path) -> None:
    values = np.array([1, -2, 70000], dtype=">i4")
    path = tmp_path / "ints-idx1"
    path.write_bytes(bytes([0, 0, 0x0C, 1]) + (3).to_bytes(4, "big") + values.tobytes())
    np.testing.assert_array_equal(read_idx(path), [1, -2, 70000])


def test_truncated_idx_names_the_file(tmp_path) -> None:
    array = np.zeros((10, 28, 28), dtype=np.uint8)
    path = write_idx(tmp_path / "train-images-idx3-ubyte", array)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataFormatError, match=r"train-images-idx3-ubyte.*truncated or corrupt"):
        read_idx(path)


def test_corrupt_gzip_and_bad_magic_name_the_file(tmp_path) -> None:
    broken = tmp_path / "t10k-labels-idx1-ubyte.gz"
    payload = gzip.compress(bytes([0, 0, 8, 1, 0, 0, 0, 5, 1, 2, 3, 4, 5]))
    broken.write_bytes(payload[: len(payload) // 2])  # a gzip stream cut in half
    with pytest.raises(DataFormatError, match=r"t10k-labels-idx1-ubyte\.gz"):
        read_idx(broken)
    html = tmp_path / "page-idx1-ubyte"
    html.write_bytes(b"<html>not found</html>")
    with pytest.raises(DataFormatError, match=r"page-idx1-ubyte: not an IDX file"):
        read_idx(html)


def test_mnist_layout_missing_file_and_mismatch(tmp_path) -> None:
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", np.zeros((4, 28, 28), np.uint8))
    with pytest.raises(MissingDataError, match=r"train-labels-idx1-ubyte\.gz not found"):
        read_mnist_layout(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(3, np.uint8))
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", np.zeros((2, 28, 28), np.uint8))
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(2, np.uint8))
    with pytest.raises(DataFormatError, match="4 train images but labels of shape"):
        read_mnist_layout(tmp_path)


def test_random_split_is_seeded_disjoint_and_sized() -> None:
    a = random_split_indices(50, [5, 10, -1], seed=3)
    b = random_split_indices(50, [5, 10, -1], seed=3)
    c = random_split_indices(50, [5, 10, -1], seed=4)
    assert [len(p) for p in a] == [5, 10, 35]
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))
    np.testing.assert_array_equal(np.sort(np.concatenate(a)), np.arange(50))
    with pytest.raises(ValueError, match="do not fit"):
        random_split_indices(5, [4, 4], seed=0)


def test_stratified_split_keeps_each_stratum_proportional() -> None:
    rng = np.random.default_rng(0)
    strata = np.concatenate([np.full(n, k) for k, n in enumerate([1, 2, 3, 50, 301, 7])])
    rng.shuffle(strata)
    fractions = [0.7, 0.1, 0.2]
    parts = stratified_split_indices(strata, fractions, seed=42)
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(len(strata)))
    for part, fraction in zip(parts, fractions, strict=True):
        assert abs(len(part) - fraction * len(strata)) <= 1
        for k in np.unique(strata):
            share = (strata[part] == k).sum()
            assert abs(share - fraction * (strata == k).sum()) < 2
    again = stratified_split_indices(strata, fractions, seed=42)
    assert all(np.array_equal(x, y) for x, y in zip(parts, again, strict=True))
    with pytest.raises(ValueError, match="sum to 1"):
        stratified_split_indices(strata, [0.5, 0.2], seed=0)


def test_limit_scales_val_and_test_and_is_deterministic() -> None:
    assert limited_sizes(1000, 100, 200, None) == (1000, 100, 200)
    assert limited_sizes(1000, 100, 200, 50) == (50, 5, 10)
    assert limited_sizes(1000, 100, 200, 5000) == (1000, 100, 200)
    images = torch.arange(300, dtype=torch.uint8).reshape(300, 1, 1)
    targets = (torch.arange(300),)
    splits = Splits(
        IndexedImages(images, targets, np.arange(0, 200)),
        IndexedImages(images, targets, np.arange(200, 240)),
        IndexedImages(images, targets, np.arange(240, 300)),
    )
    small = limit_splits(splits, 20, seed=1)
    assert [len(s) for s in small] == [20, 4, 6]
    same = limit_splits(splits, 20, seed=1)
    assert [int(small.train[i][1][0]) for i in range(20)] == [
        int(same.train[i][1][0]) for i in range(20)
    ]
    assert all(200 <= int(small.val[i][1][0]) < 240 for i in range(4))


def test_indexed_images_items_and_normalisation() -> None:
    images = torch.tensor([[[0, 255]], [[51, 102]]], dtype=torch.uint8).unsqueeze(1)
    labels = torch.tensor([3, 4])
    data = IndexedImages(images, (labels,), [1], ScaleNormalise(0.5, 0.25))
    x, (y,) = data[0]
    torch.testing.assert_close(x, (images[1].float() / 255 - 0.5) / 0.25)
    assert int(y) == 4 and len(data) == 1
    with pytest.raises(ValueError, match="targets of lengths"):
        IndexedImages(images, (torch.zeros(3),))
    with pytest.raises(ValueError, match="std must be > 0"):
        ScaleNormalise(0.0, 0.0)


def test_warn_skipped_is_one_counted_warning() -> None:
    with pytest.warns(UserWarning, match=r"skipped 7 broken files in /data: 'a', 'b'") as record:
        warn_skipped("broken files", 7, ["a", "b"], "/data")
    assert len(record) == 1


def test_crop_transform_centre_crop_outside_training_random_crop_in_it():
    from bayesagg.benchmarks.splits import crop_transform

    image = torch.arange(3 * 8 * 8, dtype=torch.uint8).reshape(3, 8, 8)
    evaluation = crop_transform(4, False, resize=None, mean=(0.5,) * 3, std=(0.25,) * 3)
    expected = (image[:, 2:6, 2:6].to(torch.float32) / 255 - 0.5) / 0.25
    torch.testing.assert_close(evaluation(image), expected)
    training = crop_transform(4, True, resize=None, mean=(0.0,) * 3, std=(1.0,) * 3)
    crops = {tuple(training(image)[0, 0].tolist()) for _ in range(20)}
    assert len(crops) > 1  # random crops (a central crop would give one)
