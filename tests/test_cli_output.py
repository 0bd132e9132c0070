"""What the commands print and record: nothing a reader could misread.

Sweep messages number trials as the summary does; smoke-protocol numbers say they mean nothing;
a multi-process run says so; progress bars stay out of log files (a plain line per epoch
instead, naming the selected epoch); ``list`` says where each benchmark's data is; recorded
commands carry paths relative to the current directory.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import re
from pathlib import Path

import pytest

from bayesagg.app.cli import main
from bayesagg.app.demo import demo_table
from bayesagg.app.report import protocol_report, run_summary
from bayesagg.runner import RunConfig, run
from test_runner_fake import install_fake  # noqa: F401 - pytest fixture


@pytest.mark.skipif(importlib.util.find_spec("optuna") is None, reason="optuna not installed")
def test_sweep_messages_use_the_summarys_trial_numbers(install_fake, tmp_path, capsys):  # noqa: F811
    argv = ["sweep", "-b", "fake", "-m", "cagrad", "--out", str(tmp_path), "--no-progress"]
    assert main([*argv, "--trials", "2"]) == 0
    err = capsys.readouterr().err
    numbers = [int(n) for n in re.findall(r"\btrial (\d+)", err)]
    summary = json.loads((tmp_path / "sweeps" / "fake-quick-cagrad.json").read_text())
    assert sorted(set(numbers)) == sorted(t["number"] for t in summary["trials"]) == [0, 1]
    assert "trial 0 {'c': 0.2}: training (0 of 2 complete trials so far)" in err
    assert "trial 1 {'c': 0.4}: training (1 of 2 complete trials so far)" in err


def test_smoke_runs_say_their_numbers_mean_nothing(install_fake, tmp_path):  # noqa: F811
    [smoke] = run(RunConfig(benchmark="fake", method="ls", protocol="smoke", out=str(tmp_path)))
    text = run_summary([smoke])
    assert "note: smoke protocol: a pipeline check on a tiny subset and budget" in text
    assert "Smoke protocol: a pipeline check" in protocol_report(tmp_path / "fake" / "smoke")
    quick = copy.deepcopy(smoke)
    quick["protocol"] = "quick"
    assert "smoke protocol" not in run_summary([quick])


def test_a_multi_process_run_says_how_many_processes_ran(install_fake, tmp_path):  # noqa: F811
    [one] = run(RunConfig(benchmark="fake", method="ls", out=str(tmp_path)))
    assert "processes" not in run_summary([one])
    two = {**copy.deepcopy(one), "world_size": 2, "backend": "gloo"}
    assert "  processes: 2 data-parallel (gloo), each on 1/2 of every batch" in run_summary([two])
    path = next(tmp_path.rglob("result.json"))
    path.write_text(json.dumps(two))
    assert "trained on 2 data-parallel processes" in protocol_report(path.parents[2])


def test_progress_off_a_terminal_is_one_plain_line_per_epoch(install_fake, tmp_path, capsys):  # noqa: F811
    run(RunConfig(benchmark="fake", method="ls", out=str(tmp_path)), progress=True)
    err = capsys.readouterr().err  # captured: not a terminal, as when redirected to a log
    assert "\r" not in err and "\x1b" not in err
    lines = [line for line in err.splitlines() if ": epoch " in line]
    assert [line.split(": epoch ")[1].split(",")[0] for line in lines] == ["1/2", "2/2"]
    assert all("(selected so far: " in line and " at epoch " in line for line in lines)


def test_demo_table_says_which_epoch_its_rows_are():
    values = {"r/mae": 1.0, "c/accuracy": 0.5}
    runs = [
        {
            "method": m,
            "stl_task": None,
            "test": {"r/mae": 1.0 + shift, "c/accuracy": 0.5},
            "delta_m": {"references": {"values": values}},
            "selection": {"epoch": 3},
            "split_sizes": {"test": 10},
        }
        for m, shift in (("ls", 0.1), ("famo", 0.2))
    ]
    table, _ = demo_table(runs, ("ls", "famo", "bayesagg"))
    text = " ".join(table.split())
    assert "Selected epoch: the epoch with the best validation Δm" in text
    assert "not the last epoch's" in text
    assert max(len(line) for line in table.splitlines()) <= 100


def test_list_says_where_each_benchmarks_data_is(tmp_path, capsys):
    (tmp_path / "mnist").mkdir()
    assert main(["list", "--data-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    status = {
        lines[i].split()[0]: lines[i + 1].strip()
        for i in range(len(lines) - 1)
        if lines[i + 1].strip().startswith("data: ")
    }
    assert status["multimnist"] == f"data: here, {tmp_path / 'mnist'}"
    assert status["fashion-mtl"].startswith("data: NOT HERE: data for 'fashion-mnist' not found")
    if importlib.util.find_spec("qm9pack") is not None:  # no qm9/ folder: the package
        assert status["qm9"].startswith("data: here, ") and "(the qm9pack package)" in status["qm9"]
    assert len(status) == 7


def test_recorded_commands_carry_paths_relative_to_the_current_directory(
    install_fake,  # noqa: F811
    tmp_path,
    monkeypatch,
    capsys,
):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "campaign" / "runs"
    assert main(["run", "-b", "fake", "-m", "ls", "--out", str(out), "--no-progress"]) == 0
    [path] = list(out.rglob("result.json"))
    assert json.loads(path.read_text())["command"] == (
        "bayesagg run -b fake -m ls --out campaign/runs --no-progress"
    )
    from bayesagg.app.cli import _portable

    elsewhere = str(Path(tmp_path.anchor) / "elsewhere")
    argv = ["run", f"--data-dir={tmp_path}/data", "--out", elsewhere, "--method", str(tmp_path)]
    assert _portable([*argv, "--references", f"{tmp_path}/refs.json"]) == [
        "run",
        "--data-dir=data",
        "--out",
        elsewhere,
        "--method",
        str(tmp_path),
        "--references",
        "refs.json",
    ]
    assert _portable(["run", "--references", "auto"]) == ["run", "--references", "auto"]
    capsys.readouterr()
