"""UTKFace: name parsing (malformed names counted, never a crash), split, targets, cache, real files."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import torch
from torch.utils.data import default_collate

from bayesagg.benchmarks.paths import MissingDataError
from bayesagg.benchmarks.utkface import data as utkface
from conftest import real_data_dir
from fixtures.formats import write_image

# The five malformed names of the official release (missing field, missing dot, a space).
MALFORMED = [
    "24_0_1_20170116220224657 .jpg.chip.jpg",
    "39_1_20170116174525125.jpg.chip.jpg",
    "55_0_0_20170116232725357jpg.chip.jpg",
    "61_1_20170109142408075.jpg.chip.jpg",
    "61_1_20170109150557335.jpg.chip.jpg",
]


def _fake_release(folder, n: int = 60) -> list[tuple[int, int, int]]:
    rng = np.random.default_rng(0)
    labels = []
    for k in range(n):
        age, gender, race = int(rng.integers(1, 90)), k % 2, k % 5
        write_image(
            folder / f"{age}_{gender}_{race}_2017011{k:010d}.jpg.chip.jpg", (24, 24), seed=k
        )
        labels.append((age, gender, race))
    for k, name in enumerate(MALFORMED):
        write_image(folder / name, (24, 24), seed=100 + k)
    (folder / "README.txt").write_text("not an image")
    return labels


def test_parse_names_rejects_malformed_and_out_of_range() -> None:
    good = ["1_0_4_20161219203650636.jpg.chip.jpg", "116_1_0_20170120134921760.jpg.chip.jpg"]
    bad = [*MALFORMED, "30_2_0_20170101.jpg.chip.jpg", "30_0_5_20170101.jpg.chip.jpg"]
    names, labels, rejected = utkface.parse_names(good + bad)
    assert names == good and rejected == bad
    assert labels.tolist() == [[1, 0, 4], [116, 1, 0]]


def test_load_on_fixture(tmp_path) -> None:
    labels = _fake_release(tmp_path / "utkface")
    with pytest.warns(UserWarning, match=r"skipped 5 UTKFace files with malformed names") as record:
        splits = utkface.load(tmp_path, image_size=16)
    assert len([w for w in record if "UTKFace" in str(w.message)]) == 1
    assert [len(s) for s in splits] == [42, 6, 12]
    x, (age, gender, ethnicity) = splits.train[0]
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32
    assert age.shape == (1,) and age.dtype == torch.float32
    assert gender.shape == (1,) and gender.dtype == torch.float32
    assert ethnicity.shape == () and ethnicity.dtype == torch.int64
    # Targets come from the file name; age is standardised with the official constants.
    name = splits.train.names[0]
    raw_age, raw_gender, raw_race = (int(v) for v in name.split("_")[:3])
    assert (raw_age, raw_gender, raw_race) in labels
    assert float(age) == pytest.approx((raw_age - 33.327) / 19.927)
    assert (float(gender), int(ethnicity)) == (raw_gender, raw_race)
    # Evaluation is deterministic (resize + centre crop), batches collate to a tuple.
    torch.testing.assert_close(splits.test[0][0], splits.test[0][0])
    xb, (ab, gb, eb) = default_collate([splits.val[k] for k in range(4)])
    assert xb.shape == (4, 3, 16, 16) and ab.shape == gb.shape == (4, 1) and eb.shape == (4,)
    assert set(splits.train.names).isdisjoint(splits.test.names)


def test_split_is_fixed_by_split_seed_not_seed(tmp_path) -> None:
    _fake_release(tmp_path / "utkface")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = utkface.load(tmp_path, seed=0)
        b = utkface.load(tmp_path, seed=1)
        c = utkface.load(tmp_path, split_seed=7)
    assert a.test.names == b.test.names and a.test.names != c.test.names


def test_cache_gives_the_same_images(tmp_path) -> None:
    _fake_release(tmp_path / "utkface")
    cache = tmp_path / "cache"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = utkface.load(tmp_path, image_size=16, cache=False)
        cached = utkface.load(tmp_path, image_size=16, cache=True, cache_dir=cache)
    assert len(list(cache.glob("utkface_18px_*.pt"))) == 1
    for k in range(3):
        torch.testing.assert_close(plain.test[k][0], cached.test[k][0], rtol=0, atol=0)
        assert plain.test.names[k] == cached.test.names[k]

    def no_decoding(path):
        raise AssertionError(f"decoded {path} although the cache exists")

    original = utkface._decode
    utkface._decode = no_decoding
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            again = utkface.load(tmp_path, image_size=16, cache=True, cache_dir=cache)
        assert again.val[0][0].shape == (3, 16, 16)
    finally:
        utkface._decode = original


def test_missing_or_empty_folder(tmp_path) -> None:
    with pytest.raises(MissingDataError, match="utkface"):
        utkface.load(tmp_path)
    (tmp_path / "utkface").mkdir()
    with pytest.raises(MissingDataError, match="no UTKFace images"):
        utkface.load(tmp_path)


def test_real_utkface_counts_and_split() -> None:
    folder = real_data_dir("utkface")
    files = sorted(os.listdir(folder))
    names, _, bad = utkface.parse_names(files)
    assert (len(names), len(bad)) == (23_702, 5)
    assert sorted(bad) == sorted(MALFORMED)
    with pytest.warns(UserWarning, match="skipped 5 UTKFace files") as record:
        splits = utkface.load(folder.parent, cache=False)  # counts and split, no decoding
    assert len([w for w in record if "UTKFace" in str(w.message)]) == 1
    sizes = [len(s) for s in splits]
    assert sum(sizes) == 23_702
    assert [round(s / 23_702, 2) for s in sizes] == [0.7, 0.1, 0.2]
    # Age-stratified: the three splits have nearly the same mean age.
    means = [float(s.age.mean()) * utkface.AGE_STD + utkface.AGE_MEAN for s in splits]
    assert max(means) - min(means) < 0.2
    x, _ = splits.test[0]
    assert x.shape == (3, 128, 128)


def test_the_decoded_cache_is_the_default_under_bayesagg_cache_dir(tmp_path, monkeypatch) -> None:
    _fake_release(tmp_path / "data" / "utkface")
    monkeypatch.setenv("BAYESAGG_CACHE_DIR", str(tmp_path / "cache"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        utkface.load(tmp_path / "data", image_size=16)
    assert len(list((tmp_path / "cache" / "utkface").glob("utkface_18px_*.pt"))) == 1
