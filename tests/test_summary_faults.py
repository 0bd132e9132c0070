"""``summary`` and ``report`` on damaged campaigns: one-line errors, nothing dropped silently.

An empty folder is a one-line error (exit 2); ``--references none`` writes a summary without
Delta_m; a run whose Delta_m is NaN is named and left out of the ranks (it must not make the
other methods' ranks NaN); a ``{}`` or other-schema ``result.json`` is listed, with a count, by
``report`` and ``summary``, and ``run`` says it replaces it.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest

from bayesagg.app.cli import main
from bayesagg.app.report import protocol_report
from bayesagg.app.summary import summarise
from bayesagg.runner import RunConfig, run
from test_runner_fake import install_fake  # noqa: F401 - pytest fixture


@pytest.fixture
def campaign(install_fake, tmp_path):  # noqa: F811
    """LS, RLW and UW x seeds 0-1 of the fake benchmark: one real run, the rest its copies."""
    ls = run(RunConfig(benchmark="fake", method="ls", out=str(tmp_path)))[0]
    folder = tmp_path / "fake" / "quick"
    for seed, method, shift in (
        (1, "ls", 0.1),
        (0, "rlw", 0.2),
        (1, "rlw", 0.3),
        (0, "uw", 0.05),
        (1, "uw", 0.15),
    ):
        doc = copy.deepcopy(ls)
        doc.update(seed=seed, method=method, method_label=method)
        doc["test"] = {k: (v + shift if v is not None else None) for k, v in ls["test"].items()}
        (folder / method / f"seed{seed}").mkdir(parents=True, exist_ok=True)
        (folder / method / f"seed{seed}" / "result.json").write_text(json.dumps(doc))
    return folder


def _summary(capsys, folder: Path, *extra: str) -> tuple[int, str, str]:
    code = main(["summary", str(folder), "--output", str(folder / "R.md"), "--no-plots", *extra])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_summary_help_says_95_percent_once(capsys) -> None:
    assert main(["summary", "--help"]) == 0
    out = capsys.readouterr().out
    assert "95 %" in " ".join(out.split()) and "%%" not in out


def test_summary_with_references_none_has_no_delta_m_and_no_traceback(campaign, capsys):
    code, _, err = _summary(capsys, campaign, "--references", "none")
    assert code == 0, err
    text = (campaign / "R.md").read_text()
    assert "No paired differences or ranks" in text and "`--references none`" in text
    assert "Δm: not computed (--references none)." in text


def test_summary_of_an_empty_folder_is_one_line_exit_2(tmp_path, capsys):
    code, _, err = _summary(capsys, tmp_path)
    assert code == 2
    assert err.strip().splitlines() == [
        f"bayesagg summary: error: no finished runs (result.json) under {tmp_path}"
    ]


def test_a_nan_run_is_named_and_left_out_of_every_rank(campaign, capsys):
    bad = campaign / "uw" / "seed1" / "result.json"
    doc = json.loads(bad.read_text())
    doc["test"]["r[0]/mae"] = math.nan
    bad.write_text(json.dumps(doc))  # json writes NaN: what a diverged run would leave
    s = summarise(campaign, references="published")
    assert set(s.delta["uw"]) == {0} and [p for p, _ in s.non_finite] == [bad]
    assert all(math.isfinite(r) for r in s.ranks().values())
    code, _, err = _summary(capsys, campaign, "--references", "published")
    assert code == 0, err
    text = (campaign / "R.md").read_text()
    assert f"- `{bad}`: uw seed 1: Delta_m is nan" in text
    assert "warning: 1 result file(s) left out" in err and str(bad) in err
    # The per-task table: the other methods' mean ranks stay numbers.
    table = protocol_report(campaign, references="published", methods=["ls", "rlw", "uw"])
    main_table = table.split("\n\n")[2]  # title, recipe, then the table
    rows = {line.split("|")[1].strip(): line.split("|") for line in main_table.splitlines()}
    mr = [c.strip() for c in rows["method"]].index("MR ↓")
    for method in ("ls", "rlw", "uw"):
        assert math.isfinite(float(rows[method][mr])), rows[method]


def test_empty_and_foreign_result_files_are_listed_by_report_and_summary(campaign, capsys):
    empty = campaign / "famo" / "seed0" / "result.json"
    other = campaign / "imtl" / "seed0" / "result.json"
    for path, text in ((empty, "{}"), (other, '{"schema": "someone.else/2"}')):
        path.parent.mkdir(parents=True)
        path.write_text(text)
    assert main(["report", str(campaign.parent.parent)]) == 0
    captured = capsys.readouterr()
    assert "2 result files left out above" in captured.out
    assert f"- `{empty}`: not a run result (no schema" in captured.out
    assert f"- `{other}`: not a run result (schema 'someone.else/2'" in captured.out
    assert "warning: 2 result file(s) left out" in captured.err
    code, _, err = _summary(capsys, campaign, "--references", "published")
    assert code == 0, err
    assert "warning: 2 result file(s) left out" in err and str(empty) in err and str(other) in err
    assert "2 result files left out above" in (campaign / "R.md").read_text()


def test_run_says_it_replaces_a_foreign_result_file(campaign):
    path = campaign / "rlw" / "seed1" / "result.json"
    path.write_text("{}")
    messages: list[str] = []
    config = RunConfig(benchmark="fake", method="rlw", seed=1, out=str(campaign.parent.parent))
    run(config, echo=messages.append)
    assert f"result file {path} is not a run result (no schema" in "\n".join(messages)
    assert any(m.endswith("training again replaces it") for m in messages)
    assert json.loads(path.read_text())["schema"] == "bayesagg.result/1"


def test_the_public_result_reader_names_what_it_cannot_read(campaign):
    from bayesagg.runner.results import UnreadableResult, read_epochs, read_result

    good = campaign / "ls" / "seed0"
    assert read_result(good / "result.json")["method"] == "ls"
    rows = read_epochs(good)  # the run's folder or the file itself
    assert rows == read_epochs(good / "epochs.csv") and [r["epoch"] for r in rows] == ["1", "2"]
    for text, reason in (('{"schema": "other"}', "not a run result"), ("{", "JSONDecodeError")):
        bad = campaign / "rlw" / "seed0" / "result.json"
        bad.write_text(text)
        with pytest.raises(UnreadableResult, match=reason) as err:
            read_result(bad)
        assert err.value.path == bad and str(bad) in str(err.value)
