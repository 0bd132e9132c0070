"""The training loop applies a protocol's recipe: clipping, drop_last, Adam's two groups, the
optimiser reset option, and BayesAgg-MTL's diagnostics (which must not change training)."""

from __future__ import annotations

import copy
import csv
import math
from dataclasses import replace

import pytest
import torch
from torch import nn

from bayesagg import BayesAgg, Binary, Multiclass, Regression
from bayesagg.benchmarks import registry
from bayesagg.benchmarks.registry import MultiTaskModel, Protocol, linear_heads
from bayesagg.diagnostics import TrainingDiagnostics
from bayesagg.methods import bayesagg_mtl, create
from bayesagg.methods.bayesagg_mtl import reset_optimizer_state
from bayesagg.runner import RunConfig, run
from bayesagg.runner.clipping import GradientClipping
from bayesagg.runner.train import make_optimizer, training_step
from bayesagg.tasks import task_losses
from test_runner_fake import (
    fake_spec,
    install_fake,  # noqa: F401 - pytest fixture
)

GROUPS = (Regression("r", 2), Binary("b", 2), Multiclass("c", 3))


def _model(seed=0, dim=4):
    torch.manual_seed(seed)
    encoder = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ELU(), nn.Linear(8, dim))
    return MultiTaskModel(encoder, linear_heads(GROUPS, dim), dim)


def _batch(b=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 6, generator=g)
    return x, [
        torch.randn(b, 2, generator=g) * 30,  # large errors: large gradients to clip
        torch.randint(0, 2, (b, 2), generator=g).float(),
        torch.randint(0, 3, (b,), generator=g),
    ]


def _norm(params):
    return math.sqrt(sum(float(p.grad.pow(2).sum()) for p in params if p.grad is not None))


def test_clipping_caps_heads_every_step_and_shared_after_warmup():
    model = _model()
    x, targets = _batch()
    clipping = GradientClipping(heads=0.5, shared=0.1, shared_from=2)
    seen = {}

    class Spy(torch.optim.SGD):
        def step(self, closure=None):
            seen["heads"] = _norm(model.heads.parameters())
            seen["shared"] = _norm(model.encoder.parameters())
            return super().step(closure)

    method = create("ls", num_tasks=5)
    for epoch, shared_clipped in ((0, False), (1, False), (2, True), (7, True)):
        optimizer = Spy(model.parameters(), lr=0.0)
        training_step(model, method, optimizer, GROUPS, x, targets, clip=clipping.for_epoch(epoch))
        # Reference: the unclipped gradient norms of the same step.
        model.zero_grad()
        task_losses(GROUPS, model(x)[1], targets).sum().backward()
        heads_raw, shared_raw = _norm(model.heads.parameters()), _norm(model.encoder.parameters())
        assert heads_raw > 0.5 and shared_raw > 0.1  # the clips bind on this batch
        assert seen["heads"] == pytest.approx(0.5, rel=1e-5)
        expected = 0.1 if shared_clipped else shared_raw
        assert seen["shared"] == pytest.approx(expected, rel=1e-5)
    assert GradientClipping().for_epoch(0) is None
    with pytest.raises(ValueError, match="clip_heads"):
        GradientClipping(heads=0.0)


def test_adam_has_two_groups_at_one_lr_and_weight_decay():
    model = _model()
    protocol = Protocol(name="p", epochs=1, batch_size=2, lr=3e-3, weight_decay=1e-4)
    optimizer = make_optimizer(model, create("ls", num_tasks=5), protocol)
    assert isinstance(optimizer, torch.optim.Adam)  # coupled weight decay (not AdamW)
    encoder, heads = optimizer.param_groups
    assert {id(p) for p in encoder["params"]} == {id(p) for p in model.encoder.parameters()}
    assert {id(p) for p in heads["params"]} == {id(p) for p in model.heads.parameters()}
    for group in (encoder, heads):
        assert (group["lr"], group["weight_decay"]) == (3e-3, 1e-4)
    uw = make_optimizer(model, create("uw", num_tasks=5), protocol)
    assert len(uw.param_groups) == 3 and uw.param_groups[2]["weight_decay"] == 0.0


def test_reset_optimizer_state_restarts_adam_for_those_parameters_only():
    model = _model()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, targets = _batch()
    for _ in range(3):
        optimizer.zero_grad()
        task_losses(GROUPS, model(x)[1], targets).sum().backward()
        optimizer.step()
    encoder = list(model.encoder.parameters())
    assert reset_optimizer_state(optimizer, encoder) == len(encoder)
    optimizer.zero_grad()
    task_losses(GROUPS, model(x)[1], targets).sum().backward()
    optimizer.step()
    assert all(int(optimizer.state[p]["step"]) == 1 for p in encoder)
    assert all(int(optimizer.state[p]["step"]) == 4 for p in model.heads.parameters())


def _register(spec):
    registry.unregister("fake")
    registry.register(spec)


