"""``bayesagg sweep``: Optuna studies in a real SQLite file; continuing; two processes at once."""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import re
import sqlite3
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from bayesagg.app.cli import main
from bayesagg.app.report import write_report
from bayesagg.methods.search_spaces import search_space
from bayesagg.runner import ConfigError, RunConfig
from test_runner_fake import install_fake  # noqa: F401 - pytest fixture

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("optuna") is None, reason="optuna not installed ([sweep] extra)"
)
run_module = importlib.import_module("bayesagg.runner.run")
TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


def _trials(db: Path, study: str) -> list[tuple[int, str, dict[str, str]]]:
    """Return (number, state, params) of every trial, read from the SQLite file directly."""
    con = sqlite3.connect(db)
    rows = con.execute(
        "SELECT t.trial_id, t.number, t.state FROM trials t JOIN studies s "
        "ON t.study_id = s.study_id WHERE s.study_name = ? ORDER BY t.number",
        (study,),
    ).fetchall()
    out = []
    for trial_id, number, state in rows:
        params = dict(
            con.execute(
                "SELECT param_name, distribution_json FROM trial_params WHERE trial_id = ?",
                (trial_id,),
            ).fetchall()
        )
        values = dict(
            con.execute(
                "SELECT param_name, param_value FROM trial_params WHERE trial_id = ?",
                (trial_id,),
            ).fetchall()
        )
        # Categorical values are stored as the index of the choice.
        decoded = {
            k: json.loads(params[k])["attributes"]["choices"][int(v)] for k, v in values.items()
        }
        out.append((number, state, decoded))
    con.close()
    return out


def test_search_spaces_are_the_published_grids():
    assert search_space("bayesagg", ["regression"] * 11).grid["s_regression"] == (0.75, 0.85, 0.95)
    utk = search_space("bayesagg", ["regression", "binary", "multiclass"]).grid
    assert utk["s_regression"] == (0.3, 0.5, 0.8)
    assert utk["s_classification"] == (0.005, 0.05, 0.1)
    cifar = search_space("bayesagg", ["binary"] * 20)
    assert cifar.grid["s_classification"] == (5e-2, 5e-3, 5e-4) and len(cifar) == 6
    assert "no gamma grid is published" in cifar.source
    assert 0.4 in search_space("cagrad", []).grid["c"]
    with pytest.raises(KeyError, match="has no published search space"):
        search_space("ls", [])


def test_sweep_continues_and_report_shows_the_chosen_settings(
    install_fake,  # noqa: F811
    tmp_path,
    monkeypatch,
    capsys,
):
    trained = []
    real_train = run_module.train

    def counted(**kwargs):
        trained.append(kwargs["label"])
        return real_train(**kwargs)

    monkeypatch.setattr(run_module, "train", counted)
    argv = ["sweep", "-b", "fake", "-m", "cagrad", "--out", str(tmp_path), "--no-progress"]
    assert main([*argv, "--trials", "2"]) == 0
    db = tmp_path / "sweeps.db"
    study = "fake-quick-cagrad"
    trials = _trials(db, study)
    assert [(n, s) for n, s, _ in trials] == [(0, "COMPLETE"), (1, "COMPLETE")]
    assert [p["c"] for *_, p in trials] == [0.2, 0.4]
    assert len(trained) == 2
    out = capsys.readouterr().out
    assert "Chosen settings: **c=" in out and "2 complete trials of 2 asked" in out
    # Each trial is an ordinary run folder, with the objective = its validation criterion.
    summary = json.loads((tmp_path / "sweeps" / f"{study}.json").read_text())
    for t in summary["trials"]:
        [folder] = t["runs"]
        result = json.loads((Path(folder) / "result.json").read_text())
        assert result["selection"]["value"] == pytest.approx(t["value"])
        assert result["selection"]["criterion"] == summary["criterion"] == "delta_m"
    best = min(summary["trials"], key=lambda t: t["value"])
    assert summary["best"]["params"] == best["params"]

    # The same command with more trials continues the study: one new trial only.
    trained.clear()
    assert main([*argv, "--trials", "3"]) == 0
    assert len(trained) == 1 and len(_trials(db, study)) == 3
    trained.clear()
    assert main([*argv, "--trials", "3"]) == 0
    assert trained == []
    # More trials than grid points: the sweep stops at the end of the grid (4 values of c).
    assert main([*argv, "--trials", "9"]) == 0
    assert (
        len(trained) == 1 and "every point of the 4-point grid is taken" in capsys.readouterr().err
    )
    text = write_report(tmp_path).read_text()
    assert f"### Sweep {study}: cagrad on fake quick" in text
    assert "4 complete trials of 9 asked" in text


