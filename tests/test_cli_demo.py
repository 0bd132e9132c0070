"""``bayesagg demo`` end to end on a tiny budget (the real demo uses the same code path)."""

from __future__ import annotations

import importlib.util

import pytest

from bayesagg.app.cli import main
from bayesagg.app.demo import (
    DEMO_EPOCHS,
    DEMO_MOLECULES,
    DEMO_SEED,
    DEMO_WIDTH,
    committed_references,
)


@pytest.mark.slow
def test_demo_prints_a_narrow_table_against_stl_of_the_same_budget(tmp_path, capsys):
    if importlib.util.find_spec("qm9pack") is None:
        pytest.skip("qm9pack is not installed (pip install qm9pack==1.0.3)")
    argv = ["demo", "--molecules", "64", "--epochs", "1", "--out", str(tmp_path), "--no-progress"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    lines = out.rstrip("\n").splitlines()
    assert max(len(line) for line in lines) <= 100
    for name in ("LS", "FAMO", "BayesAgg-MTL"):
        assert f"| {name} |" in out
    # Not the default setting: the demo trained the 11 STL models of this budget itself.
    assert "against STL models trained here on the same subset and budget" in " ".join(lines)
    stl = sorted(p.parent.name for p in tmp_path.glob("qm9/*/stl/seed0/*/result.json"))
    assert len(stl) == 11
    assert "Per-task metrics:" in out and (tmp_path / "report.md").is_file()
    # It ends with one sentence (wrapped at 100 columns) saying what the table shows.
    last = out.rstrip().split("\n\n")[-1].replace("\n", " ")
    assert last.startswith("The table shows that") and last.count(". ") == 0
    assert last.endswith("not evidence of which method is better.")
    # Run again: nothing is recomputed.
    assert main(argv) == 0
    assert capsys.readouterr().err.count("finished, skipped") == 3


def test_committed_references_are_for_exactly_the_default_demo():
    refs = committed_references()
    assert refs["setting"] == {
        "molecules": DEMO_MOLECULES,
        "epochs": DEMO_EPOCHS,
        "seed": DEMO_SEED,
        "width": DEMO_WIDTH,
    }
    assert refs["complete"] and len(refs["values"]) == 11
    command = refs["command"]
    for flag in (
        "--method stl",
        f"--epochs {DEMO_EPOCHS}",
        f"--train-limit {DEMO_MOLECULES}",
        f"--model-option dim={DEMO_WIDTH}",
        f"--seed {DEMO_SEED}",
    ):
        assert flag in command
    # Each value is the STL run's own test metric, one run per task.
    assert sorted(refs["per_seed"]) == sorted(refs["values"])
    for key, value in refs["values"].items():
        assert refs["per_seed"][key] == {str(DEMO_SEED): value}


def test_device_without_gpu_is_a_one_line_error(capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    code = main(["demo", "--device", "cuda", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2
    assert (
        err
        == "bayesagg demo: error: --device cuda: no CUDA GPU is available on this machine; use --device cpu\n"
    )
    code = main(["run", "-b", "qm9", "-m", "ls", "--device", "gpu"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "is not a torch device" in err


def test_default_demo_uses_the_committed_references_and_trains_no_stl(tmp_path, monkeypatch):
    import json

    import bayesagg.app.demo as demo_module

    calls = []

    def fake_compare(config, methods, seeds, **kwargs):
        calls.append((config, tuple(methods), list(seeds)))
        raise KeyboardInterrupt  # stop before training: only the plan is checked here

    monkeypatch.setattr(demo_module, "compare", fake_compare)
    with pytest.raises(KeyboardInterrupt):
        demo_module.demo(out=str(tmp_path), progress=False)
    [(config, methods, seeds)] = calls
    assert methods == demo_module.DEMO_METHODS and "stl" not in methods
    assert config.references == "own" and seeds == [DEMO_SEED]
    own = json.loads(next(tmp_path.rglob("references.json")).read_text())
    assert own["values"] == committed_references()["values"]
    with pytest.raises(KeyboardInterrupt):
        demo_module.demo(out=str(tmp_path / "other"), epochs=2, progress=False)
    assert calls[1][1] == ("stl", *demo_module.DEMO_METHODS)
    assert not list((tmp_path / "other").rglob("references.json"))
