"""scripts/timing/kron_stacking.py: both settings timed, and the stacking restored afterwards."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from bayesagg.bayes_agg import BayesAgg
from conftest import real_data_dir

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "timing" / "kron_stacking.py"


@pytest.mark.slow
def test_prints_both_settings_and_restores_the_stacking(capsys, monkeypatch):
    data = real_data_dir("mnist").parent
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    spec = importlib.util.spec_from_file_location("kron_stacking", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    stacks = BayesAgg._kron_stacks
    calls = []
    monkeypatch.setattr(
        BayesAgg, "_kron_stacks", lambda self, *a: calls.append(1) or stacks(self, *a)
    )
    patched = BayesAgg._kron_stacks
    assert module.main(["--data-dir", str(data), "--rounds", "1", "--steps", "1"]) == 0
    out = capsys.readouterr().out
    assert "stacked: whole step / LS" in out and "one at a time: whole step / LS" in out
    assert BayesAgg._kron_stacks is patched  # put back as it was
    assert calls  # the stacked setting went through the stacking
