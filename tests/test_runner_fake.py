"""Every registered method through the runner, on a tiny synthetic benchmark (seconds).

The synthetic benchmark ``fake`` has one task group of each kind (2 regression outputs, 2
binary tasks, one 3-class task, K = 5) over a linear-Gaussian data set, an MLP encoder and one
linear head per group. Other runner tests import :func:`install_fake` from here.
"""

from __future__ import annotations

import importlib
import json
import sys
import types
from collections.abc import Iterator

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from bayesagg import methods
from bayesagg.benchmarks import registry
from bayesagg.benchmarks.registry import Benchmark, MultiTaskModel, Protocol, linear_heads
from bayesagg.benchmarks.splits import Splits
from bayesagg.runner import ConfigError, RunConfig, run
from bayesagg.tasks import Binary, Multiclass, Regression

FAKE = "_bayesagg_tests.fake"  # dotted: the registry imports it as a full module path
GROUPS = (Regression("r", 2), Binary("b", 2), Multiclass("c", 3))


class _Linear(Dataset):
    """Items ``(x [6], (r [2], b [2], c []))`` from fixed random linear maps of x."""

    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        maps = torch.Generator().manual_seed(1234)
        self.x = torch.randn(n, 6, generator=g)
        w = torch.randn(6, 7, generator=maps)
        z = self.x @ w
        self.r = z[:, :2] * 3.0 + 10.0  # offset and scale: the standardisation is exercised
        self.b = (z[:, 2:4] > 0).float()
        self.c = z[:, 4:7].argmax(1)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i], (self.r[i], self.b[i], self.c[i])


def _load(data_dir=None, *, seed: int = 0, limit: int | None = None, sizes=(64, 40, 40)):
    if data_dir is not None and "missing" in str(data_dir):
        from bayesagg.benchmarks.paths import MissingDataError

        raise MissingDataError(f"data for 'fake' not found at {data_dir}: pass --data-dir DIR")
    n = sizes[0] if limit is None else min(limit, sizes[0])
    return Splits(_Linear(n, seed), _Linear(sizes[1], seed + 1), _Linear(sizes[2], seed + 2))


def _build_model(groups, *, dim: int = 8) -> MultiTaskModel:
    encoder = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, dim), nn.ELU())
    return MultiTaskModel(encoder, linear_heads(groups, dim), dim)


def fake_spec(**changes) -> Benchmark:
    protocol = Protocol(
        name="smoke",
        epochs=2,
        batch_size=16,
        scheduler="multistep",
        milestones=(0.6,),
        method_settings={"bayesagg": {"warmup_epochs": 1, "num_samples": 32}},
        note="synthetic test data",
    )
    fields = dict(
        name="fake",
        package=FAKE,
        description="synthetic",
        protocols={"smoke": protocol, "quick": protocol, "paper": protocol},
        selection="delta_m",
        regression_metric="mae",
        binary_metric="auc",
        standardise_targets=True,
        calibration=True,
        published_stl=(1.0, 1.0, 0.8, 0.8, 0.7),
        published_source="made-up test references",
    )
    fields.update(changes)
    return Benchmark(**fields)


def register_fake(setitem=sys.modules.__setitem__) -> Benchmark:
    """Register the synthetic benchmark ``fake`` (also usable in a subprocess, without pytest)."""
    root = types.ModuleType("_bayesagg_tests")
    root.__path__ = []
    pkg = types.ModuleType(FAKE)
    pkg.__path__ = []  # a package, so FAKE.data / FAKE.model resolve from sys.modules
    setitem("_bayesagg_tests", root)
    data = types.ModuleType(f"{FAKE}.data")
    data.GROUPS = GROUPS
    data.load = _load
    model = types.ModuleType(f"{FAKE}.model")
    model.build_model = _build_model
    for name, module in ((FAKE, pkg), (f"{FAKE}.data", data), (f"{FAKE}.model", model)):
        setitem(name, module)
    spec = fake_spec()
    registry.register(spec)
    return spec


@pytest.fixture
def install_fake(monkeypatch) -> Iterator[Benchmark]:
    """Register the synthetic benchmark ``fake`` for one test."""
    yield register_fake(lambda name, module: monkeypatch.setitem(sys.modules, name, module))
    registry.unregister("fake")


def _available(name: str) -> str | None:
    """Return None if method ``name`` imports, else the reason it does not."""
    try:
        methods.method_class(name)
    except ImportError as err:
        return f"method {name!r} not available yet: {err}"
    return None