@pytest.mark.parametrize("drop_last, steps", [(False, 2 * 3), (True, 2 * 2)])
def test_protocol_drop_last_drops_the_short_batch(install_fake, tmp_path, drop_last, steps):  # noqa: F811
    protocol = replace(install_fake.protocols["quick"], batch_size=24, drop_last=drop_last)
    _register(fake_spec(protocols={"quick": protocol, "smoke": protocol, "paper": protocol}))
    [result] = run(RunConfig(benchmark="fake", method="ls", out=str(tmp_path)))
    assert result["time_per_step"]["steps"] == steps  # 64 examples, batch 24, 2 epochs


@pytest.mark.parametrize("option", [False, True])
def test_reset_encoder_optimizer_option_resets_when_the_warmup_ends(
    install_fake,  # noqa: F811
    tmp_path,
    monkeypatch,
    option,
):
    calls = []

    def spy(optimizer, params):
        calls.append(len(params))
        return reset_optimizer_state(optimizer, params)

    monkeypatch.setattr(bayesagg_mtl, "reset_optimizer_state", spy)
    config = RunConfig(
        benchmark="fake",
        method="bayesagg",
        hparams={"reset_encoder_optimizer": option},
        out=str(tmp_path),
    )
    run(config)
    # The fake protocol: 2 epochs, warm-up 1, so one reset (at the start of epoch 2).
    assert calls == ([4] if option else [])  # the encoder's 4 parameter tensors


def test_bayesagg_runs_log_diagnostics_that_leave_training_unchanged(
    install_fake,  # noqa: F811
    tmp_path,
    monkeypatch,
):
    config = RunConfig(benchmark="fake", method="bayesagg", out=str(tmp_path / "a"))
    [with_diag] = run(config)
    rows = list(csv.DictReader(next((tmp_path / "a").rglob("epochs.csv")).open()))
    assert len(rows) == 2
    for row in rows:
        assert -1.0 <= float(row["diag/cosine_ls"]) <= 1.0
        for name in ("b", "c"):
            assert float(row[f"diag/head_distance/{name}"]) >= 0.0
            assert float(row[f"diag/loss_live/{name}"]) > 0.0
        assert float(row["diag/batches"]) == 4
    assert [float(r["diag/in_warmup"]) for r in rows] == [1.0, 0.0]
    # Without the diagnostics, the same run gives the very same numbers.
    monkeypatch.setattr(TrainingDiagnostics, "for_method", classmethod(lambda cls, m: None))
    [plain] = run(config.with_(out=str(tmp_path / "b")))
    assert plain["test"] == with_diag["test"] and plain["val"] == with_diag["val"]
    assert plain["weights_per_epoch"] == with_diag["weights_per_epoch"]
    rows = list(csv.DictReader(next((tmp_path / "b").rglob("epochs.csv")).open()))
    assert not any(k.startswith("diag/") for k in rows[0])


def test_diagnostics_measure_the_gradients_bayesagg_and_ls_send():
    """cosine_ls = cos(encoder grad of BayesAgg's real backward, encoder grad of sum losses)."""
    model = _model().double()
    x, targets = _batch()
    x = x.double()
    targets = [targets[0].double(), targets[1].double(), targets[2]]
    agg = BayesAgg(GROUPS, generator=torch.Generator().manual_seed(0), num_samples=64)
    probe = TrainingDiagnostics(agg, batches=1)
    probe.start_epoch(1)
    assert probe.due(0)
    buffers = [b.clone() for b in model.buffers()]
    rng = torch.get_rng_state()
    values = probe.measure(model, GROUPS, x, targets)
    # No side effect: BatchNorm statistics, RNG, BayesAgg's counters and buffers.
    assert all(torch.equal(a, b) for a, b in zip(buffers, model.buffers(), strict=True))
    assert torch.equal(rng, torch.get_rng_state())
    assert agg.step == 0 and agg.prior.num_examples == 0

    ours = copy.deepcopy(model)
    agg_copy = BayesAgg(GROUPS, generator=torch.Generator().manual_seed(0), num_samples=64)
    h, _ = ours(x)
    agg_copy.backward(h, list(ours.heads), targets)
    g_ours = torch.cat([p.grad.reshape(-1) for p in ours.encoder.parameters()])
    ls = copy.deepcopy(model)
    task_losses(GROUPS, ls(x)[1], targets).sum().backward()
    g_ls = torch.cat([p.grad.reshape(-1) for p in ls.encoder.parameters()])
    expected = float(torch.nn.functional.cosine_similarity(g_ours, g_ls, dim=0))
    assert values["cosine_ls"] == pytest.approx(expected, abs=1e-10)
    # Before any refit the prior is N(0, gamma I): its mean is at distance ||theta||.
    assert values["prior_distance/b"] == pytest.approx(1.0)
    # The loss at the live head: the 3-class head on the same (train-mode) features.
    with torch.no_grad():
        h, outputs = copy.deepcopy(model)(x)
    live = nn.functional.cross_entropy(outputs[2], targets[2])
    assert values["loss_live/c"] == pytest.approx(float(live), rel=1e-10)
    columns = probe.end_epoch()
    assert columns["diag/cosine_ls"] == values["cosine_ls"] and columns["diag/batches"] == 1


