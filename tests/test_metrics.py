"""Metrics against values computed by hand; Delta_m and mean rank against their formulas."""

from __future__ import annotations

import math

import pytest
import torch

from bayesagg.metrics import delta_m, evaluate, higher_is_better, mean_rank
from bayesagg.tasks import Binary, Multiclass, Regression


def test_regression_mae_and_mse_with_scale():
    groups = [Regression("q", 2, labels=("a", "energy"))]
    pred = torch.tensor([[1.0, 0.010], [2.0, 0.020], [4.0, 0.000]])
    target = torch.tensor([[1.5, 0.012], [1.0, 0.020], [4.0, 0.004]])
    out = evaluate(groups, [pred], [target], regression_scale=(1.0, 1000.0))
    # |errors|: a = (0.5, 1, 0) -> 0.5; energy = (0.002, 0, 0.004) eV -> 2 meV.
    assert out["a/mae"] == pytest.approx(0.5)
    assert out["energy/mae"] == pytest.approx(2.0)
    mse = evaluate(groups, [pred], [target], regression_metric="mse", regression_scale=(1, 1000))
    assert mse["a/mse"] == pytest.approx((0.25 + 1.0 + 0.0) / 3)
    assert mse["energy/mse"] == pytest.approx((4.0 + 0.0 + 16.0) / 3)  # (meV)^2


def test_binary_accuracy_auc_calibration():
    groups = [Binary("b", 1)]
    prob = torch.tensor([0.1, 0.45, 0.3, 0.85])
    y = torch.tensor([[0.0], [0.0], [1.0], [1.0]])
    logits = torch.logit(prob).unsqueeze(1)
    out = evaluate(groups, [logits], [y], calibration=True)
    # Threshold 0.5: predictions 0, 0, 0, 1 -> 3 of 4 right.
    assert out["b/accuracy"] == pytest.approx(0.75)
    assert out["b/error"] == pytest.approx(0.25)
    # AUC: of the 4 (positive, negative) pairs, (0.3 vs 0.45) is the only mis-ordered one.
    assert out["b/auc"] == pytest.approx(0.75)
    # Brier: mean (p - y)^2.
    brier = (0.1**2 + 0.45**2 + 0.7**2 + 0.15**2) / 4
    assert out["b/brier"] == pytest.approx(brier)
    # Top-label ECE, 15 bins: confidences max(p, 1 - p) = 0.9, 0.55, 0.7, 0.85 fall in four
    # different bins, one example each, correct = 1, 1, 0, 1 -> (0.1 + 0.45 + 0.7 + 0.15) / 4.
    assert out["b/ece"] == pytest.approx((0.1 + 0.45 + 0.7 + 0.15) / 4, abs=1e-6)


def test_auc_of_one_class_split_is_null_with_warning():
    groups = [Binary("b", 1)]
    with pytest.warns(RuntimeWarning, match="AUC of task 'b' is undefined"):
        out = evaluate(groups, [torch.zeros(3, 1)], [torch.zeros(3, 1)])
    assert out["b/auc"] is None


def test_multiclass_accuracy_brier_and_argmax_accuracy():
    groups = [Multiclass("c", 3)]
    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.5, 0.1, 0.4]]))
    y = torch.tensor([0, 2, 2])
    out = evaluate(groups, [logits], [y], calibration=True)
    assert out["c/accuracy"] == pytest.approx(1 / 3)
    brier = (
        (0.3**2 + 0.2**2 + 0.1**2) + (0.1**2 + 0.6**2 + 0.7**2) + (0.5**2 + 0.1**2 + 0.6**2)
    ) / 3
    assert out["c/brier"] == pytest.approx(brier)
    ece = (abs(0.7 - 1) + abs(0.6 - 0) + abs(0.5 - 0)) / 3  # three bins, one example each
    assert out["c/ece"] == pytest.approx(ece, abs=1e-6)

    ovr = [Binary("k", 3)]
    onehot = torch.nn.functional.one_hot(y, 3).float()
    assert evaluate(ovr, [logits], [onehot], argmax_accuracy=True)["argmax/accuracy"] == (
        pytest.approx(1 / 3)
    )
    with pytest.warns(RuntimeWarning), pytest.raises(ValueError, match="exactly one positive"):
        evaluate(ovr, [logits], [torch.ones(3, 3)], argmax_accuracy=True)