@pytest.mark.parametrize("name", methods.names())
def test_every_method_runs_on_fake_data(install_fake, tmp_path, name):
    reason = _available(name)
    if reason:
        pytest.skip(reason)
    config = RunConfig(benchmark="fake", method=name, protocol="smoke", out=str(tmp_path))
    if name == "stl":
        config = config.with_(task="b[1]")
    [result] = run(config)
    assert result["method"] == name
    assert 1 <= result["selection"]["epoch"] <= 2
    assert len(result["history"]) == 2
    for key in result["task_metrics"]:
        assert result["test"][key] is not None
    # The regression MAE is in original units (targets scaled by 3): it cannot be ~0 or huge.
    assert 0.0 < result["test"]["r[0]/mae"] < 100.0
    assert result["time_per_step"]["median_ms"] > 0
    if name != "stl":
        assert result["delta_m"]["references"]["kind"] == "published"
        assert isinstance(result["delta_m"]["test"], float)
    folder = tmp_path / "fake" / "smoke"
    csv_lines = next(folder.rglob("epochs.csv")).read_text().splitlines()
    assert len(csv_lines) == 1 + 2
    on_disk = json.loads(next(folder.rglob("result.json")).read_text())
    assert on_disk["test"] == result["test"]


@pytest.mark.parametrize("fit", ["epoch", "refit"])
def test_bayesagg_logs_weights_per_epoch(install_fake, tmp_path, fit):
    reason = _available("bayesagg")
    if reason:
        pytest.skip(reason)
    config = RunConfig(
        benchmark="fake", method="bayesagg", hparams={"regression_fit": fit}, out=str(tmp_path)
    )
    [result] = run(config)
    # The run says which full-data fit its regression heads hold.
    [note] = result["notes"]
    assert ("fit_regression_heads" in note) == (fit == "refit")
    weights = result["weights_per_epoch"]
    assert len(weights) == 2
    after_warmup = [w for w in weights[1:] if w is not None]
    assert after_warmup, "BayesAgg-MTL reported no task weights after its warm-up epoch"
    for w in after_warmup:
        assert len(w) == 5
        # Precision weights sum to one over the tasks, per example and dimension.
        assert sum(w) == pytest.approx(1.0, abs=1e-5)
    assert result["hparams"]["warmup_epochs"] == 1
    # Steps of the warm-up epoch (linear scalarisation) are not timed as BayesAgg-MTL steps.
    assert result["time_per_step"]["first_step_timed"] >= 64 // 16


def test_all_stl_tasks_write_references(install_fake, tmp_path):
    results = run(RunConfig(benchmark="fake", method="stl", out=str(tmp_path)))
    assert [r["stl_task"] for r in results] == ["r[0]", "r[1]", "b[0]", "b[1]", "c"]
    refs = json.loads((tmp_path / "fake" / "quick" / "references.json").read_text())
    assert refs["kind"] == "own-stl" and refs["complete"]
    assert set(refs["values"]) == {"r[0]/mae", "r[1]/mae", "b[0]/auc", "b[1]/auc", "c/accuracy"}
    for r in results:
        assert refs["values"][r["stl_metric"]] == r["test"][r["stl_metric"]]
        assert r["selection"]["criterion"] == r["stl_metric"]
    # A later multi-task run can use them instead of the published values.
    [ls] = run(RunConfig(benchmark="fake", method="ls", references="own", out=str(tmp_path)))
    assert ls["delta_m"]["references"]["kind"] == "own-stl"


def test_partial_stl_references_are_an_error_when_asked_for(install_fake, tmp_path):
    """--references own (or a file) with some task's STL missing names the gaps, not a NaN."""
    run(RunConfig(benchmark="fake", method="stl", task="r[0]", out=str(tmp_path)))
    own = tmp_path / "fake" / "quick" / "references.json"
    for choice in ("own", str(own)):
        with pytest.raises(ConfigError, match=r"cover 1 of 5 tasks of fake \(missing: r\[1\]/mae"):
            run(RunConfig(benchmark="fake", method="ls", references=choice, out=str(tmp_path)))
    # "auto" takes the published values; a report of the partial campaign still renders.
    [ls] = run(RunConfig(benchmark="fake", method="ls", out=str(tmp_path)))
    assert ls["delta_m"]["references"]["kind"] == "published"


def test_same_seed_same_metrics(install_fake, tmp_path):
    """Determinism end to end on CPU: same seed -> identical metrics (also for BayesAgg-MTL)."""
    names = ["ls"] + ([] if _available("bayesagg") else ["bayesagg"])
    first = {}
    for name in names:
        a = run(RunConfig(benchmark="fake", method=name, seed=3, out=str(tmp_path / "a")))[0]
        b = run(RunConfig(benchmark="fake", method=name, seed=3, out=str(tmp_path / "b")))[0]
        assert a["test"] == b["test"] and a["val"] == b["val"]
        assert [h["train_loss"] for h in a["history"]] == [h["train_loss"] for h in b["history"]]
        assert a["weights_per_epoch"] == b["weights_per_epoch"]
        first[name] = a
    c = run(RunConfig(benchmark="fake", method="ls", seed=4, out=str(tmp_path / "c")))[0]
    assert first["ls"]["test"] != c["test"]


