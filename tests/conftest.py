"""Shared test fixtures: real-data locations (skip locally when absent, fail under CI)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

# One intra-op thread, the command line's default on a machine with <= 2 cores per process: the
# suite's matrices are small, and on shared cores torch's default team of threads makes such
# steps tens of times slower (scripts/timing/threads.py). Tests that use threads set their own.
torch.set_num_threads(1)


def real_data_dir(name: str) -> Path:
    """Return the real data folder ``name`` (``$BAYESAGG_DATA_DIR`` or ``../shared/data``).

    Absent data skips the test with the reason, except under CI (``CI=true``), where a missing
    data set is a failure.
    """
    env = os.environ.get("BAYESAGG_DATA_DIR")
    root = Path(env) if env else ROOT.parent / "shared" / "data"
    path = root / name
    if not path.is_dir():
        message = f"real data {name!r} not found at {path} (set BAYESAGG_DATA_DIR)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(autouse=True, scope="session")
def _decoded_data_cache(tmp_path_factory: pytest.TempPathFactory):
    """Keep decoded-data caches (UTKFace's, on by default) out of the user's home."""
    previous = os.environ.get("BAYESAGG_CACHE_DIR")
    os.environ["BAYESAGG_CACHE_DIR"] = str(tmp_path_factory.mktemp("bayesagg-cache"))
    yield
    if previous is None:
        os.environ.pop("BAYESAGG_CACHE_DIR", None)
    else:
        os.environ["BAYESAGG_CACHE_DIR"] = previous
