"""QM9 (Ramakrishnan et al., Sci. Data 2014) as molecular graphs for 11-target regression.

The paper follows Nash-MTL's protocol on PyTorch Geometric's ``QM9`` (docs/data.md, QM9). The
same 130,831 molecules come here from the PyPI package ``qm9pack`` (its CSVs hold elements, xyz
coordinates and the raw properties); each molecule becomes a PyG ``Data`` with PyG's QM9 node
features (11 dims), bonds perceived from the coordinates by RDKit (``rdDetermineBonds``, charge 0),
``pos``, and ``y`` [1, 11] in PyG's units. If ``<root>/qm9`` holds PyG's own QM9 folder
(``raw/``, ``processed/``), ``torch_geometric.datasets.QM9`` is used instead.

Targets are *not* standardised here; the runner standardises with :func:`target_statistics` of
the training split and reports MAE with :data:`ENERGY` targets x 1000 (meV).
"""

from __future__ import annotations

import contextlib
import csv
import functools
import hashlib
import importlib.util
import os
import pickle
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset, Subset

from bayesagg.tasks import Regression

from ..paths import DataDir, MissingDataError, data_root
from ..pyg import torch_geometric
from ..splits import (
    Splits,
    check_label_fraction,
    kept_labels,
    limited_sizes,
    say_kept_labels,
    warn_skipped,
)

__all__ = [
    "ATOMREF_HARTREE",
    "ENERGY",
    "GROUPS",
    "HARTREE_TO_EV",
    "PYG_TARGET_INDEX",
    "TARGETS",
    "QM9Graphs",
    "load",
    "locate",
    "molecule_record",
    "target_statistics",
]

#: The 11 targets in the paper's order (PyG's QM9 without the HOMO-LUMO gap).
TARGETS = (
    "mu",
    "alpha",
    "homo",
    "lumo",
    "r2",
    "zpve",
    "u0_atom",
    "u_atom",
    "h_atom",
    "g_atom",
    "cv",
)
#: Which targets are energies in eV (reported x 1000, in meV).
ENERGY = (False, False, True, True, False, True, True, True, True, True, False)
#: Their indices in PyG's 19-column ``QM9.y``.
PYG_TARGET_INDEX = (0, 1, 2, 3, 5, 6, 12, 13, 14, 15, 11)

GROUPS = (Regression("qm9", 11, labels=TARGETS),)

HARTREE_TO_EV = 27.211386246

#: Atom reference energies in Hartree for U0, U(298 K), H(298 K), G(298 K): QM9's
#: ``atomref.txt`` (Ramakrishnan et al. 2014, figshare doi:10.6084/m9.figshare.978904), the table
#: PyG's ``QM9.atomref`` also carries (there in eV). Atomisation energy = total - sum of these.
ATOMREF_HARTREE = {
    "H": (-0.500273, -0.498857, -0.497912, -0.510927),
    "C": (-37.846772, -37.845355, -37.844411, -37.861317),
    "N": (-54.583861, -54.582445, -54.581501, -54.598897),
    "O": (-75.064579, -75.063162, -75.062219, -75.079532),
    "F": (-99.718730, -99.717314, -99.716370, -99.733544),
}
_ELEMENTS = ("H", "C", "N", "O", "F")
_ATOMIC_NUMBER = {"H": 1, "C": 6, "N": 7, "O": 8, "F": 9}

# qm9pack's CSV columns: the raw properties (QM9's units) in TARGETS order, energies in Hartree.
_PROPERTY_COLUMNS = (
    "Dipole_debye",
    "Polarizability_bohr3",
    "HOMO_au",
    "LUMO_au",
    "R2_bohr2",
    "ZPVE_au",
    "InternalEnergy_0K_au",
    "InternalEnergy_298K_au",
    "Enthalphy_298K_au",
    "GibbsFreeEnergy_298K_au",
    "Heatcapacity_Cv_cal_mol_K",
)
_COLUMNS = ("Index", "Elements", "XYZ_Ang", *_PROPERTY_COLUMNS)
_CSV_PATTERN = "qm9_part*.csv"