def test_diagnostics_report_how_many_regression_weights_the_full_data_fit_determines():
    # Reference: PRML Eq. 3.91 from the eigenvalues of the epoch's H^T H / sigma^2 (no bias
    # column: regression_bias=False), prior precision 1/gamma, in float64.
    model = _model().double()
    x, targets = _batch(b=32)
    x = x.double()
    targets = [targets[0].double(), targets[1].double(), targets[2]]
    agg = BayesAgg(
        GROUPS,
        gamma=1e-2,
        noise_var=2.0,
        regression_bias=False,
        generator=torch.Generator().manual_seed(0),
        num_samples=16,
    )
    probe = TrainingDiagnostics(agg, batches=1)
    probe.start_epoch(1)
    assert "diag/regression_dof/r" not in probe.end_epoch()  # no full-data fit yet
    h, _ = model(x)
    agg.backward(h, list(model.heads), targets)
    agg.end_epoch(list(model.heads))
    row = probe.end_epoch()
    eig = torch.linalg.eigvalsh(h.detach().T @ h.detach() / 2.0).clamp_min(0)
    expected = float((eig / (eig + 1e2)).sum())
    assert 0.0 < expected < 4.0  # between "the prior decides" and "the data decide"
    assert row["diag/regression_dof/r"] == pytest.approx(expected, rel=1e-8)
    assert not any(
        k.startswith("diag/regression_dof/") and k != "diag/regression_dof/r" for k in row
    )
    assert row["diag/regression_prior_precision/r"] == pytest.approx(1e2)
    assert row["diag/regression_noise_precision/r"] == pytest.approx(0.5)


def test_diagnostics_report_the_evidence_maximiser_of_the_regression_fit():
    # Reference: the stationarity conditions of the evidence (PRML Eqs. 3.91-3.95), by hand.
    model = _model().double()
    x, targets = _batch(b=32)
    x = x.double()
    targets = [targets[0].double(), targets[1].double(), targets[2]]
    agg = BayesAgg(GROUPS, regression_bias=False, regression_prior="evidence", num_samples=16)
    probe = TrainingDiagnostics(agg, batches=1)
    probe.start_epoch(1)
    h, _ = model(x)
    # Targets with a linear signal in the features (an untrained model's features carry none
    # for random targets, and the evidence then has no finite maximiser).
    g = torch.Generator().manual_seed(3)
    w = torch.randn(h.shape[1], targets[0].shape[1], generator=g, dtype=h.dtype)
    signal = h.detach() @ w
    targets[0] = signal / signal.std() + 0.3 * torch.randn(signal.shape, generator=g, dtype=h.dtype)
    agg.backward(h, list(model.heads), targets)
    agg.end_epoch(list(model.heads))
    row = probe.end_epoch()
    a = row["diag/regression_prior_precision/r"]
    b = row["diag/regression_noise_precision/r"]
    hh, y = h.detach(), targets[0]
    eig = torch.linalg.eigvalsh(b * hh.T @ hh).clamp_min(0)
    g = float((eig / (eig + a)).sum())
    m = torch.linalg.solve(hh.T @ hh + (a / b) * torch.eye(hh.shape[1], dtype=hh.dtype), hh.T @ y)
    outputs = y.shape[1]
    assert row["diag/regression_dof/r"] == pytest.approx(g, rel=1e-6)
    assert a == pytest.approx(outputs * g / float(m.square().sum()), rel=1e-6)
    assert b == pytest.approx(outputs * (32 - g) / float((y - hh @ m).square().sum()), rel=1e-6)


@pytest.mark.parametrize("method", ["bayesagg", "bayesagg-paper"])
def test_hparams_of_the_adapter_and_of_bayesagg_are_both_accepted(method):
    from bayesagg.runner.config import ConfigError
    from bayesagg.runner.hparams import validate_hparams

    # reset_encoder_optimizer is the adapter's own option, s_regression BayesAgg's.
    validate_hparams(method, {"reset_encoder_optimizer": True, "s_regression": 0.5})
    with pytest.raises(ConfigError, match="has no hyper-parameter 'bogus'"):
        validate_hparams(method, {"bogus": 1})


def test_diagnostics_take_missing_labels():
    """A batch with missing labels: the classification fits of the probe use the labelled rows
    (as BayesAgg-MTL's own fits do), every value is finite, and the live-head loss is the mean
    over the labelled examples."""
    from bayesagg.tasks import MISSING

    model = _model().double()
    x, targets = _batch()
    x = x.double()
    targets = [targets[0].double().clone(), targets[1].double().clone(), targets[2].clone()]
    targets[0][::2] = float("nan")
    targets[1][1::3] = MISSING
    targets[2][:4] = MISSING
    agg = BayesAgg(GROUPS)
    probe = TrainingDiagnostics(agg, batches=1)
    probe.start_epoch(1)
    values = probe.measure(model, GROUPS, x, targets)
    assert all(math.isfinite(v) for v in values.values())
    keep = targets[2] != MISSING
    with torch.no_grad():
        _, outputs = copy.deepcopy(model)(x)
    live = nn.functional.cross_entropy(outputs[2][keep], targets[2][keep])
    assert values["loss_live/c"] == pytest.approx(float(live), rel=1e-10)
