"""The synthetic example runs with a tiny budget and returns / prints the comparison table."""

from __future__ import annotations

import math

import torch

from bayesagg.examples.synthetic import GROUPS, main, make_data
from bayesagg.tasks import task_names

TINY = ["--epochs", "2", "--train", "256", "--test", "128", "--batch-size", "64", "--threads", "1"]


def test_example_compares_both_methods_on_every_task(capsys):
    threads = torch.get_num_threads()
    try:
        results = main(TINY)
    finally:
        torch.set_num_threads(threads)
    assert [r["method"] for r in results] == ["ls", "bayesagg"]
    expected_keys = [
        f"{name}/{'mse' if name.startswith('regression') else 'accuracy'}"
        for name in task_names(GROUPS)
    ]
    for r in results:
        assert list(r["metrics"]) == expected_keys
        for key, value in r["metrics"].items():
            assert math.isfinite(value)
            if key.endswith("accuracy"):
                assert 0.0 <= value <= 1.0
            else:
                assert value > 0.0
        assert r["steps"] == 2 * 4
        assert r["time_per_step_ms"] > 0
        assert len(r["train_losses"]) == 2 and len(r["train_losses"][0]) == 6
    assert results[1]["regression_fit"].startswith("refit on 256 examples")
    assert len(results[1]["last_weights"]) == 6
    assert abs(sum(results[1]["last_weights"]) - 1) < 1e-5
    # Same initialisation and batches: the first (warm-up, linear scalarisation) epoch is
    # identical for both methods, so are its training losses.
    assert results[0]["train_losses"][0] == results[1]["train_losses"][0]
    out = capsys.readouterr().out
    assert "| task / metric | ls | bayesagg |" in out
    for key in expected_keys:
        assert f"| {key} |" in out
    assert "time per step" in out


def test_generated_data_is_deterministic_and_well_formed():
    a, b = make_data(64, 32, seed=3), make_data(64, 32, seed=3)
    torch.testing.assert_close(a.x_train, b.x_train)
    y_reg, y_bin, y_cls = a.y_train
    assert y_reg.shape == (64, 2) and y_bin.shape == (64, 3) and y_cls.shape == (64,)
    assert set(y_bin.unique().tolist()) <= {0.0, 1.0}
    assert int(y_cls.min()) >= 0 and int(y_cls.max()) < 4
    assert a.x_test.shape == (32, 16)
