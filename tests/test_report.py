"""``report``: markdown tables and PNG plots from small result JSON files."""

from __future__ import annotations

import copy
import json

import pytest

from bayesagg.app.report import protocol_report, run_summary, write_report
from bayesagg.runner import ConfigError, RunConfig, run
from test_runner_fake import install_fake  # noqa: F401 - pytest fixture


@pytest.fixture
def results(install_fake, tmp_path):  # noqa: F811
    """Two methods x two seeds of the synthetic benchmark, plus its STL runs (real runs)."""
    base = RunConfig(benchmark="fake", method="ls", out=str(tmp_path))
    ls = run(base)[0]
    # Small hand-made variations of a real result: a second seed and a second method.
    for seed, method, shift in ((1, "ls", 0.1), (0, "rlw", 0.2), (1, "rlw", 0.3)):
        doc = copy.deepcopy(ls)
        doc.update(seed=seed, method=method, method_label=method)
        doc["test"] = {k: (v + shift if v is not None else None) for k, v in ls["test"].items()}
        doc["weights_per_epoch"] = [[0.1, 0.2, 0.3, 0.2, 0.2], [0.3, 0.1, 0.2, 0.2, 0.2]]
        folder = tmp_path / "fake" / "quick" / method / f"seed{seed}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "result.json").write_text(json.dumps(doc))
    return tmp_path, ls


def test_table_values_mean_std_delta_and_rank(results):
    root, ls = results
    text = protocol_report(root / "fake" / "quick", methods=["ls", "rlw"])
    main_table = text.split("\n\n")[2]  # title, protocol note, then the table
    rows = {line.split("|")[1].strip(): line for line in main_table.splitlines()}
    assert set(rows) >= {"method", "ls", "rlw"}
    # r[0]/mae of LS: mean of the two seeds (v and v + 0.1), std over seeds.
    v = ls["test"]["r[0]/mae"]
    cells = [c.strip() for c in rows["ls"].split("|")[2:-1]]
    mean = float(cells[0].split(" ± ")[0])
    assert mean == pytest.approx(v + 0.05, rel=1e-3)
    assert cells[0].split(" ± ")[1] == f"{0.0707106:.2g}"
    # RLW is worse on every lower-is-better metric and better on every higher-is-better one,
    # by the same shifts: with 2 MAE and 3 higher-better metrics, ranks 1 and 2 split evenly.
    header = [c.strip() for c in rows["method"].split("|")[2:-1]]
    mr = header.index("MR ↓")
    assert float(cells[mr]) == pytest.approx((2 * 1 + 3 * 2) / 5)
    assert "Δm against published STL references: made-up test references" in text
    assert "Produced by:\n\n    python: bayesagg.runner.run" in text
    assert "| method | b[0]/brier | b[0]/ece |" in text  # the calibration table


def test_report_writes_markdown_and_pngs(results):
    root, _ = results
    path = write_report(root)
    text = path.read_text()
    assert path == root / "report.md"
    assert "## fake: protocol quick" in text
    pngs = sorted(p.name for p in (root / "fake" / "quick").glob("*.png"))
    assert "validation.png" in pngs and "weights-rlw.png" in pngs
    # Links point from the report to the images next to the runs.
    assert "](fake/quick/weights-rlw.png)" in text
    assert (root / "fake" / "quick" / "weights-rlw.png").read_bytes()[:4] == b"\x89PNG"


def test_summary_and_empty_folder(results, tmp_path_factory):
    _, ls = results
    text = run_summary([ls])
    assert "selected epoch" in text and "Δm" in text and "time per step" in text
    with pytest.raises(ConfigError, match="no finished runs"):
        write_report(tmp_path_factory.mktemp("empty"))


def test_truncated_result_file_is_named_and_treated_as_unfinished(results, capsys):
    root, _ = results
    bad = root / "fake" / "quick" / "rlw" / "seed1" / "result.json"
    bad.write_text(bad.read_text()[:200])  # a copy cut short
    text = protocol_report(root / "fake" / "quick", methods=["ls", "rlw"])
    assert f"- `{bad}`: JSONDecodeError" in text
    rlw_row = text.split("| rlw |")[1].splitlines()[0]
    ls_row = text.split("| ls |")[1].splitlines()[0]
    assert "0,1" in ls_row and "0,1" not in rlw_row  # RLW's seed 1 is left out
    path = write_report(root)
    assert f"`{bad}`" in path.read_text()
    # The command line prints the report, naming the file, instead of a traceback.
    from bayesagg.app.cli import main

    assert main(["report", str(root)]) == 0
    assert f"`{bad}`: JSONDecodeError" in capsys.readouterr().out
    # run() names it and trains that run again.
    messages: list[str] = []
    config = RunConfig(benchmark="fake", method="rlw", seed=1, out=str(root))
    [again] = run(config, echo=messages.append)
    assert any(m.startswith(f"unreadable result file {bad} (JSONDecodeError") for m in messages)
    assert json.loads(bad.read_text())["test"] == again["test"]


def test_commands_differing_in_method_seed_or_task_collapse_to_one_line():
    from bayesagg.app.report import collapse_commands

    base = "bayesagg run -b qm9 --protocol quick --out results"
    commands = [
        f"{base} --method stl --task {t} --seed {s}" for s in (0, 1) for t in ("mu", "alpha")
    ] + [f"{base} --method {m} --seed {s}" for s in (0, 1) for m in ("ls", "uw")]
    commands.append(commands[0])  # the same command twice (an STL run and its resume)
    assert collapse_commands(commands) == [
        f"{base} --method stl --task {{mu,alpha}} --seed {{0,1}}",
        f"{base} --method {{ls,uw}} --seed {{0,1}}",
    ]
    # compare's method lists over the same seeds merge into one compare command.
    compares = [
        f"bayesagg compare -b utkface --methods {m} --seeds {s}"
        for m, s in (("stl,ls,uw", "0,1,2"), ("pcgrad,ls", "0,1,2"), ("uw", "3"))
    ]
    assert collapse_commands(compares) == [
        "bayesagg compare -b utkface --methods stl,ls,uw,pcgrad --seeds 0,1,2",
        "bayesagg compare -b utkface --methods uw --seeds 3",  # not merged: other seeds
    ]
    # Other options that differ stay separate commands.
    assert len(collapse_commands([f"{base} --epochs 3", f"{base} --epochs 4"])) == 2


def test_a_table_without_delta_m_says_why(results):
    root, _ = results
    folder = root / "fake" / "quick"
    text = protocol_report(folder, references="none")
    assert "Δm: not computed (--references none)." in text
    # STL of one of the fake's five tasks so far: the table says which tasks are missing.
    other = root / "other"
    run(RunConfig(benchmark="fake", method="stl", task="r[0]", out=str(other)))
    run(RunConfig(benchmark="fake", method="uw", out=str(other)))
    text = protocol_report(other / "fake" / "quick", references="own")
    assert (
        "Δm: not yet: the STL references in references.json cover 1 of 5 tasks (missing: r[1]/mae,"
        in text
    )
    # The selection rule named is the multi-task runs' one, not the STL model's own task
    # (the STL run is read first: "stl" sorts before "uw").
    assert "best validation delta_m" in text and "best validation r[0]/mae" not in text
