"""QM9: graphs from qm9pack-format CSVs (features, bonds, units, split, cache), and the real package."""

from __future__ import annotations

import importlib.util
import os
import warnings

import numpy as np
import pytest
import torch

pytest.importorskip("rdkit")
pytest.importorskip("torch_geometric")

from bayesagg.benchmarks.paths import MissingDataError
from bayesagg.benchmarks.qm9 import data as qm9
from fixtures.formats import embed, write_qm9pack

HARTREE_TO_EV = 27.211386246
U0_REF = {e: v[0] for e, v in qm9.ATOMREF_HARTREE.items()}

SMILES = [
    "C", "N", "O", "C#C", "C#N", "C=O", "CC", "CO", "CCO", "c1ccccc1", "CC(=O)O", "FC(F)F",
    "C1CC1", "CN", "OC=O", "c1ccncc1", "CC#N", "NC=O", "C=C", "CCC", "COC", "C1CO1", "OCCO", "CF",
]  # fmt: skip


def _raw_props(elements: list[str], k: int) -> list[float]:
    """Raw CSV properties whose converted values are known: atomisation U0 = -0.1 (k+1) Hartree."""
    refs = np.sum([qm9.ATOMREF_HARTREE[e] for e in elements], axis=0)
    atomisation = -0.1 * (k + 1)
    return [
        0.5 + k,  # mu (D)
        10.0 + k,  # alpha (bohr^3)
        -0.25,  # HOMO (Ha)
        0.05,  # LUMO (Ha)
        100.0 + k,  # R2 (bohr^2)
        0.02,  # ZPVE (Ha)
        *(refs + atomisation).tolist(),  # U0, U, H, G (Ha)
        7.0,  # Cv (cal/mol K)
    ]


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    root = tmp_path_factory.mktemp("qm9root")
    molecules = []
    for k, smiles in enumerate(SMILES):
        elements, xyz = embed(smiles)
        molecules.append((smiles, elements, xyz, _raw_props(elements, k)))
    # Neutral H3O cannot get valid bond orders: it must be skipped with a counted warning.
    h3o = ["O", "H", "H", "H"]
    xyz = np.array([[0, 0, 0], [0.96, 0, 0], [-0.3, 0.9, 0], [-0.3, -0.45, 0.8]])
    molecules.append(("[OH3]", h3o, xyz, _raw_props(h3o, len(SMILES))))
    write_qm9pack(root / "qm9", molecules)
    return root, molecules


def _load(root, tmp_path, **options):
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        splits = qm9.load(root, cache_dir=tmp_path / "cache", **options)
    return splits, [str(w.message) for w in record if "QM9" in str(w.message)]


def _all_items(splits):
    return [d for split in splits for d in (split[i] for i in range(len(split)))]


def test_groups_and_names() -> None:
    (group,) = qm9.GROUPS
    assert group.outputs == 11 and group.labels == qm9.TARGETS
    assert [t for t, e in zip(qm9.TARGETS, qm9.ENERGY, strict=True) if e] == [
        "homo", "lumo", "zpve", "u0_atom", "u_atom", "h_atom", "g_atom",
    ]  # fmt: skip


def test_record_of_ethanol_follows_pyg_features() -> None:
    elements, xyz = embed("CCO")
    record = qm9.molecule_record(elements, xyz, np.zeros(11))
    x, z, edge_index = record["x"], record["z"].astype(int), record["edge_index"].astype(int)
    assert x.shape == (9, 11) and edge_index.shape == (2, 16)
    types = {"H": 0, "C": 1, "N": 2, "O": 3, "F": 4}
    assert (x[np.arange(9), [types[e] for e in elements]] == 1).all() and (
        x[:, :5].sum(1) == 1
    ).all()
    np.testing.assert_array_equal(x[:, 5], z)
    hydrogens = {i: int(x[i, 10]) for i in range(9) if elements[i] != "H"}
    assert sorted(hydrogens.values()) == [1, 2, 3]  # OH, CH2, CH3
    keys = edge_index[0] * 9 + edge_index[1]
    assert (np.diff(keys) > 0).all()  # sorted by row * n + col, as PyG
    pairs = set(map(tuple, edge_index.T.tolist()))
    assert all((b, a) in pairs for a, b in pairs)
    assert (record["kekule"] == 0).all() and not record["aromatic"].any()


def test_benzene_features_pyg_versus_rdkit(release, tmp_path) -> None:
    root, _ = release
    rdkit_splits, _ = _load(root, tmp_path, features="rdkit")
    pyg_splits, _ = _load(root, tmp_path, features="pyg")
    gdb = 1 + SMILES.index("c1ccccc1")
    find = {int(d.idx): d for d in _all_items(rdkit_splits)}
    found = {int(d.idx): d for d in _all_items(pyg_splits)}
    benzene_rd, benzene_pyg = find[gdb], found[gdb]
    carbons = benzene_rd.z == 6
    assert (benzene_rd.x[carbons, 6] == 1).all() and (benzene_rd.x[carbons, 8] == 1).all()
    cc = carbons[benzene_rd.edge_index[0]] & carbons[benzene_rd.edge_index[1]]
    assert (benzene_rd.edge_attr[cc, 3] == 1).all()
    # PyG's released QM9 has no aromatic/hybridisation information and Kekule bonds.
    assert (benzene_pyg.x[:, 6:10] == 0).all()
    kinds = benzene_pyg.edge_attr[cc, :4].sum(0).tolist()
    assert kinds == [6.0, 6.0, 0.0, 0.0]  # 3 single + 3 double C-C bonds, both directions


