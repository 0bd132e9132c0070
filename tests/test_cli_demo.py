"""``bayesagg demo`` end to end on a tiny budget (the real demo uses the same code path)."""

from __future__ import annotations

import importlib.util

import pytest

from bayesagg.cli import main


@pytest.mark.slow
def test_demo_prints_a_delta_m_table_with_its_budget(tmp_path, capsys):
    if importlib.util.find_spec("qm9pack") is None:
        pytest.skip("qm9pack is not installed (pip install qm9pack==1.0.3)")
    argv = ["demo", "--molecules", "64", "--epochs", "2", "--out", str(tmp_path), "--no-progress"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    for method in ("ls", "nash-mtl", "bayesagg"):
        assert f"| {method} |" in out
    assert "Δm against published STL references: Nash-MTL" in out
    assert "far from them" in out  # the published references are marked as full-data values
    assert "Demo budget: QM9 subset of 64 training" in out
    # Run again: nothing is recomputed.
    assert main(argv) == 0
    assert capsys.readouterr().err.count("finished, skipped") == 3
