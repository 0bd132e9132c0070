"""``bayesagg run --protocol smoke`` end to end on every runnable benchmark's real data.

QM9 comes from PyPI qm9pack (no data directory); UTKFace, MultiMNIST and Fashion-MTL from
``tests/conftest.py``'s ``real_data_dir`` (skipped locally when absent, failed under CI).
Each benchmark runs linear scalarisation, MGDA-UB and BayesAgg-MTL on a few hundred examples.
"""

from __future__ import annotations

import importlib.util
import json

import pytest

from bayesagg.app.cli import main
from conftest import real_data_dir

METHODS = ("ls", "mgda-ub", "bayesagg")
DATA = {"qm9": None, "utkface": "utkface", "multimnist": "mnist", "fashion-mtl": "fashion-mnist"}


@pytest.mark.slow
@pytest.mark.parametrize("benchmark", list(DATA))
def test_smoke_protocol_end_to_end(benchmark, tmp_path, capsys):
    folder = DATA[benchmark]
    if folder is None:
        if importlib.util.find_spec("qm9pack") is None:
            pytest.skip("qm9pack is not installed (pip install qm9pack==1.0.3)")
        data_dir = []
    else:
        data_dir = ["--data-dir", str(real_data_dir(folder).parent)]
    for method in METHODS:
        argv = ["run", "-b", benchmark, "-m", method, "--protocol", "smoke", "--no-progress"]
        code = main([*argv, "--out", str(tmp_path), *data_dir])
        captured = capsys.readouterr()
        assert code == 0, captured.err[-2000:]
        [path] = list((tmp_path / benchmark / "smoke").glob(f"{method}/seed0/result.json"))
        result = json.loads(path.read_text())
        assert result["protocol"] == "smoke" and result["method"] == method
        for key in result["task_metrics"]:
            assert result["test"][key] is not None, key
        assert result["time_per_step"]["median_ms"] > 0
        if benchmark in ("qm9", "utkface"):
            # Published STL references exist: Delta_m is computed and says where they come from.
            assert isinstance(result["delta_m"]["test"], float)
            assert result["delta_m"]["references"]["kind"] == "published"
        if method == "bayesagg":
            assert any(w is not None for w in result["weights_per_epoch"])
        header = (path.parent / "epochs.csv").read_text().splitlines()[0]
        assert header.startswith("epoch,lr,")
