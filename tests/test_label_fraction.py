"""``label_fraction``: hidden training labels on QM9 and UTKFace, and missing values in files.

The mask of a run at a fraction must be the same for every method, run seed and training
limit (drawn from each example's id), keep about the fraction of each task's labels, touch
only the training split, and reach the training loop as the library's missing-label values
(NaN for regression, -100 for binary and multiclass).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from bayesagg.benchmarks.splits import check_label_fraction, kept_labels
from bayesagg.tasks import MISSING


def test_kept_labels_depend_on_the_key_alone() -> None:
    keys = [f"molecule-{k}" for k in range(400)]
    keep = kept_labels(keys, 5, 0.3)
    # The same key keeps the same labels whatever else is in the list and in what order.
    order = np.random.default_rng(0).permutation(400)
    again = kept_labels([keys[i] for i in order[:150]], 5, 0.3)
    np.testing.assert_array_equal(again, keep[order[:150]])
    # Another mask seed draws other labels; fraction 1 keeps everything.
    assert (kept_labels(keys, 5, 0.3, seed=1) != keep).any()
    assert kept_labels(keys, 5, 1.0).all()


def test_kept_labels_keep_the_fraction_of_each_task() -> None:
    fraction, n = 0.3, 20_000
    keep = kept_labels([str(k) for k in range(n)], 3, fraction)
    se = np.sqrt(fraction * (1 - fraction) / n)
    assert np.abs(keep.mean(axis=0) - fraction).max() < 5 * se
    # Tasks are drawn independently: the share of examples with no label is (1 - f)^3.
    none = (~keep).all(axis=1).mean()
    assert abs(none - (1 - fraction) ** 3) < 5 * np.sqrt(0.343 * 0.657 / n)


@pytest.mark.parametrize("bad", [0, -0.1, 1.5, float("nan")])
def test_bad_fraction_names_the_option(bad) -> None:
    with pytest.raises(ValueError, match="label_fraction must be in"):
        check_label_fraction(bad)


# --------------------------------------------------------------------------- UTKFace


def test_utkface_hides_training_labels_only(tmp_path) -> None:
    from bayesagg.benchmarks.utkface import data as utkface
    from test_data_utkface import _fake_release

    _fake_release(tmp_path / "utkface", n=200)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the fixture's malformed names
        full = utkface.load(tmp_path, image_size=16)
        part = utkface.load(tmp_path, image_size=16, label_fraction=0.5)
    age, gender, ethnicity = part.train.target_tensors()
    keep = kept_labels(part.train.names, 3, 0.5)
    assert part.train.names == full.train.names
    full_age, full_gender, full_ethnicity = full.train.target_tensors()
    # Hidden labels carry the missing values; kept ones are unchanged.
    assert torch.isnan(age[~keep[:, 0], 0]).all()
    assert (gender[~keep[:, 1], 0] == MISSING).all()
    assert (ethnicity[~keep[:, 2]] == MISSING).all()
    torch.testing.assert_close(age[keep[:, 0]], full_age[keep[:, 0]])
    torch.testing.assert_close(gender[keep[:, 1]], full_gender[keep[:, 1]])
    torch.testing.assert_close(ethnicity[keep[:, 2]], full_ethnicity[keep[:, 2]])
    assert 0 < keep.mean() < 1
    # Validation and test keep every label.
    for split in ("val", "test"):
        for a, b in zip(
            getattr(part, split).target_tensors(),
            getattr(full, split).target_tensors(),
            strict=True,
        ):
            torch.testing.assert_close(a, b)
    # A training limit picks a subset of the same masked faces.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        limited = utkface.load(tmp_path, image_size=16, label_fraction=0.5, limit=40, seed=3)
    name_to_row = {n: i for i, n in enumerate(part.train.names)}
    for i in range(len(limited.train)):
        _, (a, _, e) = limited.train[i]
        row = name_to_row[limited.train.dataset.names[limited.train.indices[i]]]
        assert bool(torch.isnan(a).all()) == (not keep[row, 0])
        assert (int(e) == MISSING) == (not keep[row, 2])


def test_utkface_rejects_a_bad_fraction(tmp_path) -> None:
    from bayesagg.benchmarks.utkface import data as utkface

    with pytest.raises(ValueError, match="label_fraction"):
        utkface.load(tmp_path, label_fraction=2.0)


# --------------------------------------------------------------------------- QM9


def _write_release(folder, count: int):
    """A qm9pack CSV of ``count`` small molecules whose converted targets are known."""
    pytest.importorskip("rdkit")
    pytest.importorskip("torch_geometric")
    from fixtures.formats import embed, write_qm9pack
    from test_data_qm9 import SMILES, _raw_props

    molecules = []
    for k, smiles in enumerate(SMILES[:count]):
        elements, xyz = embed(smiles)
        molecules.append((smiles, elements, xyz, _raw_props(elements, k)))
    return write_qm9pack(folder / "qm9", molecules)


@pytest.fixture(scope="module")
def qm9_release(tmp_path_factory):
    root = tmp_path_factory.mktemp("qm9labels")
    _write_release(root, 24)
    return root, None


def _load_qm9(root, tmp_path, **options):
    from bayesagg.benchmarks.qm9 import data as qm9

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the fixture's molecule RDKit rejects
        return qm9.load(root, cache_dir=tmp_path / "cache", **options)


def test_qm9_hides_training_labels_by_molecule_id(qm9_release, tmp_path) -> None:
    from bayesagg.benchmarks.qm9 import data as qm9

    root, _ = qm9_release
    full = _load_qm9(root, tmp_path)
    part = _load_qm9(root, tmp_path, label_fraction=0.5)
    keep = torch.from_numpy(kept_labels([str(int(i)) for i in part.train.ids], 11, 0.5))
    assert torch.isnan(part.train.y[~keep]).all()
    torch.testing.assert_close(part.train.y[keep], full.train.y[keep])
    assert 0 < float(keep.float().mean()) < 1
    torch.testing.assert_close(part.val.y, full.val.y)
    torch.testing.assert_close(part.test.y, full.test.y)
    # The items a loader batches carry the NaNs.
    row = int((~keep).any(dim=1).nonzero()[0])
    assert torch.isnan(part.train[row].y[0][~keep[row]]).all()
    # Another split seed: a molecule in both training splits has the same labels.
    other = _load_qm9(root, tmp_path, label_fraction=0.5, seed=1)
    common = set(part.train.ids.tolist()) & set(other.train.ids.tolist())
    assert common
    for gdb in common:
        a = part.train.y[part.train.ids.tolist().index(gdb)]
        b = other.train.y[other.train.ids.tolist().index(gdb)]
        assert torch.equal(a.isnan(), b.isnan())
    # Standardisation statistics over the labelled molecules of each target.
    mean, std = qm9.target_statistics(part.train)
    for t in range(11):
        labelled = part.train.y[keep[:, t], t].double()
        if len(labelled) >= 2:
            assert float(mean[t]) == pytest.approx(float(labelled.mean()), rel=1e-5, abs=1e-6)
            assert float(std[t]) == pytest.approx(float(labelled.std()), rel=1e-4, abs=1e-6)


def test_qm9_csv_with_empty_fields_loads_them_as_missing(tmp_path) -> None:
    import csv

    path = _write_release(tmp_path / "root", 12)
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    # Empty the mu and LUMO fields of molecule 1.
    rows[1][rows[0].index("Dipole_debye")] = ""
    rows[1][rows[0].index("LUMO_au")] = ""
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    splits = _load_qm9(tmp_path / "root", tmp_path)
    items = [s[i] for s in splits for i in range(len(s))]
    assert len(items) == 12  # nothing skipped
    first = next(d for d in items if int(d.idx) == 1)
    assert torch.isnan(first.y[0, 0]) and torch.isnan(first.y[0, 3])
    assert torch.isfinite(first.y[0, [1, 2, 4, 5, 6, 7, 8, 9, 10]]).all()
    assert all(torch.isfinite(d.y).all() for d in items if int(d.idx) != 1)


# --------------------------------------------------------------------------- runner


@pytest.mark.slow
def test_runner_records_the_fraction_and_trains_on_masked_labels(tmp_path, capsys) -> None:
    """``--data-option label_fraction=F``: its own results folder, recorded, finite training."""
    import importlib.util
    import json

    from bayesagg.app.cli import main

    if importlib.util.find_spec("qm9pack") is None:
        pytest.skip("qm9pack is not installed (pip install qm9pack==1.0.3)")
    argv = ["run", "-b", "qm9", "-m", "uw", "--protocol", "smoke", "--no-progress"]
    code = main([*argv, "--data-option", "label_fraction=0.3", "--out", str(tmp_path)])
    assert code == 0, capsys.readouterr().err[-2000:]
    [path] = (tmp_path / "qm9").glob("smoke+data.label_fraction=0.3/uw/seed0/result.json")
    result = json.loads(path.read_text())
    assert result["config"]["data_options"] == {"label_fraction": 0.3}
    assert result["protocol_settings"]["data_options"]["label_fraction"] == 0.3
    assert all(np.isfinite(v) for v in result["test"].values() if v is not None)


@pytest.mark.slow
def test_bayesagg_trains_utkface_with_hidden_labels(tmp_path, capsys) -> None:
    """BayesAgg-MTL through the whole runner (its diagnostics, refits, evaluation) on UTKFace's
    smoke recipe with 30 % of the training labels: a finished run with finite metrics."""
    import json

    from bayesagg.app.cli import main
    from conftest import real_data_dir

    data_dir = str(real_data_dir("utkface").parent)
    argv = ["run", "-b", "utkface", "-m", "bayesagg", "--protocol", "smoke", "--no-progress"]
    options = ["--data-option", "label_fraction=0.3", "--data-dir", data_dir]
    code = main([*argv, *options, "--out", str(tmp_path)])
    assert code == 0, capsys.readouterr().err[-2000:]
    [path] = (tmp_path / "utkface").glob("smoke+data.label_fraction=0.3/bayesagg/seed0/result.json")
    result = json.loads(path.read_text())
    assert all(np.isfinite(v) for v in result["test"].values() if v is not None)
