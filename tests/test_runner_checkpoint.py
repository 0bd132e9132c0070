"""Runs that survive interruption: a killed run resumes from ``checkpoint.pt`` and ends with
exactly the result of an uninterrupted run (every field but the wall-clock ones)."""

from __future__ import annotations

import csv
import importlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from bayesagg import methods
from bayesagg.runner import RunConfig, compare, run
from bayesagg.runner.checkpoint import CHECKPOINT_FILE, Checkpoint
from test_runner_fake import _available, install_fake  # noqa: F401 - pytest fixture

train_module = importlib.import_module("bayesagg.runner.train")
TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent

#: Fields that measure wall-clock time or say how the run was executed, not what it computed.
WALL_CLOCK = ("started", "wall_seconds", "time_per_step", "resumed_after_epoch", "command")
CSV_WALL_CLOCK = ("train_seconds", "step_ms_median", "data_seconds", "eval_seconds")


def _computed(result: dict[str, Any]) -> dict[str, Any]:
    """Return the result without its wall-clock fields (history rows without train_seconds)."""
    out = {k: v for k, v in result.items() if k not in WALL_CLOCK}
    out["history"] = [{k: v for k, v in h.items() if k != "train_seconds"} for h in out["history"]]
    out["steps"] = {k: result["time_per_step"][k] for k in ("steps", "first_step_timed")}
    return out


def _csv(folder: Path) -> list[dict[str, str]]:
    with open(folder / "epochs.csv") as f:
        return [{k: v for k, v in r.items() if k not in CSV_WALL_CLOCK} for r in csv.DictReader(f)]


def _config(out: Path, method: str = "bayesagg", **changes: Any) -> RunConfig:
    # Three epochs: a warm-up epoch, then two BayesAgg-MTL epochs across the lr milestone.
    return RunConfig(benchmark="fake", method=method, epochs=3, out=str(out), **changes)


def _count_steps(monkeypatch) -> list[int]:
    steps: list[int] = []
    real = train_module.training_step

    def counted(*args, **kwargs):
        steps.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(train_module, "training_step", counted)
    return steps


def _interrupt_after_epoch(monkeypatch, epoch: int) -> None:
    real = Checkpoint.save

    def save_then_stop(self, progress, **states):
        real(self, progress, **states)
        if progress.epoch == epoch:
            raise KeyboardInterrupt

    monkeypatch.setattr(Checkpoint, "save", save_then_stop)


_SCRIPT = """
import sys, time
import torch
torch.set_num_threads({threads})
sys.path.insert(0, {tests!r})
from test_runner_fake import register_fake
register_fake()
import importlib
from bayesagg.runner import RunConfig, run
from bayesagg.runner.checkpoint import Checkpoint
train_module = importlib.import_module("bayesagg.runner.train")
saved = []
real_save = Checkpoint.save
def save(self, progress, **states):
    real_save(self, progress, **states)
    saved.append(progress.epoch)
Checkpoint.save = save
real_step = train_module.training_step
after = []
def step(*args, **kwargs):
    out = real_step(*args, **kwargs)
    if saved:
        after.append(1)
        if len(after) == 2:  # two steps into epoch 2: model, optimiser and data order moved on
            print("READY", flush=True)
            time.sleep(600)
    return out
train_module.training_step = step
run(RunConfig(benchmark="fake", method="bayesagg", epochs=3, out={out!r}))
print("FINISHED", flush=True)
"""


@pytest.mark.slow
def test_sigkilled_run_resumes_to_the_uninterrupted_result(install_fake, tmp_path, monkeypatch):  # noqa: F811
    if _available("bayesagg"):
        pytest.skip(_available("bayesagg"))
    out = tmp_path / "killed"
    script = _SCRIPT.format(threads=torch.get_num_threads(), tests=str(TESTS), out=str(out))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(TESTS)])}
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        line = proc.stdout.readline().strip()
        assert line == "READY", f"the run did not reach epoch 2: {line!r}, {proc.stderr.read()}"
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    folder = out / "fake" / "quick+e3" / "bayesagg" / "seed0"
    assert (folder / CHECKPOINT_FILE).is_file()
    assert not (folder / "result.json").exists()
    assert len(_csv(folder)) == 1  # the killed run's log: its one finished epoch

    steps = _count_steps(monkeypatch)
    [resumed] = run(_config(out))
    assert resumed["resumed_after_epoch"] == 1
    # Only epochs 2 and 3 were trained again (64 examples, batch 16: 4 steps an epoch).
    assert len(steps) == 2 * 4
    assert not (folder / CHECKPOINT_FILE).exists()  # deleted once result.json is written

    [whole] = run(_config(tmp_path / "whole"))
    assert whole["resumed_after_epoch"] is None
    assert _computed(resumed) == _computed(whole)
    assert len(resumed["history"]) == 3
    assert resumed["history"][0]["train_seconds"] > 0  # epoch 1's row came from the checkpoint
    assert _csv(folder) == _csv(tmp_path / "whole" / "fake" / "quick+e3" / "bayesagg" / "seed0")


