"""scripts/timing/overhead.py: what it times (no timing asserted).

Its rounds must time the state training has after an epoch: every method's ``end_epoch`` has
run once (BayesAgg-MTL's epoch prior fitted) before the first timed step, and not at all with
``--epoch-batches 0``.
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import pytest

from bayesagg.bayes_agg import BayesAgg
from test_runner_fake import install_fake  # noqa: F401 - pytest fixture

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "timing" / "overhead.py"


def _overhead():
    spec = importlib.util.spec_from_file_location("overhead_script", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("epoch_batches", [0, 3])
def test_rounds_follow_one_epoch_ended_by_end_epoch(
    install_fake,  # noqa: F811
    monkeypatch,
    epoch_batches,
) -> None:
    overhead = _overhead()
    calls: list[bool] = []
    original = BayesAgg.end_epoch

    def end_epoch(self, *args, **kwargs):
        calls.append(self.step > 0)  # after the epoch's steps
        return original(self, *args, **kwargs)

    monkeypatch.setattr(BayesAgg, "end_epoch", end_epoch)
    args = argparse.Namespace(
        protocol="smoke",
        seed=0,
        data_dir=None,
        bayesagg_hparams={},
        rounds=1,
        steps=1,
        warmup=1,
        max_ratio=float("inf"),
        epoch_batches=epoch_batches,
    )
    spec = overhead.registry.get("fake")
    protocol = spec.protocol("smoke")
    batches = overhead.training_batches(spec, protocol, max(2, epoch_batches), 0, None)
    row = overhead.compare("fake", "bayesagg", batches, args)
    assert row["ratio"] > 0
    if epoch_batches:
        assert calls == [True] and row["epoch_end"] > 0
    else:
        assert calls == [] and row["epoch_end"] is None
