"""The code blocks of docs/bayesagg.md run as written."""

from __future__ import annotations

import re
from pathlib import Path

import torch

DOC = Path(__file__).resolve().parents[1] / "docs" / "bayesagg.md"


def test_the_usage_snippets_run(capsys):
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) == 2
    namespace: dict[str, object] = {}
    torch.manual_seed(0)
    for block in blocks:
        exec(compile(block, str(DOC), "exec"), namespace)
    out = capsys.readouterr().out
    assert out.count("\n") == 4  # three epochs and the fit source
    assert "refit on 256 examples" in out
    predictions = namespace["predictions"]
    assert [tuple(p.shape) for p in predictions] == [(256, 1), (256, 1), (256, 5)]
    assert namespace["method"].name == "bayesagg"
