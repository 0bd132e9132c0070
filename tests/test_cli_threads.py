"""``--threads``: the per-process default, the line that states it, and the recorded count."""

from __future__ import annotations

import json

import pytest
import torch

from bayesagg.app.cli import main
from bayesagg.runner import threads
from test_runner_fake import install_fake  # noqa: F401 - pytest fixture


@pytest.mark.parametrize(
    ("cores", "nproc", "expected"),
    [
        (1, 1, 1),
        (2, 1, 1),  # two busy cores: one thread is far faster than two
        (2, 2, 1),
        (3, 1, 3),
        (4, 2, 1),
        (8, 2, 4),
        (16, 1, 8),  # capped
        (64, 4, 8),
        (3, 4, 1),  # more processes than cores
    ],
)
def test_default_threads_share_the_cores(monkeypatch, cores, nproc, expected):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert threads.default_threads(nproc, cores=cores) == expected


def test_omp_num_threads_wins_when_valid(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert threads.default_threads(1, cores=2) == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "lots")
    assert threads.default_threads(1, cores=2) == 1


def test_suite_runs_on_one_thread():
    """tests/conftest.py sets one thread: the suite's small linear algebra is fastest so."""
    assert torch.get_num_threads() == 1


@pytest.mark.parametrize("command", ["run", "compare", "sweep", "demo"])
def test_every_training_command_has_threads(capsys, command):
    assert main([command, "--help"]) == 0
    assert "--threads N" in capsys.readouterr().out


def _run_fake(out: str) -> list[str]:
    return ["run", "-b", "fake", "-m", "ls", "--protocol", "smoke", "--out", out, "--no-progress"]


def test_chosen_threads_are_used_stated_recorded_and_restored(install_fake, capsys, tmp_path):  # noqa: F811
    before = torch.get_num_threads()
    assert main([*_run_fake(str(tmp_path)), "--threads", "2"]) == 0
    err = capsys.readouterr().err
    assert "threads: 2 per process, 1 process (--threads)" in err
    [result] = tmp_path.rglob("result.json")
    assert json.loads(result.read_text())["torch_threads"] == 2
    assert torch.get_num_threads() == before  # main() leaves the caller's setting alone


def test_default_threads_are_stated_with_the_cores(install_fake, capsys, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "available_cores", lambda: 2)
    assert main(_run_fake(str(tmp_path))) == 0
    err = capsys.readouterr().err
    assert "threads: 1 per process, 1 process (default for 2 cores and 1 process; " in err
    [result] = tmp_path.rglob("result.json")
    assert json.loads(result.read_text())["torch_threads"] == 1


def test_bad_threads_is_one_line_exit_2(install_fake, capsys, tmp_path):  # noqa: F811
    assert main([*_run_fake(str(tmp_path)), "--threads", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["bayesagg run: error: --threads must be >= 1, got 0"]


def test_an_early_error_stays_the_only_line(install_fake, capsys, tmp_path):  # noqa: F811
    """The threads line waits for the command's first status line: errors stay one line."""
    assert main(["run", "-b", "fake", "-m", "nope", "--out", str(tmp_path)]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_threads_benchmark_runs_on_a_tiny_setting(capsys, monkeypatch):
    """scripts/timing/threads.py (named by the README) runs; its figures are not checked here."""
    from conftest import ROOT

    monkeypatch.syspath_prepend(str(ROOT / "scripts" / "timing"))
    import threads as benchmark  # scripts/timing/threads.py

    rows = benchmark.main(
        ["--threads", "1,2", "--repeats", "1", "--warmup", "0", "--sizes", "qm9", "--batch", "8"]
    )
    assert [r["step"] for r in rows] == [
        "bayesagg step qm9",
        "multimnist ls step (B 8)",
        "multimnist bayesagg step (B 8)",
    ]
    assert all(len(r["ms"]) == 2 and len(r["ratios"]) == 1 for r in rows)
    assert "| step | 1 thread (ms) | 2 threads (ms) | 2 / 1 |" in capsys.readouterr().out
    assert torch.get_num_threads() == 1