#: Bumped whenever the processing below changes, so stale caches are never read.
PROCESS_VERSION = 2  # 2: empty or NaN target fields are missing labels (NaN), not failures
_SHARD = 1000
_TEST, _VAL = 10_000, 10_000


# --------------------------------------------------------------------------- raw rows


def _csv_files(folder: Path) -> list[Path]:
    files = sorted(folder.glob(_CSV_PATTERN))
    if not files:
        raise MissingDataError(f"no {_CSV_PATTERN} files in {folder}")
    return files


def _qm9pack_folder() -> Path:
    # find_spec, not import: importing qm9pack needs pkg_resources, and only its CSVs are used.
    spec = importlib.util.find_spec("qm9pack")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDataError(
            "QM9 not found: install the CSVs with `pip install qm9pack==1.0.3`, or pass "
            "--data-dir DIR whose qm9/ folder is PyG's QM9 (raw/, processed/) or holds "
            "qm9_part*.csv files (or set $BAYESAGG_DATA_DIR)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def _read_rows(files: Sequence[Path]) -> list[list[str]]:
    """Return the needed columns of every CSV row, in file order (molecule order)."""
    csv.field_size_limit(1 << 30)
    rows: list[list[str]] = []
    for path in files:
        with open(path, newline="") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                raise MissingDataError(f"{path} is empty")
            missing = [c for c in _COLUMNS if c not in header]
            if missing:
                raise ValueError(f"{path}: not a qm9pack CSV, columns {missing} are missing")
            take = [header.index(c) for c in _COLUMNS]
            for line, row in enumerate(reader, start=2):
                if len(row) != len(header):
                    raise ValueError(
                        f"{path}, line {line}: {len(row)} fields, header has {len(header)}"
                    )
                rows.append([row[k] for k in take])
    return rows


def _parse_row(row: Sequence[str]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Return (elements, xyz float64 [n, 3] in Angstrom, targets float64 [11] in PyG units)."""
    # Elements is a Python list with single quotes; XYZ_Ang has numbers like "0." that strict
    # JSON rejects, so both are split by hand rather than parsed as JSON.
    elements = [e.strip().strip("'\"") for e in row[1].strip("[] ").split(",")]
    numbers = row[2].replace("[", " ").replace("]", " ").replace(",", " ").split()
    xyz = np.asarray(numbers, dtype=np.float64).reshape(-1, 3)
    if len(xyz) != len(elements) or any(e not in _ATOMIC_NUMBER for e in elements):
        raise ValueError(
            f"molecule {row[0]}: {len(elements)} elements {elements} vs {len(xyz)} positions"
        )
    # An empty field is a missing label (NaN, the library's regression convention), not an
    # error: files with missing properties load, and those molecules train the other tasks.
    raw = np.asarray([v if v.strip() else "nan" for v in row[3:]], dtype=np.float64)
    y = raw.copy()
    y[[2, 3, 5]] *= HARTREE_TO_EV
    reference = np.sum([ATOMREF_HARTREE[e] for e in elements], axis=0)
    y[6:10] = (raw[6:10] - reference) * HARTREE_TO_EV
    return elements, xyz, y


# --------------------------------------------------------------------------- one molecule


@contextlib.contextmanager
def _quiet_c_output() -> Iterator[None]:
    """Silence C-level stdout/stderr (RDKit's extended-Hueckel code prints distance warnings)."""
    streams = []
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
            streams.append(stream.fileno())
        except (AttributeError, OSError, ValueError):
            continue  # e.g. a captured stream without a file descriptor
    saved = [os.dup(fd) for fd in streams]
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        for fd in streams:
            os.dup2(devnull, fd)
        yield
    finally:
        with contextlib.suppress(Exception):
            import ctypes

            ctypes.CDLL(None).fflush(None)
        for fd, copy in zip(streams, saved, strict=True):
            os.dup2(copy, fd)
            os.close(copy)
        os.close(devnull)


def _perceive(elements: Sequence[str], xyz: np.ndarray) -> Any:
    """Return an RDKit molecule with bonds determined from the coordinates (total charge 0).

    The default van der Waals connectivity misreads about 5 % of QM9 (bond orders then fail);
    those get a second try with extended-Hueckel connectivity, which handles them.
    """
    from rdkit import Chem
    from rdkit.Chem import rdDetermineBonds

    block = f"{len(elements)}\n\n" + "".join(
        f"{e} {p[0]:.10f} {p[1]:.10f} {p[2]:.10f}\n" for e, p in zip(elements, xyz, strict=True)
    )
    mol = Chem.MolFromXYZBlock(block)
    try:
        rdDetermineBonds.DetermineBonds(mol, charge=0)
        return mol
    except Exception:
        mol = Chem.MolFromXYZBlock(block)
        with _quiet_c_output():
            rdDetermineBonds.DetermineBonds(mol, charge=0, useHueckel=True)
        return mol


def molecule_record(
    elements: Sequence[str], xyz: np.ndarray, y: np.ndarray
) -> dict[str, np.ndarray]:
    """Return one molecule's graph arrays: PyG QM9 node features, bonds, positions, targets.

    ``x`` [n, 11]: one-hot H C N O F, atomic number, aromatic, sp, sp2, sp3, number of bonded
    hydrogens (PyG's ``QM9.process`` order); ``edge_index`` [2, 2b] both directions sorted by
    ``row * n + col``; ``kekule`` [2b] bond type 0 single / 1 double / 2 triple of a Kekule form;
    ``aromatic`` [2b] RDKit's aromaticity. Raises if RDKit cannot assign bonds.
    """
    from rdkit import Chem
    from rdkit.Chem.rdchem import BondType, HybridizationType

    mol = _perceive(elements, xyz)
    n = mol.GetNumAtoms()
    kekule_mol = Chem.Mol(mol)
    Chem.Kekulize(kekule_mol, clearAromaticFlags=True)
    order = {BondType.SINGLE: 0, BondType.DOUBLE: 1, BondType.TRIPLE: 2}
    rows, cols, kekule, aromatic = [], [], [], []
    for bond, kb in zip(mol.GetBonds(), kekule_mol.GetBonds(), strict=True):
        a, b = bond.GetBeginAtomIdx(), bond.GetEndAtomIdx()
        if kb.GetBondType() not in order:
            raise ValueError(f"unexpected bond type {kb.GetBondType()}")
        rows += [a, b]
        cols += [b, a]
        kekule += 2 * [order[kb.GetBondType()]]
        aromatic += 2 * [bond.GetIsAromatic()]
    edge_index = np.asarray([rows, cols], dtype=np.int64).reshape(2, -1)
    perm = np.argsort(edge_index[0] * n + edge_index[1], kind="stable")
    edge_index = edge_index[:, perm]
    z = np.asarray([a.GetAtomicNum() for a in mol.GetAtoms()], dtype=np.int64)
    x = np.zeros((n, 11), dtype=np.float32)
    x[np.arange(n), [_ELEMENTS.index(e) for e in elements]] = 1.0
    x[:, 5] = z
    hybrid = (HybridizationType.SP, HybridizationType.SP2, HybridizationType.SP3)
    for i, atom in enumerate(mol.GetAtoms()):
        x[i, 6] = atom.GetIsAromatic()
        for k, h in enumerate(hybrid):
            x[i, 7 + k] = atom.GetHybridization() == h
    # Number of hydrogens bonded to each atom, counted on the explicit-H graph as PyG does.
    np.add.at(x[:, 10], edge_index[1], (z[edge_index[0]] == 1).astype(np.float32))
    return {
        "z": z.astype(np.int8),
        "pos": xyz.astype(np.float32),
        "x": x,
        "edge_index": edge_index.astype(np.int16),
        "kekule": np.asarray(kekule, dtype=np.int8)[perm],
        "aromatic": np.asarray(aromatic, dtype=bool)[perm],
        "y": np.asarray(y, dtype=np.float32),
    }


def _process_row(item: tuple[int, list[str]]) -> tuple[int, dict[str, np.ndarray] | str]:
    row_id, row = item
    from rdkit import RDLogger

    RDLogger.DisableLog("rdApp.*")
    try:
        return row_id, molecule_record(*_parse_row(row))
    except Exception as error:  # counted and reported by the caller, never silently dropped
        return row_id, f"{type(error).__name__}: {error}".strip()[:200]


# --------------------------------------------------------------------------- on-disk cache


def _cache_folder(files: Sequence[Path], cache_dir: Path) -> Path:
    from rdkit import rdBase

    key = "\n".join(f"{p.name}:{p.stat().st_size}" for p in files)
    key += f"\nv{PROCESS_VERSION}\nrdkit {rdBase.rdkitVersion}"
    return cache_dir / f"qm9-{hashlib.sha1(key.encode()).hexdigest()[:12]}"


def _records(
    rows: list[list[str]], wanted: np.ndarray, folder: Path, workers: int
) -> dict[int, dict[str, np.ndarray] | str]:
    """Return the processed record (or failure message) of each wanted row, using the cache.

    Shards of 1000 rows are pickles that hold whatever rows have been processed so far, so a
    subset is processed quickly and the full set fills in later; writes are atomic renames.
    """
    folder.mkdir(parents=True, exist_ok=True)
    out: dict[int, dict[str, np.ndarray] | str] = {}
    shards: dict[int, dict[int, Any]] = {}
    todo: list[int] = []
    for shard in np.unique(wanted // _SHARD):
        path = folder / f"shard_{shard:04d}.pkl"
        stored: dict[int, Any] = {}
        if path.is_file():
            try:
                with open(path, "rb") as f:
                    stored = pickle.load(f)
            except (OSError, EOFError, pickle.UnpicklingError):
                stored = {}  # a damaged cache file is rebuilt, not trusted
        shards[int(shard)] = stored
    for row_id in wanted.tolist():
        stored = shards[row_id // _SHARD]
        if row_id in stored:
            out[row_id] = stored[row_id]
        else:
            todo.append(row_id)
    if todo:
        items = [(r, rows[r]) for r in todo]
        if workers > 1 and len(items) > 200:
            import multiprocessing

            with multiprocessing.get_context().Pool(workers) as pool:
                done = pool.map(_process_row, items, chunksize=64)
        else:
            done = [_process_row(item) for item in items]
        changed: set[int] = set()
        for row_id, record in done:
            out[row_id] = record
            shards[row_id // _SHARD][row_id] = record
            changed.add(row_id // _SHARD)
        for shard in changed:
            path = folder / f"shard_{shard:04d}.pkl"
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            with open(tmp, "wb") as f:
                pickle.dump(shards[shard], f, protocol=pickle.HIGHEST_PROTOCOL)
            os.replace(tmp, path)
    return out


# --------------------------------------------------------------------------- datasets


class QM9Graphs(Dataset):
    """PyG ``Data`` items sliced from concatenated per-molecule arrays.

    ``edge_attr`` is the 4-dim bond one-hot plus the Euclidean bond length (dim 5); with
    ``complete_graph`` every ordered atom pair is an edge (zero bond features where not bonded),
    as Nash-MTL's ``Complete()`` followed by ``Distance(norm=False)``. The bond graph's edge
    features are computed once here, so an item costs only slicing.
    """

    def __init__(
        self, records: Sequence[dict[str, np.ndarray]], ids: Sequence[int], complete_graph: bool
    ) -> None:
        def cat(key: str, axis: int = 0) -> np.ndarray:
            return np.concatenate([r[key] for r in records], axis=axis) if records else np.zeros(0)

        self.complete_graph = complete_graph
        nodes = np.asarray([len(r["z"]) for r in records], dtype=np.int64)
        edges = np.asarray([r["edge_index"].shape[1] for r in records], dtype=np.int64)
        self.node_ptr = np.concatenate([[0], np.cumsum(nodes)]).tolist()
        self.edge_ptr = np.concatenate([[0], np.cumsum(edges)]).tolist()
        self.x = torch.from_numpy(cat("x")).reshape(-1, 11)
        self.z = torch.from_numpy(cat("z").astype(np.int64))
        self.pos = torch.from_numpy(cat("pos")).reshape(-1, 3)
        self.edge_index = torch.from_numpy(cat("edge_index", 1).astype(np.int64)).reshape(2, -1)
        bond = torch.from_numpy(cat("bond").astype(np.int64))
        # Global atom ids of every edge's ends, to get all bond lengths in one vectorised step.
        offset = torch.from_numpy(np.repeat(np.asarray(self.node_ptr[:-1], dtype=np.int64), edges))
        ends = self.pos[self.edge_index[0] + offset] - self.pos[self.edge_index[1] + offset]
        self.edge_attr = torch.cat(
            [F.one_hot(bond, 4).to(torch.float32), ends.norm(dim=1, keepdim=True)], dim=1
        )
        self.y = torch.from_numpy(
            np.stack([r["y"] for r in records]) if records else np.zeros((0, 11), np.float32)
        )
        self.ids = torch.as_tensor(list(ids), dtype=torch.long)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> Any:
        Data = torch_geometric().data.Data

        a, b = self.node_ptr[i], self.node_ptr[i + 1]
        c, d = self.edge_ptr[i], self.edge_ptr[i + 1]
        edge_index, edge_attr, pos = self.edge_index[:, c:d], self.edge_attr[c:d], self.pos[a:b]
        if self.complete_graph:
            edge_index, edge_attr = _complete(edge_index, edge_attr[:, :4], pos)
        return Data(
            x=self.x[a:b],
            z=self.z[a:b],
            pos=pos,
            edge_index=edge_index,
            edge_attr=edge_attr,
            y=self.y[i : i + 1],
            idx=int(self.ids[i]),
        )


@functools.lru_cache(maxsize=64)
def _pairs(n: int) -> tuple[Tensor, Tensor]:
    """Return (edge_index [2, n(n-1)] of all ordered pairs i != j, their flat ids i * n + j)."""
    row, col = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    keep = row != col
    pairs = torch.stack([row[keep], col[keep]])
    return pairs, pairs[0] * n + pairs[1]


def _complete(edge_index: Tensor, bond_attr: Tensor, pos: Tensor) -> tuple[Tensor, Tensor]:
    """Return the complete graph's (edge_index, edge_attr = bond one-hot or zeros, distance)."""
    n = pos.size(0)
    pairs, flat = _pairs(n)
    full = torch.zeros(n * n, bond_attr.size(1))
    full[edge_index[0] * n + edge_index[1]] = bond_attr
    distance = (pos[pairs[0]] - pos[pairs[1]]).norm(dim=1, keepdim=True)
    return pairs, torch.cat([full[flat], distance], dim=1)


def _edge_features(data: Any, complete_graph: bool) -> Any:
    """Return ``data`` with edge_attr = bond one-hot (4) + distance (1), optionally complete."""
    if complete_graph:
        data.edge_index, data.edge_attr = _complete(data.edge_index, data.edge_attr, data.pos)
        return data
    row, col = data.edge_index
    distance = (data.pos[row] - data.pos[col]).norm(dim=1, keepdim=True)
    data.edge_attr = torch.cat([data.edge_attr.to(distance.dtype), distance], dim=1)
    return data


class _PygQM9View(Dataset):
    """Items of PyG's ``QM9`` with ``y`` reduced to the 11 targets and the edge features above."""

    def __init__(self, dataset: Any, complete_graph: bool) -> None:
        self.dataset = dataset
        self.complete_graph = complete_graph
        self.y = dataset._data.y[:, list(PYG_TARGET_INDEX)]

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> Any:
        data = self.dataset[i].clone()
        data.y = self.y[i : i + 1].clone()  # the 11 targets, with any labels hidden by load()
        return _edge_features(data, self.complete_graph)


def target_statistics(train: Dataset) -> tuple[Tensor, Tensor]:
    """Return the per-target mean and standard deviation [11] over ``train`` (for standardising)."""
    y = _targets(train)
    if len(y) < 2:
        raise ValueError(f"target_statistics needs at least 2 molecules, got {len(y)}")
    missing = y.isnan()
    if not bool(missing.any()):
        return y.mean(dim=0), y.std(dim=0)
    # Missing labels (NaN): each target's statistics over the molecules that have it.
    counts = (~missing).sum(dim=0)
    few = [name for name, n in zip(TARGETS, counts.tolist(), strict=True) if n < 2]
    if few:
        raise ValueError(f"target_statistics: fewer than 2 labelled molecules for {few}")
    mean = y.nanmean(dim=0)
    centred = torch.where(missing, torch.zeros_like(y), y - mean)
    return mean, (centred.square().sum(dim=0) / (counts - 1)).sqrt()


def _targets(dataset: Dataset) -> Tensor:
    if isinstance(dataset, Subset):
        return _targets(dataset.dataset)[torch.as_tensor(dataset.indices, dtype=torch.long)]
    if isinstance(dataset, QM9Graphs | _PygQM9View):
        return dataset.y
    return torch.cat([dataset[i].y for i in range(len(dataset))])  # type: ignore[arg-type]


# --------------------------------------------------------------------------- load


def _split_ids(n: int, seed: int, limit: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return row ids of (train, val, test): shuffle, test = first 10k, val = next 10k, rest train.

    A smaller set scales the 10k blocks by n / 130,831; ``limit`` keeps the first rows of each
    block, so limited splits are nested in the full ones.
    """
    order = np.random.default_rng(seed).permutation(n)
    n_test = min(_TEST, round(n * _TEST / 130_831))
    n_val = min(_VAL, round(n * _VAL / 130_831))
    test, val, train = order[:n_test], order[n_test : n_test + n_val], order[n_test + n_val :]
    k_train, k_val, k_test = limited_sizes(len(train), len(val), len(test), limit)
    return train[:k_train], val[:k_val], test[:k_test]


def locate(data_dir: DataDir = None) -> str:
    """Return where :func:`load` would read the molecules from, without reading them (folder
    and file checks, in :func:`load`'s order: cheap enough for ``bayesagg list``); raise
    MissingDataError naming the fix if there is no source."""
    root = data_root(data_dir)
    folder = root / "qm9" if root is not None else None
    if folder is not None and ((folder / "raw").is_dir() or (folder / "processed").is_dir()):
        return f"{folder} (PyG's QM9)"
    if folder is not None and any(folder.glob(_CSV_PATTERN)):
        return str(folder)
    source = _qm9pack_folder()
    _csv_files(source)
    return f"{source} (the qm9pack package)"


def load(
    data_dir: DataDir = None,
    *,
    seed: int = 0,
    limit: int | None = None,
    complete_graph: bool = False,
    features: Literal["pyg", "rdkit"] = "pyg",
    cache_dir: str | os.PathLike[str] | None = None,
    workers: int = 1,
    label_fraction: float = 1.0,
    label_seed: int = 0,
) -> Splits:
    """Return QM9 train/val/test of PyG ``Data`` graphs with ``y`` [1, 11] in PyG's units.

    Source: ``<data_dir>/qm9`` when it is PyG's QM9 folder (``raw/``/``processed/``) or holds
    ``qm9_part*.csv``; else the installed ``qm9pack`` package. Split (Nash-MTL): shuffle with
    ``seed``; test = first 10,000, val = next 10,000, train = the rest; ``limit`` caps train and
    scales val/test alike, processing only those molecules.

    ``features="pyg"`` reproduces what PyG's processed QM9 holds (its unsanitised SDF leaves the
    aromatic and sp/sp2/sp3 columns zero and bonds in Kekule form, pyg-team/pytorch_geometric
    #8370); ``"rdkit"`` fills them from RDKit's perception, with aromatic bond types.
    ``complete_graph=False`` (default, CPU-friendly) gives the bond graph + distance; ``True``
    Nash-MTL's complete graph + distance; both have edge_attr dim 5. Processed molecules are
    cached in ``cache_dir`` (default ``~/.cache/bayesagg/qm9``); ``workers`` processes in
    parallel. Molecules RDKit cannot process are skipped with one counted warning. An empty
    target field in a CSV is a missing label (NaN).

    ``label_fraction`` < 1 hides training labels: each of a training molecule's 11 targets is
    kept with that probability and otherwise set to NaN (missing), drawn from the molecule's id
    (the CSV's index, or the position in PyG's QM9) and ``label_seed`` only, so every method, run seed and
    limit sees the same labels of a molecule (:func:`~bayesagg.benchmarks.splits.kept_labels`);
    validation and test keep all theirs.
    """
    label_fraction = check_label_fraction(label_fraction)
    if features not in ("pyg", "rdkit"):
        raise ValueError(f"features must be 'pyg' or 'rdkit', got {features!r}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    root = data_root(data_dir)
    folder = root / "qm9" if root is not None else None
    if folder is not None and ((folder / "raw").is_dir() or (folder / "processed").is_dir()):
        return _load_pyg(folder, seed, limit, complete_graph, label_fraction, label_seed)
    source = folder if folder is not None and any(folder.glob(_CSV_PATTERN)) else _qm9pack_folder()
    files = _csv_files(source)
    rows = _read_rows(files)
    splits_ids = _split_ids(len(rows), seed, limit)
    cache_root = Path(cache_dir).expanduser() if cache_dir else Path.home() / ".cache/bayesagg/qm9"
    records = _records(rows, np.concatenate(splits_ids), _cache_folder(files, cache_root), workers)
    failed = [(r, m) for r, m in records.items() if isinstance(m, str)]
    warn_skipped(
        "QM9 molecules that RDKit could not process",
        len(failed),
        [f"row {r} (gdb {rows[r][0]}): {m}" for r, m in sorted(failed)],
        source,
    )
    datasets = []
    for ids in splits_ids:
        kept = [int(r) for r in ids if not isinstance(records[int(r)], str)]
        chosen = [_with_features(records[r], features) for r in kept]  # type: ignore[arg-type]
        datasets.append(QM9Graphs(chosen, [int(rows[r][0]) for r in kept], complete_graph))
    train = datasets[0]
    keep = kept_labels([str(int(i)) for i in train.ids], 11, label_fraction, label_seed)
    _hide(train.y, torch.from_numpy(keep), str(source), label_fraction)
    return Splits(*datasets)


def _hide(y: Tensor, keep: Tensor, where: str, fraction: float) -> None:
    """Set the training targets ``y`` [N, 11] that ``keep`` drops to NaN, in place; log counts."""
    say_kept_labels(f"QM9 ({where})", TARGETS, keep.numpy(), fraction)
    y[~keep] = float("nan")


def _with_features(record: dict[str, np.ndarray], features: str) -> dict[str, np.ndarray]:
    """Return ``record`` with ``bond`` types (0-3) and node features for the chosen convention."""
    out = dict(record)
    if features == "pyg":
        out["x"] = record["x"].copy()
        out["x"][:, 6:10] = 0.0
        out["bond"] = record["kekule"]
    else:
        out["bond"] = np.where(record["aromatic"], 3, record["kekule"]).astype(np.int8)
    return out


def _load_pyg(
    folder: Path,
    seed: int,
    limit: int | None,
    complete_graph: bool,
    label_fraction: float,
    label_seed: int,
) -> Splits:
    QM9 = torch_geometric().datasets.QM9

    view = _PygQM9View(QM9(str(folder)), complete_graph)
    train, val, test = _split_ids(len(view), seed, limit)
    keep = kept_labels([str(int(i)) for i in train], 11, label_fraction, label_seed)
    rows = torch.from_numpy(train)
    hidden = view.y[rows]
    _hide(hidden, torch.from_numpy(keep), str(folder), label_fraction)
    view.y[rows] = hidden
    return Splits(*(Subset(view, np.sort(ids).tolist()) for ids in (train, val, test)))