def test_a_process_that_raced_past_the_trial_count_steps_aside(
    install_fake,  # noqa: F811
    tmp_path,
    monkeypatch,
):
    """--trials 1, two processes: the second checked for room before the first's trial existed."""
    import bayesagg.runner.sweep as sweep_module

    base = RunConfig(benchmark="fake", method="cagrad", out=str(tmp_path))
    real_room = sweep_module._room
    blind = []

    def room(study):
        if len(blind) == 1:  # the second process's first look: the study still seemed empty
            blind.append(1)
            return [], []
        return real_room(study)

    monkeypatch.setattr(sweep_module, "_room", room)
    trained = []
    real_train = run_module.train

    def train(**kwargs):
        trained.append(kwargs["label"])
        if len(trained) == 1:  # while trial 0 trains, the second process starts
            blind.append(1)
            sweep_module.sweep(base, trials=1)
        return real_train(**kwargs)

    monkeypatch.setattr(run_module, "train", train)
    summary = sweep_module.sweep(base, trials=1)
    trials = _trials(tmp_path / "sweeps.db", "fake-quick-cagrad")
    assert [(n, s) for n, s, _ in trials] == [(0, "COMPLETE"), (1, "PRUNED")]
    assert trials[1][2] == {"c": 0.4}  # it had taken the next free point, not a duplicate
    assert len(trained) == 1  # the surplus trial trained nothing
    assert summary["trials_complete"] == 1


def test_sweep_errors_are_one_line(install_fake, tmp_path, capsys):  # noqa: F811
    base = ["sweep", "-b", "fake", "--out", str(tmp_path), "--trials", "1"]
    assert main([*base, "-m", "ls"]) == 2
    assert "has no published search space" in capsys.readouterr().err
    assert main([*base, "-m", "cagrad", "--hp", "c=0.5"]) == 2
    assert "searched by the sweep" in capsys.readouterr().err
    assert main([*base, "-m", "cagrad", "--storage", "nosuchdb://x"]) == 2
    assert "--storage nosuchdb://x" in capsys.readouterr().err
    from bayesagg.runner.sweep import sweep

    with pytest.raises(ConfigError, match="--trials must be >= 1"):
        sweep(RunConfig(benchmark="fake", method="cagrad", out=str(tmp_path)), trials=0)


_WORKER = """
import sys
sys.path.insert(0, {tests!r})
from test_runner_fake import register_fake
register_fake()
import bayesagg.runner.sweep as sweep_module
real_taken = sweep_module._taken
calls = []
def taken(study, trial_number=None):
    # The first choice of each process sees an empty study, as if both started at the same
    # instant: both take the grid's first point, and the storage must sort it out.
    calls.append(1)
    if trial_number is None and len(calls) == 1:
        return {{}}
    return real_taken(study, trial_number)
sweep_module._taken = taken
from bayesagg.app.cli import main
sys.exit(main(["sweep", "-b", "fake", "-m", "cagrad", "--trials", "4", "--out", {out!r},
               "--storage", {url!r}, "--no-progress"]))
"""


