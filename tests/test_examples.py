"""The scripts of examples/ run as a user runs them (``python examples/x.py``), in a process each.

Each is started as a subprocess from an empty folder, with fewer epochs than its default where
that keeps the check meaningful, and must exit 0 without a warning on stderr (a forgotten hook
warns) and print what its docstring promises. The data-parallel example must print the same
numbers on 2 processes as on 1: the point of its sharding and gradient averaging.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"

pytestmark = pytest.mark.slow


def run_example(name: str, *args: str, cwd: Path) -> str:
    """Run ``python examples/<name> args`` from ``cwd``; return its stdout."""
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, f"{name} failed:\n{done.stderr[-4000:]}"
    assert not re.search(r"\w*Warning\b", done.stderr), f"{name} warns:\n{done.stderr[-4000:]}"
    return done.stdout


def metrics(line: str) -> dict[str, float]:
    """``name value, name value, ...`` after the first colon, as a dict."""
    pairs = line.split(":", 1)[1].split(",")
    return {k: float(v) for k, v in (pair.strip().rsplit(" ", 1) for pair in pairs)}


def test_the_readme_links_every_example():
    readme = (ROOT / "README.md").read_text()
    for script in sorted(EXAMPLES.glob("*.py")):
        assert script.name in readme, f"README.md does not mention examples/{script.name}"


def test_bayesagg_own_loop(tmp_path: Path):
    out = run_example(
        "bayesagg_own_loop.py", "--epochs", "4", "--warmup-epochs", "1", cwd=tmp_path
    ).splitlines()
    epochs = [line for line in out if line.startswith("epoch ")]
    assert len(epochs) == 4
    assert "warm-up (LS)" in epochs[0]
    assert all("BayesAgg-MTL" in line for line in epochs[1:])  # warm-up ended as asked
    test_lines = [line for line in out if line.startswith("test, ")]
    assert len(test_lines) == 2 and "refit on 2048 examples" in test_lines[1]
    final = metrics(test_lines[1])
    assert set(final) == {
        "position[0]/mse",
        "position[1]/mse",
        "above_zero/accuracy",
        "sector/accuracy",
    }
    assert final["position[0]/mse"] < 0.5 and final["position[1]/mse"] < 0.5  # targets' var ~0.4
    assert final["above_zero/accuracy"] > 0.7 and final["sector/accuracy"] > 0.4  # chance .5/.2


def test_bayesagg_own_loop_refuses_a_run_that_is_all_warm_up(capsys):
    """--epochs at or below --warmup-epochs would be plain LS: refused before any training."""
    spec = importlib.util.spec_from_file_location(
        "bayesagg_own_loop", EXAMPLES / "bayesagg_own_loop.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with pytest.raises(SystemExit) as stop:
        module.main(["--epochs", "2"])
    assert stop.value.code == 2 and "--warmup-epochs must be" in capsys.readouterr().err


def test_baselines_own_loop(tmp_path: Path):
    names = ["ls", "uw", "famo", "dwa", "mgda-ub", "nash-mtl", "bayesagg"]
    out = run_example(
        "baselines_own_loop.py", "--methods", ",".join(names), "--epochs", "2", cwd=tmp_path
    )
    rows = [line.strip("|").split("|") for line in out.splitlines()[2:]]
    assert [row[0].strip() for row in rows] == names
    for row in rows:
        mse, above, sector = (float(cell) for cell in row[1:])
        assert 0 < mse < 1 and 0 <= above <= 1 and 0 <= sector <= 1


def test_ddp_own_loop_matches_one_process(tmp_path: Path):
    two = run_example("ddp_own_loop.py", "--nproc", "2", "--epochs", "2", cwd=tmp_path)
    one = run_example("ddp_own_loop.py", "--nproc", "1", "--epochs", "2", cwd=tmp_path)
    assert two.splitlines()[0] == "2 process(es), gloo, method bayesagg"
    lines_two, lines_one = two.splitlines()[1:], one.splitlines()[1:]
    assert len(lines_two) == len(lines_one) == 3  # 2 epochs and the test metrics
    for a, b in zip(lines_two, lines_one, strict=True):
        got, expected = metrics(a), metrics(b)
        assert got.keys() == expected.keys()
        for key in got:
            assert got[key] == pytest.approx(expected[key], abs=2e-4), (a, b)
