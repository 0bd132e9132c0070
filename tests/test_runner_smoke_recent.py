"""The methods published since 2023 (and their "-ub" variants) on the runnable benchmarks' smoke
protocols, end to end on real data, shrunk to one epoch on a few batches to stay fast.

Every method runs on MultiMNIST (the fastest) and on one of the other three benchmarks, in
turn (method i on the (i mod 3)-th): each method meets a second data path (graphs, a
regression and classification mix, ten binary tasks) and each benchmark a third of the
methods, at a third of the time of every method on every benchmark (the data paths
themselves are covered by tests/test_runner_smoke.py).

Same data sources and skips as tests/test_runner_smoke.py. STCH gets ``warmup_epochs=0`` and
two epochs so that its smooth-Tchebycheff phase (after the nadir epoch) runs too.
"""

from __future__ import annotations

import importlib.util
import json
import math

import pytest

from bayesagg.app.cli import main
from bayesagg.methods import names
from conftest import real_data_dir

NEW = [
    "fairgrad", "config", "dualproj", "excess-mtl", "modo", "sdmgrad", "stch",
    "ntkmtl", "ntkmtl-sr", "go4align",
]  # fmt: skip
METHODS = [m for m in names() if m in NEW or m.endswith("-ub")]
DATA = {"qm9": None, "utkface": "utkface", "multimnist": "mnist", "fashion-mtl": "fashion-mnist"}
OTHERS = ["qm9", "utkface", "fashion-mtl"]


def methods_for(benchmark: str) -> list[str]:
    """All methods on MultiMNIST; on the others, every third method in turn."""
    if benchmark == "multimnist":
        return METHODS
    return METHODS[OTHERS.index(benchmark) :: len(OTHERS)]


SHRINK = ["--epochs", "1", "--train-limit", "32", "--eval-limit", "16", "--batch-size", "16"]
EXTRA = {"stch": ["--epochs", "2", "--hp", "warmup_epochs=0"]}


@pytest.mark.slow
@pytest.mark.parametrize("benchmark", list(DATA))
def test_new_methods_on_the_smoke_protocol(benchmark, tmp_path, capsys):
    folder = DATA[benchmark]
    if folder is None:
        if importlib.util.find_spec("qm9pack") is None:
            pytest.skip("qm9pack is not installed (pip install qm9pack==1.0.3)")
        data_dir = []
    else:
        data_dir = ["--data-dir", str(real_data_dir(folder).parent)]
    assert set(NEW) <= set(METHODS)
    for method in methods_for(benchmark):
        argv = ["run", "-b", benchmark, "-m", method, "--protocol", "smoke", "--no-progress"]
        code = main([*argv, *SHRINK, *EXTRA.get(method, []), "--out", str(tmp_path), *data_dir])
        captured = capsys.readouterr()
        assert code == 0, f"{method}: {captured.err[-2000:]}"
        found = [
            json.loads(p.read_text()) for p in tmp_path.glob(f"{benchmark}/*/*/seed0/result.json")
        ]
        [result] = [r for r in found if r["method"] == method]
        # AUC is null when a tiny test subset has one class only: every defined value is finite
        values = [v for v in result["test"].values() if v is not None]
        assert values and all(math.isfinite(v) for v in values), (method, result["test"])
        if method not in ("stch",):
            assert any(w is not None for w in result["weights_per_epoch"]), method


def test_every_method_meets_multimnist_and_one_other_benchmark():
    """A guard on the rotation: each method runs on exactly two benchmarks, MultiMNIST one."""
    for method in METHODS:
        where = [b for b in DATA if method in methods_for(b)]
        assert len(where) == 2 and "multimnist" in where, (method, where)