@pytest.mark.slow
def test_two_processes_sharing_a_storage_never_run_a_trial_twice(tmp_path):
    db = tmp_path / "shared.db"
    url = f"sqlite:///{db}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(TESTS)])}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER.format(tests=str(TESTS), out=str(tmp_path), url=url)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(2)
    ]
    logs = []
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        logs.append(err)
    trials = _trials(db, "fake-quick-cagrad")
    complete = [p["c"] for _, s, p in trials if s == "COMPLETE"]
    assert sorted(complete) == [0.2, 0.4, 0.6, 0.8]  # every grid point once
    # Both processes took c=0.2 first: the later trial stepped aside.
    assert any(s == "PRUNED" and p["c"] == 0.2 for _, s, p in trials)
    # Every run folder was trained (result written) by exactly one process, once.
    wrote = Counter(m for log in logs for m in re.findall(r"wrote (\S+result\.json)", log))
    assert len(wrote) == 4 and set(wrote.values()) == {1}


def test_interrupted_sweep_resumes_its_run_from_the_checkpoint(install_fake, tmp_path, monkeypatch):  # noqa: F811
    from bayesagg.runner.checkpoint import Checkpoint
    from bayesagg.runner.sweep import sweep

    base = RunConfig(benchmark="fake", method="cagrad", epochs=3, out=str(tmp_path))
    real_save = Checkpoint.save

    def save_then_stop(self, progress, **states):
        real_save(self, progress, **states)
        if progress.epoch == 1:
            raise KeyboardInterrupt  # Ctrl-C during the first trial's second epoch

    with monkeypatch.context() as m:
        m.setattr(Checkpoint, "save", save_then_stop)
        with pytest.raises(KeyboardInterrupt):
            sweep(base, trials=1)
    summary = sweep(base, trials=1)
    states = [t["state"] for t in summary["trials"]]
    assert states == ["FAIL", "COMPLETE"]  # Optuna failed the cut trial; its point ran again
    [folder] = summary["trials"][1]["runs"]
    result = json.loads((Path(folder) / "result.json").read_text())
    assert result["resumed_after_epoch"] == 1 and result["hparams"] == {"c": 0.2}


_KILLED = """
import sys, time
sys.path.insert(0, {tests!r})
from test_runner_fake import register_fake
register_fake()
from bayesagg.runner import RunConfig
from bayesagg.runner.checkpoint import Checkpoint
from bayesagg.runner.sweep import sweep
real_save = Checkpoint.save
def save(self, progress, **states):
    real_save(self, progress, **states)
    print("READY", flush=True)
    time.sleep(600)  # killed here, after the first checkpoint
Checkpoint.save = save
sweep(RunConfig(benchmark="fake", method="cagrad", epochs=3, out={out!r}), trials=1)
"""


@pytest.mark.slow
def test_trial_of_a_killed_process_is_freed_and_its_run_resumed(tmp_path, monkeypatch):
    import signal
    import time

    import bayesagg.runner.sweep as sweep_module
    from test_runner_fake import register_fake

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(TESTS)])}
    script = _KILLED.format(tests=str(TESTS), out=str(tmp_path))
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        line = proc.stdout.readline().strip()
        assert line == "READY", proc.stderr.read()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    register_fake(lambda name, module: monkeypatch.setitem(sys.modules, name, module))
    try:
        # A short grace period, so that the dead trial's heartbeat is stale after 2 seconds.
        monkeypatch.setattr(sweep_module, "GRACE_SECONDS", 1)
        time.sleep(2)
        base = RunConfig(benchmark="fake", method="cagrad", epochs=3, out=str(tmp_path))
        summary = sweep_module.sweep(base, trials=1)
    finally:
        from bayesagg.benchmarks import registry

        registry.unregister("fake")
    assert [t["state"] for t in summary["trials"]] == ["FAIL", "COMPLETE"]
    assert summary["trials"][0]["params"] == summary["trials"][1]["params"] == {"c": 0.2}
    [folder] = summary["trials"][1]["runs"]
    result = json.loads((Path(folder) / "result.json").read_text())
    assert result["resumed_after_epoch"] == 1