def test_delta_m_formula():
    refs = {"a/mae": 2.0, "b/accuracy": 0.8}
    # a: (3 - 2) / 2 = +0.5 (worse); b: -(0.9 - 0.8) / 0.8 = -0.125 (better) -> mean 18.75 %.
    assert delta_m({"a/mae": 3.0, "b/accuracy": 0.9, "extra/auc": 0.1}, refs) == pytest.approx(
        18.75
    )
    assert delta_m(refs, refs) == 0.0
    with pytest.raises(KeyError, match="b/accuracy"):
        delta_m({"a/mae": 1.0}, refs)
    with pytest.raises(ValueError, match="cannot divide"):
        delta_m({"a/mae": 1.0}, {"a/mae": 0.0})


def test_mean_rank_with_ties_and_directions():
    table = {
        "x": {"a/mae": 1.0, "b/accuracy": 0.9},
        "y": {"a/mae": 2.0, "b/accuracy": 0.9},
        "z": {"a/mae": 3.0, "b/accuracy": 0.5},
    }
    ranks = mean_rank(table, ["a/mae", "b/accuracy"])
    # a (lower better): x 1, y 2, z 3; b (higher better): x, y tie at 1.5, z 3.
    assert ranks == {"x": 1.25, "y": 1.75, "z": 3.0}
    assert mean_rank({"x": {"a/mae": None}}, ["a/mae"]) == {}
    assert higher_is_better("class[0]/auc") and not higher_is_better("T-shirt/top/error")
    assert not math.isnan(ranks["x"])


def test_missing_labels_are_left_out_of_their_tasks_metrics():
    """NaN / -100 targets: each task's metrics equal those of its labelled rows alone."""
    from bayesagg.tasks import MISSING

    g = torch.Generator().manual_seed(0)
    groups = [Regression("r", 2), Binary("b", 2), Multiclass("m", 3)]
    n = 40
    preds = [
        torch.randn(n, 2, generator=g),
        torch.randn(n, 2, generator=g),
        torch.randn(n, 3, generator=g),
    ]
    targets = [
        torch.randn(n, 2, generator=g),
        torch.randint(0, 2, (n, 2), generator=g).float(),
        torch.randint(0, 3, (n,), generator=g),
    ]
    hidden = [t.clone() for t in targets]
    drop_r = torch.rand(n, generator=g) < 0.4
    drop_b = torch.rand(n, generator=g) < 0.3
    drop_m = torch.rand(n, generator=g) < 0.5
    hidden[0][drop_r, 1] = float("nan")
    hidden[1][drop_b, 0] = MISSING
    hidden[2][drop_m] = MISSING
    hidden[1][:, 1] = MISSING  # a task with no label at all in the split
    out = evaluate(groups, preds, hidden, calibration=True)
    # References: the same metrics on the hand-dropped rows, task by task.
    keep_r, keep_b, keep_m = ~drop_r, ~drop_b, ~drop_m
    r1 = evaluate([Regression("r1")], [preds[0][keep_r, 1:]], [targets[0][keep_r, 1:]])
    b0 = evaluate(
        [Binary("b0")], [preds[1][keep_b, :1]], [targets[1][keep_b, :1]], calibration=True
    )
    m = evaluate([Multiclass("m", 3)], [preds[2][keep_m]], [targets[2][keep_m]], calibration=True)
    full = evaluate(groups, preds, targets)
    assert out["r[0]/mae"] == pytest.approx(full["r[0]/mae"])
    assert out["r[1]/mae"] == pytest.approx(r1["r1/mae"])
    for k in ("accuracy", "auc", "ece", "brier"):
        assert out[f"b[0]/{k}"] == pytest.approx(b0[f"b0/{k}"])
        assert out[f"b[1]/{k}"] is None
    for k in ("accuracy", "ece", "brier"):
        assert out[f"m/{k}"] == pytest.approx(m[f"m/{k}"])
