"""The code blocks of docs/bayesagg.md run as written, each on its own, and do what they say.

tests/test_docs_snippets.py runs every Python block of the docs as a script; this file looks
closer at the three blocks of docs/bayesagg.md (what they print, what they leave behind).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

DOC = Path(__file__).resolve().parents[1] / "docs" / "bayesagg.md"


def _blocks() -> list[str]:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) == 3
    return blocks


def test_the_complete_loop_runs(capsys):
    namespace: dict[str, object] = {"__name__": "__main__"}
    torch.manual_seed(0)
    exec(compile(_blocks()[0], str(DOC), "exec"), namespace)
    out = capsys.readouterr().out
    assert out.count("\n") == 4  # three epochs and the fit source
    assert "refit on 256 examples" in out
    predictions = namespace["predictions"]
    assert [tuple(p.shape) for p in predictions] == [(256, 1), (256, 1), (256, 5)]


def test_the_registry_loop_runs_on_its_own(capsys):
    namespace: dict[str, object] = {"__name__": "__main__"}  # nothing from the first block
    torch.manual_seed(0)
    exec(compile(_blocks()[1], str(DOC), "exec"), namespace)
    method = namespace["method"]
    assert method.name == "bayesagg"  # type: ignore[attr-defined]
    assert method.aggregator.epoch == 3  # type: ignore[attr-defined]
    assert method.last_weights is not None  # type: ignore[attr-defined]  # BayesAgg steps ran
    assert "full-data posterior mean of epoch 2" in capsys.readouterr().out


def test_the_factored_posterior_block_builds_it():
    namespace: dict[str, object] = {"__name__": "__main__"}
    exec(compile(_blocks()[2], str(DOC), "exec"), namespace)
    agg = namespace["agg"]
    assert agg.multiclass_posterior == "kron"  # type: ignore[attr-defined]
    assert agg.prior.multiclass_posterior == "kron"  # type: ignore[attr-defined]
