"""``compare``: finished runs are never recomputed, an interrupted compare resumes."""

from __future__ import annotations

import importlib

import pytest

from bayesagg.app.report import protocol_report
from bayesagg.runner import ConfigError, RunConfig, compare
from bayesagg.runner.compare import split_hparams
from test_runner_fake import install_fake  # noqa: F401 - pytest fixture

# The module, not the function ``bayesagg.runner.run`` that the package re-exports.
run_module = importlib.import_module("bayesagg.runner.run")


def _results(root):
    return {
        p.parent.relative_to(root).as_posix(): p.stat().st_mtime_ns
        for p in root.rglob("result.json")
    }


def test_compare_resumes_after_interruption_and_skips_finished(install_fake, tmp_path, monkeypatch):  # noqa: F811
    base = RunConfig(benchmark="fake", method="ls", out=str(tmp_path))
    real_train = run_module.train
    calls = []

    def interrupted_third(**kwargs):
        calls.append(kwargs["label"])
        if len(calls) == 3:
            # The user stops the compare during the third run, after its first epoch.
            log = kwargs["epoch_log"]
            append = log.append

            def append_then_stop(row):
                append(row)
                raise KeyboardInterrupt

            log.append = append_then_stop
        return real_train(**kwargs)

    monkeypatch.setattr(run_module, "train", interrupted_third)
    with pytest.raises(KeyboardInterrupt):
        compare(base, ["ls", "rlw"], [0, 1])
    done = _results(tmp_path)
    assert sorted(done) == ["fake/quick/ls/seed0", "fake/quick/rlw/seed0"]
    # The interrupted run left a partial log but no result.
    assert (tmp_path / "fake/quick/ls/seed1/epochs.csv").is_file()
    assert not (tmp_path / "fake/quick/ls/seed1/result.json").exists()

    calls.clear()
    folder = compare(base, ["ls", "rlw"], [0, 1])
    assert len(calls) == 2  # only the two unfinished runs
    after = _results(tmp_path)
    assert len(after) == 4
    assert all(after[k] == v for k, v in done.items())  # finished runs untouched

    calls.clear()
    compare(base, ["ls", "rlw"], [0, 1])
    assert calls == []
    compare(base, ["ls"], [1], force=True)
    assert len(calls) == 1

    table = protocol_report(folder, methods=["ls", "rlw"])
    assert "| ls |" in table and "| rlw |" in table
    assert "0,1" in table  # both seeds in every row


def test_changed_config_is_a_different_run(install_fake, tmp_path):  # noqa: F811
    base = RunConfig(benchmark="fake", method="ls", out=str(tmp_path))
    compare(base, ["ls"], [0])
    compare(base.with_(epochs=1), ["ls"], [0])
    assert sorted(_results(tmp_path)) == ["fake/quick+e1/ls/seed0", "fake/quick/ls/seed0"]


def test_hyper_parameters_go_to_the_methods_that_take_them(install_fake):  # noqa: F811
    hp = split_hparams(["ls", "bayesagg"], {"gamma": 0.1, "bayesagg.s_regression": 0.5})
    assert hp == {"ls": {}, "bayesagg": {"gamma": 0.1, "s_regression": 0.5}}
    with pytest.raises(ConfigError, match="not in --methods"):
        split_hparams(["ls"], {"bayesagg.gamma": 0.1})


def test_compare_with_stl_uses_its_own_references(install_fake, tmp_path):  # noqa: F811
    base = RunConfig(benchmark="fake", method="ls", references="own", out=str(tmp_path))
    folder = compare(base, ["ls", "stl"], [0])
    table = protocol_report(folder, references="own")
    assert "Δm against own-stl STL references" in table
    assert "| STL (this project) |" in table and "0 (reference)" in table