def test_runner_module_imports_no_heavy_packages():
    """``import bayesagg.runner`` and the registry stay light (no torch_geometric etc.)."""
    code = (
        "import sys, bayesagg.runner, bayesagg.benchmarks.registry, bayesagg.app.cli;"
        "heavy = [m for m in ('torch_geometric', 'torchvision', 'cvxpy', 'sklearn', "
        "'matplotlib', 'scipy') if m in sys.modules]; print(heavy)"
    )
    import subprocess

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_every_benchmark_spec_is_consistent():
    for name in registry.names():
        spec = registry.get(name)
        assert {"paper", "quick", "smoke"} <= set(spec.protocols)
        # extra named protocols: QM9's revised recipe (NTKMTL, NeurIPS 2025) only
        assert set(spec.protocols) - {"paper", "quick", "smoke"} <= {"revised"}
        for p in spec.protocols.values():
            assert p.epochs >= 1 and p.batch_size >= 1
            assert p.warmup_epochs < p.epochs
        try:
            importlib.import_module(f"bayesagg.benchmarks.{spec.package}.data")
        except ImportError:
            continue  # data loader not written yet
        refs = spec.published_references()
        if refs is not None:
            assert len(refs.values) == len(spec.task_metrics())


def test_qm9_revised_protocol_is_the_paper_recipe_with_batch_60_and_patience_10():
    spec = registry.get("qm9")
    paper, revised = spec.protocols["paper"], spec.protocols["revised"]
    assert (revised.batch_size, revised.plateau_patience) == (60, 10)
    from dataclasses import replace

    same = replace(revised, name="paper", batch_size=120, plateau_patience=5, note=paper.note)
    assert same == paper


def test_epochs_csv_splits_time_into_steps_data_and_evaluation(install_fake, tmp_path):
    # The loader's and the evaluation's share of an epoch are logged per epoch, so that a slow
    # loader shows in epochs.csv instead of passing for a slow method.
    import csv

    run(RunConfig(benchmark="fake", method="ls", protocol="smoke", out=str(tmp_path)))
    with open(next((tmp_path / "fake").rglob("epochs.csv"))) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2
    for row in rows:
        train, data, evaluation = (
            float(row[k]) for k in ("train_seconds", "data_seconds", "eval_seconds")
        )
        assert 0 < data < train  # waiting for batches is part of the epoch's training time
        assert evaluation > 0


def test_a_run_resolves_its_plan_once(install_fake, tmp_path, monkeypatch):
    # Plan, train, write, one way. The registry lookups and the
    # results layout are resolved by plan() once; training and writing read the plan.
    run_module = importlib.import_module("bayesagg.runner.plan")
    calls: dict[str, int] = {}

    def counted(name):
        real = getattr(run_module, name)

        def wrapper(*args, **kwargs):
            calls[name] = calls.get(name, 0) + 1
            return real(*args, **kwargs)

        monkeypatch.setattr(run_module, name, wrapper)

    for name in ("protocol_dir", "method_label", "resolve_references", "effective_protocol"):
        counted(name)
    run(RunConfig(benchmark="fake", method="ls", protocol="smoke", out=str(tmp_path)))
    assert calls == dict.fromkeys(
        ("protocol_dir", "method_label", "resolve_references", "effective_protocol"), 1
    )
    calls.clear()
    run(RunConfig(benchmark="fake", method="stl", protocol="smoke", out=str(tmp_path)))
    assert calls["protocol_dir"] == 1 and calls["method_label"] == 1  # one plan, 5 STL models


def test_a_compare_loads_its_data_once_and_a_lone_run_each_time(
    install_fake, tmp_path, monkeypatch
):
    # The runs of a compare share one SplitsCache; separate run() calls hold no data between
    # them (no module-level cache).
    splits_module = importlib.import_module("bayesagg.runner.splits")
    loads = []
    real = splits_module.load_splits

    def counted(p):
        loads.append(p.config.method)
        return real(p)

    monkeypatch.setattr(splits_module, "load_splits", counted)
    from bayesagg.runner import compare

    compare(RunConfig(benchmark="fake", method="ls", out=str(tmp_path / "c")), ["ls", "rlw"], [0])
    assert loads == ["ls"]
    loads.clear()
    for method in ("ls", "rlw"):
        run(RunConfig(benchmark="fake", method=method, out=str(tmp_path / "r")))
    assert loads == ["ls", "rlw"]


@pytest.mark.parametrize("name", ["ls", "famo", "bayesagg"])
def test_bf16_precision_runs_in_its_own_folder_near_the_fp32_run(install_fake, tmp_path, name):
    """--precision bf16: the training forward passes under bfloat16 autocast; the results go to
    <protocol>+bf16, the fp32 run's identity is unchanged, and the training losses stay within
    10 % of the fp32 run's (bfloat16 keeps 8 bits of mantissa)."""
    base = RunConfig(benchmark="fake", method=name, seed=1, out=str(tmp_path))
    assert "precision" not in base.identity()  # the runs made before the option keep their id
    [fp32] = run(base)
    [bf16] = run(base.with_(precision="bf16"))
    assert (tmp_path / "fake" / "quick+bf16").is_dir()
    assert bf16["config"]["precision"] == "bf16"
    pairs = [
        (x, y)
        for a, b in zip(fp32["history"], bf16["history"], strict=True)
        for x, y in zip(a["train_loss"], b["train_loss"], strict=True)
    ]
    assert all(abs(y - x) <= 0.1 * abs(x) for x, y in pairs)
    assert any(x != y for x, y in pairs)  # the forward passes did run in bfloat16
