"""The ``bayesagg`` command: help, one-line errors (exit code 2), run and report end to end."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bayesagg.app.cli import main
from test_runner_fake import install_fake  # noqa: F401 - pytest fixture


def _error(capsys, argv: list[str]) -> str:
    """Return the stderr of a failing command, checking exit code 2 and a single line."""
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 2, captured
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert "Traceback" not in captured.err
    return lines[0]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["run", "-b", "nope", "-m", "ls"], "unknown benchmark 'nope'; known benchmarks: qm9"),
        (["run", "-b", "fake", "-m", "lss"], "unknown method 'lss'; known methods: ls"),
        (["run", "-b", "fake", "-m", "ls", "--hp", "foo=1"], "has no hyper-parameter 'foo'"),
        (["run", "-b", "fake", "-m", "ls", "--hp", "foo"], "is not of the form key=value"),
        (
            ["run", "-b", "fake", "-m", "bayesagg", "--hp", "s_regression=2"],
            "bad hyper-parameters for method 'bayesagg': s_regression must be in [0, 1]",
        ),
        (
            ["run", "-b", "fake", "-m", "bayesagg", "--hp", "gammma=0.1"],
            "method 'bayesagg' has no hyper-parameter 'gammma'; accepted: classification_heads, eps, gamma",
        ),
        (["run", "-b", "fake", "-m", "stl", "--task", "zz"], "no task 'zz'; tasks: r[0], r[1]"),
        (["run", "-b", "fake", "-m", "ls", "--task", "c"], "--task is only for --method stl"),
        (["run", "-b", "fake", "-m", "ls", "--protocol", "fast"], "invalid choice: 'fast'"),
        (["run", "-b", "fake", "-m", "ls", "--epochs", "0"], "--epochs must be >= 1"),
        (["run", "-b", "fake", "-m", "ls", "--references", "own"], "no STL references"),
        (
            ["run", "-b", "fake", "-m", "ls", "--data-dir", "/missing"],
            "data for 'fake' not found at /missing",
        ),
        (["compare", "-b", "fake", "--methods", "ls,nope"], "unknown method 'nope'"),
        (["compare", "-b", "fake", "--methods", "ls", "--seeds", "a"], "--seeds 'a' is not"),
        (["compare", "-b", "fake", "--methods", "ls", "--hp", "s_regression=1"], "none of"),
        (["report", "/nonexistent/dir"], "results folder /nonexistent/dir does not exist"),
        (["run", "-b", "fake"], "the following arguments are required: --method"),
    ],
)
def test_errors_are_one_line_exit_2(install_fake, capsys, tmp_path, argv, expected):  # noqa: F811
    line = _error(capsys, [*argv, *(["--out", str(tmp_path)] if argv[0] != "report" else [])])
    assert expected in line


def test_missing_real_data_names_the_fix(capsys, tmp_path):
    line = _error(capsys, ["run", "-b", "fashion-mtl", "-m", "ls", "--data-dir", str(tmp_path)])
    assert "fashion-mnist" in line and "--data-dir" in line


@pytest.mark.parametrize("sub", [[], ["run"], ["compare"], ["report"], ["demo"], ["list"]])
def test_help_everywhere(capsys, sub):
    assert main([*sub, "--help"]) == 0
    assert "usage: bayesagg" in capsys.readouterr().out


def test_python_dash_m_and_list():
    out = subprocess.run(
        [sys.executable, "-m", "bayesagg", "list"], capture_output=True, text=True, check=True
    ).stdout
    assert "qm9" in out and "bayesagg" in out and "nash-mtl" in out


def test_run_then_report(install_fake, capsys, tmp_path):  # noqa: F811
    out = str(tmp_path)
    argv = ["run", "-b", "fake", "-m", "ls", "--out", out, "--no-progress", "--hp", "foo=1"]
    assert main(argv[:-2]) == 0
    text = capsys.readouterr().out
    assert "fake ls seed 0" in text and "Δm" in text
    [result] = list(tmp_path.rglob("result.json"))
    data = json.loads(result.read_text())
    assert data["command"].startswith("bayesagg run -b fake -m ls")
    # A second identical run is not recomputed.
    assert main(argv[:-2]) == 0
    assert "skip (finished)" in capsys.readouterr().err
    assert main(["report", out]) == 0
    assert "| ls |" in capsys.readouterr().out
    assert (tmp_path / "report.md").is_file()


def test_execution_options_data_parallel_only_where_runs_are_planned():
    # run/compare/sweep take --nproc (data-parallel processes); demo takes the other execution
    # options but not --nproc.
    from bayesagg.app.cli import _build_parser

    parser = _build_parser()
    argv = ["run", "-b", "qm9", "-m", "ls", "--nproc", "2", "--threads", "1", "--device", "cpu"]
    args = parser.parse_args([*argv, "--force", "--no-progress"])
    assert (args.nproc, args.threads, args.device, args.force, args.no_progress) == (
        2,
        1,
        "cpu",
        True,
        True,
    )
    demo = parser.parse_args(["demo", "--threads", "3", "--force"])
    assert (demo.threads, demo.force, demo.no_progress, demo.device) == (3, True, False, "cpu")
    with pytest.raises(SystemExit):
        parser.parse_args(["demo", "--nproc", "2"])