def test_load_fixture_units_split_and_skips(release, tmp_path) -> None:
    root, molecules = release
    splits, messages = _load(root, tmp_path, seed=0)
    assert len(messages) == 1 and "skipped 1 QM9 molecules" in messages[0]
    assert "gdb 25" in messages[0]
    sizes = [len(s) for s in splits]
    assert sum(sizes) == len(SMILES)  # 25 rows, H3O skipped
    items = _all_items(splits)
    assert sorted(int(d.idx) for d in items) == list(range(1, 25))
    for d in items:
        k = int(d.idx) - 1
        elements = molecules[k][1]
        assert d.x.shape == (len(elements), 11) and d.pos.shape == (len(elements), 3)
        assert d.edge_attr.shape == (d.edge_index.shape[1], 5) and d.y.shape == (1, 11)
        y = d.y[0].double()
        assert y[0] == pytest.approx(0.5 + k) and y[4] == pytest.approx(100.0 + k)
        assert y[2] == pytest.approx(-0.25 * HARTREE_TO_EV, rel=1e-6)
        assert y[5] == pytest.approx(0.02 * HARTREE_TO_EV, rel=1e-6)
        for t in range(6, 10):  # atomisation energies: total minus atom references, in eV
            assert y[t] == pytest.approx(-0.1 * (k + 1) * HARTREE_TO_EV, rel=1e-5)
        row, col = d.edge_index
        torch.testing.assert_close(d.edge_attr[:, 4], (d.pos[row] - d.pos[col]).norm(dim=1))
        assert (d.edge_attr[:, :4].sum(1) == 1).all()


def test_complete_graph_and_batching(release, tmp_path) -> None:
    from torch_geometric.loader import DataLoader

    root, _ = release
    bonds, _ = _load(root, tmp_path)
    full, _ = _load(root, tmp_path, complete_graph=True)
    for a, b in zip(_all_items(bonds), _all_items(full), strict=True):
        n = a.num_nodes
        assert b.edge_index.shape == (2, n * (n - 1)) and b.edge_attr.shape[1] == 5
        assert (b.edge_index[0] != b.edge_index[1]).all()
        bonded = b.edge_attr[:, :4].sum(1) == 1
        assert int(bonded.sum()) == a.edge_index.shape[1]
        row, col = b.edge_index
        torch.testing.assert_close(b.edge_attr[:, 4], (b.pos[row] - b.pos[col]).norm(dim=1))
    # Same edge features as Nash-MTL's transform chain built from PyG's own Distance.
    from torch_geometric.data import Data
    from torch_geometric.transforms import Distance

    for a, b in zip(_all_items(bonds)[:3], _all_items(full)[:3], strict=True):
        reference = Distance(norm=False)(
            Data(edge_index=b.edge_index, edge_attr=b.edge_attr[:, :4], pos=a.pos)
        )
        torch.testing.assert_close(b.edge_attr, reference.edge_attr)
        reference = Distance(norm=False)(
            Data(edge_index=a.edge_index, edge_attr=a.edge_attr[:, :4], pos=a.pos)
        )
        torch.testing.assert_close(a.edge_attr, reference.edge_attr)
    batch = next(iter(DataLoader(full.train, batch_size=4)))
    assert batch.y.shape == (4, 11) and batch.x.shape[1] == 11


def test_statistics_limit_and_cache(release, tmp_path, monkeypatch) -> None:
    root, _ = release
    splits, _ = _load(root, tmp_path)
    ys = torch.cat([splits.train[i].y for i in range(len(splits.train))])
    mean, std = qm9.target_statistics(splits.train)
    torch.testing.assert_close(mean, ys.mean(0))
    torch.testing.assert_close(std, ys.std(0))
    small, _ = _load(root, tmp_path, limit=5)
    assert len(small.train) <= 5
    assert set(small.train.ids.tolist()) <= set(splits.train.ids.tolist())  # nested in full

    def no_processing(item):
        raise AssertionError(f"row {item[0]} processed again although cached")

    monkeypatch.setattr(qm9, "_process_row", no_processing)
    again, messages = _load(root, tmp_path)
    assert [len(s) for s in again] == [len(s) for s in splits] and len(messages) == 1


