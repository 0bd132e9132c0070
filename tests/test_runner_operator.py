"""Operator faults: bad flags refused before training, one process per run, divergence,
stale temporary files, file modes, epoch wording, dead sweep trials (synthetic benchmark)."""

from __future__ import annotations

import importlib
import json
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bayesagg.app.cli import main
from bayesagg.runner import ConfigError, RunConfig, plan
from bayesagg.runner.checkpoint import Checkpoint, Progress
from bayesagg.runner.lock import LOCK_FILE, RunLock, process_record
from bayesagg.runner.results import run_dir, write_json_atomic
from bayesagg.runner.train import DIVERGENCE_FACTOR, check_divergence
from test_runner_fake import install_fake  # noqa: F401 - pytest fixture

run_module = importlib.import_module("bayesagg.runner.run")  # the package's `run` is the function
FAKE_RUN = ["run", "-b", "fake", "-m", "ls", "--no-progress"]


def _one_line(capsys, argv: list[str], code: int = 2) -> str:
    """Return the one stderr line of a failing command (exit ``code``, no traceback)."""
    assert main(argv) == code
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
    return lines[0]


@pytest.fixture
def no_training(monkeypatch):
    """Fail the test if any training starts."""

    def refuse(**_kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(run_module, "train", refuse)


def _dead_pid() -> int:
    """Return the pid of a process that has ended (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


# -- refused before any training ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--seed", "-1"], "--seed must be an integer from 0 to 4294967295, got -1"),
        (["--seed", str(2**32)], "--seed must be an integer from 0"),
        (["--lr", "nan"], "--lr must be a positive finite number, got nan"),
        (["--lr", "inf"], "--lr must be a positive finite number, got inf"),
        (["--hp", "gamma=inf", "-m", "bayesagg"], "--hp gamma=inf: a numeric setting must be"),
        (["--hp", "c=nan", "-m", "cagrad"], "--hp c=nan: a numeric setting must be finite"),
        (["--model-option", "dim=inf"], "--model-option dim=inf: a numeric setting"),
        (
            ["--hp", "s_regression=abc", "-m", "bayesagg"],
            "--hp s_regression='abc': method 'bayesagg' expects a number",
        ),
        (["--hp", "regression_bias=yes", "-m", "bayesagg"], "expects true or false"),
    ],
)
def test_bad_values_are_refused_before_training(
    install_fake,  # noqa: F811
    no_training,
    capsys,
    tmp_path,
    extra,
    expected,
):
    line = _one_line(capsys, [*FAKE_RUN, "--out", str(tmp_path), *extra])
    assert expected in line
    assert line.count("bad hyper-parameters") <= 1
    assert not list(tmp_path.rglob("*"))  # nothing created


def test_the_method_is_named_once_in_a_constructor_error(install_fake, monkeypatch):  # noqa: F811
    from bayesagg import methods

    def create(name, **_kwargs):
        raise TypeError(f"bad hyper-parameters for method {name!r}: '<=' not supported")

    monkeypatch.setattr(methods, "create", create)
    with pytest.raises(ConfigError) as err:
        plan(RunConfig(benchmark="fake", method="ls"))
    assert str(err.value) == "bad hyper-parameters for method 'ls': '<=' not supported"


def test_an_out_that_cannot_be_written_is_refused_before_training(
    install_fake,  # noqa: F811
    no_training,
    capsys,
    tmp_path,
):
    # a folder no file can be created in (also for root: /proc)
    line = _one_line(capsys, [*FAKE_RUN, "--out", "/proc/bayesagg-runs"])
    assert "cannot write run folder /proc/bayesagg-runs/fake/quick/ls/seed0" in line
    # a file where a folder of the run must go
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    line = _one_line(capsys, [*FAKE_RUN, "--out", str(blocker / "runs")])
    assert f"{blocker} is a file, not a folder" in line
    # a folder where result.json must go: it would fail only after training
    out = tmp_path / "runs"
    (run_dir(RunConfig(benchmark="fake", method="ls", out=str(out))) / "result.json").mkdir(
        parents=True
    )
    line = _one_line(capsys, [*FAKE_RUN, "--out", str(out)])
    assert "result.json is a folder, where the run writes a file" in line
    # compare checks every run folder before its first run trains
    cmp_ = ["compare", "-b", "fake", "--methods", "stl,ls", "--no-progress"]
    line = _one_line(capsys, [*cmp_, "--out", str(out)])
    assert "result.json is a folder" in line
    # sweep: the results folder itself
    line = _one_line(
        capsys,
        ["sweep", "-b", "fake", "-m", "cagrad", "--trials", "1", "--out", str(blocker / "s")],
    )
    assert "is a file, not a folder" in line


def test_a_late_write_error_is_one_line(install_fake, monkeypatch, capsys, tmp_path):  # noqa: F811
    import errno

    def full(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(run_module, "write_json_atomic", full)
    line = _one_line(capsys, [*FAKE_RUN, "--out", str(tmp_path)], code=1)
    assert line == "bayesagg run: failed: [Errno 28] No space left on device"


def test_references_with_a_zero_are_refused_before_training(
    install_fake,  # noqa: F811
    no_training,
    capsys,
    tmp_path,
):
    values = {"r[0]/mae": 0.0, "r[1]/mae": 1.0, "b[0]/auc": 0.8, "b[1]/auc": 0.8}
    refs = tmp_path / "refs.json"
    refs.write_text(
        json.dumps({"values": {**values, "c/accuracy": 0.7}, "kind": "own-stl", "source": "x"})
    )
    line = _one_line(capsys, [*FAKE_RUN, "--out", str(tmp_path), "--references", str(refs)])
    assert "the STL value of 'r[0]/mae' is 0.0: Delta_m divides by it" in line
    refs.write_text(
        json.dumps(
            {
                "values": {**values, "r[0]/mae": 1.0, "c/accuracy": "x"},
                "kind": "own-stl",
                "source": "x",
            }
        )
    )
    line = _one_line(capsys, [*FAKE_RUN, "--out", str(tmp_path), "--references", str(refs)])
    assert "the STL value of 'c/accuracy' is 'x', not a number" in line


def test_nproc_is_bounded_by_the_cores(install_fake, monkeypatch, capsys, tmp_path):  # noqa: F811
    import bayesagg.runner.checks as checks
    import bayesagg.runner.launch as distributed

    monkeypatch.setattr(checks, "available_cores", lambda: 2)

    def no_launch(*_args):
        raise AssertionError("processes started")

    monkeypatch.setattr(distributed, "launch", no_launch)
    line = _one_line(capsys, [*FAKE_RUN, "--out", str(tmp_path), "--nproc", "64"])
    assert "--nproc 64 is more than the 2 CPU cores available here" in line
    assert "use --nproc 2 or fewer" in line
    assert "--nproc must be >= 1" in _one_line(capsys, [*FAKE_RUN, "--nproc", "0"])


# -- one process per run -----------------------------------------------------------------------
def test_a_run_held_by_another_process_is_refused(install_fake, capsys, tmp_path):  # noqa: F811
    folder = run_dir(RunConfig(benchmark="fake", method="ls", out=str(tmp_path)))
    with RunLock(folder, command="bayesagg run (the first one)"):
        line = _one_line(capsys, [*FAKE_RUN, "--out", str(tmp_path)])
        assert f"run folder {folder} is being trained by process {os.getpid()} on " in line
        assert "bayesagg run (the first one)" in line
        assert not (folder / "result.json").exists()  # nothing trained, nothing replaced
    # once the first process is done, the same command runs (and leaves no lock behind)
    assert main([*FAKE_RUN, "--out", str(tmp_path)]) == 0
    assert (folder / "result.json").is_file() and not (folder / LOCK_FILE).exists()


def test_the_lock_of_a_dead_process_is_taken_over(install_fake, capsys, tmp_path):  # noqa: F811
    folder = run_dir(RunConfig(benchmark="fake", method="ls", out=str(tmp_path)))
    folder.mkdir(parents=True)
    stale = {**process_record("bayesagg run (killed)"), "pid": _dead_pid()}
    (folder / LOCK_FILE).write_text(json.dumps(stale))
    assert main([*FAKE_RUN, "--out", str(tmp_path)]) == 0
    err = capsys.readouterr().err
    assert f"taking over the lock of {folder} from process {stale['pid']}" in err
    assert (folder / "result.json").is_file() and not (folder / LOCK_FILE).exists()


def test_stale_temporary_files_are_removed(install_fake, capsys, tmp_path):  # noqa: F811
    folder = run_dir(RunConfig(benchmark="fake", method="ls", out=str(tmp_path)))
    folder.mkdir(parents=True)
    left = [".checkpoint.pt.k3x9.tmp", ".result.json.a1b2.tmp", "epochs.csv.tmp"]
    for name in left:
        (folder / name).write_bytes(b"torn")
    assert main([*FAKE_RUN, "--out", str(tmp_path)]) == 0
    assert sorted(p.name for p in folder.iterdir()) == ["epochs.csv", "result.json"]
    assert "removed 3 temporary file(s)" in capsys.readouterr().err


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_files_of_a_run_follow_the_umask(tmp_path, umask):
    before = os.umask(umask)
    try:
        write_json_atomic(tmp_path / "result.json", {"a": 1})
        model = torch.nn.Linear(2, 1)
        optimizer = torch.optim.Adam(model.parameters())

        class _Method:
            def state_dict(self):
                return {}

        Checkpoint(tmp_path / "checkpoint.pt", {}).save(
            Progress(),
            model=model,
            method=_Method(),
            optimizer=optimizer,
            scheduler=None,
            loader=None,
        )
        (tmp_path / "plain").write_text("")
    finally:
        os.umask(before)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    assert modes == {n: 0o666 & ~umask for n in ("result.json", "checkpoint.pt", "plain")}


# -- divergence --------------------------------------------------------------------------------
def test_a_diverging_run_stops_naming_epoch_and_task(install_fake, capsys, tmp_path):  # noqa: F811
    line = _one_line(capsys, [*FAKE_RUN, "--out", str(tmp_path), "--lr", "1000"], code=1)
    assert line.startswith("bayesagg run: training failed: fake ls seed 0: ")
    assert "training diverged in epoch 1 of 2 (counted from 1, as in epochs.csv): task " in line
    assert "times its first step's" in line and "lower --lr" in line
    assert not list(tmp_path.rglob("result.json"))


def test_check_divergence():
    names = ["a", "b"]
    check_divergence(0, 5, [1.0, 2.0], [1.0, 1.0], names)  # below the limit
    check_divergence(0, 5, [1.0, 2 * DIVERGENCE_FACTOR], None, names)  # no reference yet
    with pytest.raises(FloatingPointError, match=r"epoch 3 of 5 .* task 'b' has mean training"):
        check_divergence(2, 5, [1.0, 1.5 * DIVERGENCE_FACTOR], [1.0, 1.0], names)
    with pytest.raises(FloatingPointError, match="task 'a' has mean training loss nan"):
        check_divergence(0, 5, [float("nan"), 1.0], [1.0, 1.0], names)
    # an STL model watches its own task only: the untrained heads may drift
    check_divergence(0, 5, [1.0, float("inf")], [1.0, 1.0], names, watched=[0])
    # a head that holds a fit (BayesAgg-MTL's regression heads): finiteness only
    check_divergence(0, 5, [1.0, 2 * DIVERGENCE_FACTOR], [1.0, 1.0], names, fitted=[1])
    with pytest.raises(FloatingPointError, match="task 'b' has mean training loss inf"):
        check_divergence(0, 5, [1.0, float("inf")], [1.0, 1.0], names, fitted=[1])


def test_bayesagg_names_the_tasks_whose_heads_hold_a_fit():
    from bayesagg import BayesAgg, Binary, Regression

    groups = [Binary("b", 2), Regression("r", 2)]
    assert BayesAgg(groups).fitted_tasks == [2, 3]
    assert BayesAgg(groups, regression_heads="trained").fitted_tasks == []


def test_library_epochs_are_said_to_count_from_zero(install_fake, monkeypatch, capsys, tmp_path):  # noqa: F811
    def fail(*_args, **_kwargs):
        raise FloatingPointError("BayesAgg step 0 (epoch 0): a non-finite posterior")

    monkeypatch.setattr("bayesagg.runner.train.training_step", fail)
    line = _one_line(capsys, [*FAKE_RUN, "--out", str(tmp_path)], code=1)
    assert (
        "training diverged in epoch 1 of 2 (counted from 1, as in epochs.csv; the library's "
        "message that follows counts from 0), step 1: BayesAgg step 0 (epoch 0)" in line
    )


# -- sweeps: a trial whose process has ended ---------------------------------------------------
def _study_with_a_running_trial(tmp_path: Path, record: dict) -> None:
    """Leave trial 0 of the sweep's study RUNNING at grid point c=0.2, owned by ``record``."""
    optuna = pytest.importorskip("optuna")
    from bayesagg.methods.search_spaces import search_space
    from bayesagg.runner.sweep import PROCESS_ATTR, default_storage
    from bayesagg.tasks import task_kinds
    from test_runner_fake import GROUPS

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    grid = search_space("cagrad", task_kinds(GROUPS)).grid
    study = optuna.create_study(
        study_name="fake-quick-cagrad", storage=default_storage(tmp_path), direction="minimize"
    )
    trial = study.ask({k: optuna.distributions.CategoricalDistribution(v) for k, v in grid.items()})
    trial.set_user_attr(PROCESS_ATTR, record)


def test_a_sweep_rerun_frees_the_trial_of_a_dead_process(install_fake, tmp_path):  # noqa: F811
    from bayesagg.runner.sweep import sweep

    record = {**process_record("bayesagg sweep (killed)"), "pid": _dead_pid()}
    _study_with_a_running_trial(tmp_path, record)
    said: list[str] = []
    summary = sweep(
        RunConfig(benchmark="fake", method="cagrad", out=str(tmp_path)), trials=1, echo=said.append
    )
    assert [t["state"] for t in summary["trials"]] == ["FAIL", "COMPLETE"]
    assert summary["trials"][1]["params"] == {"c": 0.2}  # its point was free again
    assert any(f"its process {record['pid']} has ended" in s for s in said), said


def test_a_sweep_names_the_live_process_of_a_running_trial(install_fake, tmp_path):  # noqa: F811
    from bayesagg.runner.sweep import sweep

    _study_with_a_running_trial(tmp_path, process_record("bayesagg sweep (alive)"))
    said: list[str] = []
    summary = sweep(
        RunConfig(benchmark="fake", method="cagrad", out=str(tmp_path)), trials=1, echo=said.append
    )
    assert [t["state"] for t in summary["trials"]] == ["RUNNING"]
    host = socket.gethostname()
    assert any(
        f"remaining trials are running in another process (trial 0: process {os.getpid()} "
        f"on {host})" in s
        for s in said
    ), said