@pytest.mark.parametrize("name", methods.names())
def test_every_method_resumes_exactly(install_fake, tmp_path, monkeypatch, name):  # noqa: F811
    """Interrupted after epoch 1 (or 2), resumed: the result of an uninterrupted run."""
    if _available(name):
        pytest.skip(_available(name))
    extra = {"task": "b[1]"} if name == "stl" else {}
    [whole] = run(_config(tmp_path / "whole", name, **extra))
    stop = (
        2 if name.startswith("bayesagg") else 1
    )  # BayesAgg-MTL: once after its first prior update
    with monkeypatch.context() as m:
        _interrupt_after_epoch(m, stop)
        with pytest.raises(KeyboardInterrupt):
            run(_config(tmp_path / "cut", name, **extra))
    [resumed] = run(_config(tmp_path / "cut", name, **extra))
    assert resumed["resumed_after_epoch"] == stop
    assert _computed(resumed) == _computed(whole)


def test_checkpoint_of_another_config_or_unreadable_is_ignored(install_fake, tmp_path, monkeypatch):  # noqa: F811
    messages: list[str] = []
    config = _config(tmp_path, "ls")
    with monkeypatch.context() as m:
        _interrupt_after_epoch(m, 1)
        with pytest.raises(KeyboardInterrupt):
            run(config)
    folder = tmp_path / "fake" / "quick+e3" / "ls" / "seed0"
    path = folder / CHECKPOINT_FILE
    # Truncated (a disk that filled up, a copy cut short): reported by name, run starts afresh.
    path.write_bytes(path.read_bytes()[:100])
    steps = _count_steps(monkeypatch)
    [result] = run(config, echo=messages.append)
    assert result["resumed_after_epoch"] is None and len(steps) == 3 * 4
    assert any(f"ignoring unreadable checkpoint {path}" in m for m in messages)
    # A checkpoint written for another configuration is not used either.
    (folder / "result.json").unlink()
    with monkeypatch.context() as m:
        _interrupt_after_epoch(m, 1)
        with pytest.raises(KeyboardInterrupt):
            run(config)
    state = torch.load(path, weights_only=True)
    state["identity"] = {**state["identity"], "task": "another"}
    torch.save(state, path)
    messages.clear()
    [fresh] = run(config, echo=messages.append)
    assert fresh["resumed_after_epoch"] is None
    assert any(f"ignoring {path}: it was written for another configuration" in m for m in messages)


def test_force_discards_the_checkpoint(install_fake, tmp_path, monkeypatch):  # noqa: F811
    config = _config(tmp_path, "ls")
    with monkeypatch.context() as m:
        _interrupt_after_epoch(m, 1)
        with pytest.raises(KeyboardInterrupt):
            run(config)
    [result] = run(config, force=True)
    assert result["resumed_after_epoch"] is None


def test_compare_resumes_from_checkpoints(install_fake, tmp_path, monkeypatch):  # noqa: F811
    base = _config(tmp_path, "ls")
    with monkeypatch.context() as m:
        _interrupt_after_epoch(m, 2)
        with pytest.raises(KeyboardInterrupt):
            compare(base, ["ls", "rlw"], [0])
    steps = _count_steps(monkeypatch)
    compare(base, ["ls", "rlw"], [0])
    # LS resumed for its last epoch, RLW ran whole: 4 + 12 steps.
    assert len(steps) == 4 + 3 * 4
    ls = json.loads((tmp_path / "fake/quick+e3/ls/seed0/result.json").read_text())
    assert ls["resumed_after_epoch"] == 2