def test_missing_source_names_the_fix(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(MissingDataError, match=r"pip install qm9pack"):
        qm9.load(tmp_path, cache_dir=tmp_path / "cache")


# ----------------------------------------------------------------------------- real qm9pack


def _qm9pack_or_skip() -> None:
    if importlib.util.find_spec("qm9pack") is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("qm9pack is not installed (pip install qm9pack==1.0.3)")
        pytest.skip("qm9pack is not installed")


def test_real_qm9pack_first_molecules() -> None:
    _qm9pack_or_skip()
    files = qm9._csv_files(qm9._qm9pack_folder())
    assert [p.name for p in files] == ["qm9_part1.csv", "qm9_part2.csv", "qm9_part3.csv"]
    lines = sum(len(p.read_bytes().splitlines()) - 1 for p in files)  # no field holds a newline
    assert lines == 130_831
    rows = qm9._read_rows(files[:1])
    methane = qm9.molecule_record(*qm9._parse_row(rows[0]))
    assert methane["z"].tolist() == [6, 1, 1, 1, 1]
    assert methane["x"][0, 10] == 4 and methane["edge_index"].shape == (2, 8)
    # PyG's QM9 gives methane U0_atom = -17.172 eV (from the kcal/mol column).
    assert methane["y"][6] == pytest.approx(-17.172, abs=2e-3)


def test_real_qm9pack_subset(tmp_path) -> None:
    _qm9pack_or_skip()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        splits = qm9.load(tmp_path / "no-root", limit=200, cache_dir=tmp_path / "cache", seed=0)
    train, val, test = (len(s) for s in splits)
    assert 195 <= train <= 200 and 17 <= val <= 19 and 17 <= test <= 19  # 19 = ceil(200 / 11.08)
    ys = torch.cat([splits.train[i].y for i in range(len(splits.train))])
    assert (ys[:, 6:10] < 0).all()  # atomisation energies are negative
    assert (ys[:, 6] > -110).all() and (ys[:, 6] < -10).all()  # U0_atom in eV
    assert (ys[:, 2] > -12).all() and (ys[:, 2] < -4).all()  # HOMO in eV
    assert (ys[:, 0] >= 0).all() and (ys[:, 10] > 0).all()  # |mu| in D, Cv in cal/mol K
    d = splits.train[0]
    assert d.x.shape[1] == 11 and d.edge_attr.shape[1] == 5 and d.pos.shape[1] == 3


def test_pyg_folder_is_used_when_present(tmp_path, monkeypatch) -> None:
    """``<root>/qm9/processed`` selects torch_geometric's QM9 (here a stand-in with its fields)."""
    import torch_geometric.datasets
    from torch_geometric.data import Data

    class FakeQM9:
        def __init__(self, root: str) -> None:
            assert root == str(tmp_path / "qm9")
            self.items = []
            for i in range(40):
                y = torch.arange(19, dtype=torch.float32).unsqueeze(0) + 100 * i
                edge_index = torch.tensor([[0, 1], [1, 0]])
                edge_attr = torch.tensor([[1.0, 0, 0, 0], [1.0, 0, 0, 0]])
                pos = torch.tensor([[0.0, 0, 0], [0, 0, 1.5]])
                self.items.append(Data(x=torch.zeros(2, 11), edge_index=edge_index,
                                       edge_attr=edge_attr, pos=pos, y=y, idx=i))  # fmt: skip
            self._data = Data(y=torch.cat([d.y for d in self.items]))

        def __len__(self) -> int:
            return len(self.items)

        def __getitem__(self, i: int):
            return self.items[i]

    (tmp_path / "qm9" / "processed").mkdir(parents=True)
    monkeypatch.setattr(torch_geometric.datasets, "QM9", FakeQM9)
    splits = qm9.load(tmp_path, seed=0)
    assert sum(len(s) for s in splits) == 40
    d = splits.train[0]
    base = 100 * int(d.idx)
    assert d.y[0].tolist() == [base + k for k in qm9.PYG_TARGET_INDEX]
    assert d.edge_attr.tolist() == [[1.0, 0, 0, 0, 1.5], [1.0, 0, 0, 0, 1.5]]
    mean, _ = qm9.target_statistics(splits.train)
    assert mean.shape == (11,)


def test_building_the_qm9_model_shows_no_torch_geometric_import_warning() -> None:
    # PyG 2.8 scripts two classes at import, and torch >= 2.12 warns about torch.jit.script on
    # every QM9 run (pyg-team/pytorch_geometric#10697); a fresh interpreter is needed because
    # this one may have imported PyG already. Warnings other than that one must still show.
    import subprocess
    import sys

    code = (
        "import warnings\n"
        "from bayesagg.benchmarks.qm9.model import MPNNEncoder\n"
        "MPNNEncoder(dim=8)\n"
        "try:\n"
        "    warnings.warn('still shown', FutureWarning)\n"
        "except FutureWarning as e:\n"
        "    print('raised:', e)\n"
    )
    done = subprocess.run(
        [sys.executable, "-W", "error::FutureWarning", "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "jit.script" not in done.stderr, done.stderr[-2000:]
    assert done.stdout.strip() == "raised: still shown"
