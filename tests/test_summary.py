"""``bayesagg summary``: paired differences to LS with t intervals, ranks, cost (RESULTS.md)."""

from __future__ import annotations

import math
import statistics

import pytest

from bayesagg.app.summary import paired_interval, summarise, write_summary
from bayesagg.metrics import delta_m
from bayesagg.runner import ConfigError, RunConfig
from bayesagg.runner.compare import compare
from test_runner_fake import install_fake  # noqa: F401 - pytest fixture

# Student t quantiles t(0.975, df), from printed tables (not from scipy).
T975 = {1: 12.706, 2: 4.303, 4: 2.776}


def test_paired_interval_is_the_t_interval_of_the_differences() -> None:
    values = {0: 3.0, 1: 5.0, 2: 4.0, 7: 100.0}  # seed 7 has no LS partner: left out
    baseline = {0: 1.0, 1: 2.0, 2: 3.0, 5: -4.0}
    mean, low, high, n = paired_interval(values, baseline)
    diffs = [2.0, 3.0, 1.0]
    half = T975[2] * statistics.stdev(diffs) / math.sqrt(3)
    assert n == 3 and mean == pytest.approx(2.0)
    assert (low, high) == pytest.approx((2.0 - half, 2.0 + half), abs=2e-3)
    assert paired_interval({0: 1.0}, {0: 2.0, 1: 3.0}) is None  # one common seed


def test_summary_of_a_campaign(install_fake, tmp_path) -> None:  # noqa: F811
    base = RunConfig(benchmark="fake", method="ls", protocol="smoke", out=str(tmp_path))
    folder = compare(base, ["stl", "ls", "uw"], [0, 1, 2])
    s = summarise(folder)
    assert set(s.delta) == {"ls", "uw"} and all(len(v) == 3 for v in s.delta.values())
    assert s.runs == 5 * 3 + 2 * 3  # STL models of the fake's 5 tasks, then LS and UW
    # Delta_m as the report computes it, from the test metrics and the folder's STL references.
    import json

    refs = json.loads((folder / "references.json").read_text())["values"]
    result = json.loads(next((folder / "uw").rglob("result.json")).read_text())
    assert s.delta["uw"][result["seed"]] == pytest.approx(delta_m(result["test"], refs))
    interval = paired_interval(s.delta["uw"], s.delta["ls"])
    assert interval is not None and interval[3] == 3
    text = write_summary([folder], tmp_path / "RESULTS.md", plots=True, preamble="Hello.")
    assert text == (tmp_path / "RESULTS.md").read_text()
    assert "Hello." in text and "| uw |" in text and "(baseline)" in text
    assert f"{interval[0]:+.2f} [{interval[1]:+.2f}, {interval[2]:+.2f}]" in text
    assert "## Across benchmarks" in text and "## What the campaign cost" in text
    assert (tmp_path / "results" / "plots" / "paired-fake-smoke.png").is_file()
    assert "](results/plots/paired-fake-smoke.png)" in text


def test_summary_keeps_only_the_chosen_seeds(install_fake, tmp_path) -> None:  # noqa: F811
    base = RunConfig(benchmark="fake", method="ls", protocol="smoke", out=str(tmp_path))
    compare(base, ["stl", "uw"], [0, 1])
    folder = compare(base, ["ls"], [0, 1, 2])
    s = summarise(folder, seeds=[0, 1])
    assert set(s.delta["ls"]) == {0, 1} and set(s.delta["uw"]) == {0, 1}
    assert set(summarise(folder).delta["ls"]) == {0, 1, 2}


def test_two_folders_of_one_benchmark_keep_their_own_sections_columns_and_plots(
    install_fake,  # noqa: F811
    tmp_path,
) -> None:
    # The same benchmark under its protocol and with an override (here 3 epochs): the
    # second folder must not overwrite the first one's ranks, cost row or plot.
    base = RunConfig(benchmark="fake", method="ls", protocol="smoke", out=str(tmp_path))
    plain = compare(base, ["stl", "ls", "uw"], [0, 1])
    longer = compare(RunConfig(**{**base.__dict__, "epochs": 3}), ["stl", "ls", "uw"], [0, 1])
    assert plain != longer and longer.name == "smoke+e3"
    assert summarise(longer).protocol == "smoke+e3"
    text = write_summary([plain, longer], tmp_path / "RESULTS.md", plots=True)
    assert "## fake, protocol `smoke`" in text and "## fake, protocol `smoke+e3`" in text
    assert "| method | fake smoke | fake smoke+e3 | mean rank |" in text
    ranks = (summarise(plain).ranks()["uw"], summarise(longer).ranks()["uw"])
    mean = (ranks[0] + ranks[1]) / 2
    assert f"| uw | {ranks[0]:g} | {ranks[1]:g} | {mean:.2f} | 2 |" in text
    assert "| fake smoke | 14 |" in text and "| fake smoke+e3 | 14 |" in text
    for name in ("paired-fake-smoke.png", "paired-fake-smoke+e3.png"):
        assert (tmp_path / "results" / "plots" / name).is_file() and f"/{name})" in text
    with pytest.raises(ConfigError, match="same benchmark and protocol"):
        write_summary([plain, plain], tmp_path / "again.md", plots=False)
