"""Checks made before any data loads or any training starts, each failing in one line.

A run that trains for an hour and then cannot write its result (a value JSON cannot hold, a
folder it may not write, a reference Delta_m divides by) is worse than one that refuses at
once: every rerun resumes into the same crash. The checks here look at the inputs and at the
places a run will write, and raise :class:`~bayesagg.runner.config.ConfigError` (the command
line prints it as one line, exit code 2) naming what is wrong and how to fix it.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from bayesagg.runner.config import ConfigError

__all__ = [
    "MAX_SEED",
    "available_cores",
    "check_all_writable",
    "check_finite_options",
    "check_nproc",
    "check_seed",
    "check_writable",
]

#: The largest seed: NumPy's global generator (``np.random.seed``) takes 32-bit seeds.
MAX_SEED = 2**32 - 1

#: The files a run writes into its folder: each must be a file (or absent), never a folder.
_RUN_FILES = ("result.json", "epochs.csv", "checkpoint.pt")


def check_seed(seed: int, flag: str = "--seed") -> None:
    """Raise ConfigError unless ``seed`` is an integer in [0, 2**32 - 1].

    NumPy's generators reject negative seeds, and only deep in data loading; a seed out of
    range is refused here instead.
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise ConfigError(f"{flag} must be an integer from 0 to {MAX_SEED}, got {seed!r}")


def check_finite_options(values: Mapping[str, Any], flag: str) -> None:
    """Raise ConfigError if a numeric value of ``--hp`` (or another option) is NaN or infinite.

    Every option is written to ``result.json``, which holds strict JSON (no NaN or Infinity):
    a run given ``gamma=inf`` would train and then fail to write its result, and each rerun
    would resume into the same failure.
    """
    for key, value in values.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(
                f"{flag} {key}={value}: a numeric setting must be finite (NaN and infinity "
                "cannot be trained with, nor written to result.json)"
            )


def available_cores() -> int:
    """Return the CPU cores this process may run on (its affinity mask, else all of them)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows: no affinity masks
        return os.cpu_count() or 1


def check_nproc(nproc: int, device: str = "cpu") -> None:
    """Raise ConfigError unless ``--nproc`` fits this machine: at most one process per core
    (per GPU with ``--device cuda``).

    Each process holds its own model, data and optimiser: processes beyond the cores do no
    more work in the same time, they only multiply the memory (64 processes on 2 cores took
    15 GB) and the contention.
    """
    if nproc < 1:
        raise ConfigError(f"--nproc must be >= 1, got {nproc}")
    if nproc == 1:
        return
    if device.startswith("cuda"):
        import torch

        gpus = torch.cuda.device_count()
        if nproc > gpus:
            raise ConfigError(
                f"--nproc {nproc} with --device cuda needs {nproc} GPUs (one per process); "
                f"this machine has {gpus}: use --nproc {max(gpus, 1)} or fewer"
            )
        return
    cores = available_cores()
    if nproc > cores:
        raise ConfigError(
            f"--nproc {nproc} is more than the {cores} CPU cores available here: each process "
            "needs a core of its own, more only add memory; use --nproc "
            f"{cores} or fewer"
        )


def _first_existing(path: Path) -> Path:
    """Return ``path`` or its nearest ancestor that exists (as anything)."""
    for candidate in (path, *path.parents):
        if os.path.lexists(candidate):
            return candidate
    return Path(path.anchor or ".")


def check_writable(folder: str | os.PathLike[str], what: str = "run folder") -> None:
    """Raise ConfigError unless a run could create ``folder`` and write its files there.

    Checked by doing, not by permission bits (which root ignores and a read-only mount does
    not show): the nearest existing ancestor must be a folder in which a file can be created
    (the test file is removed at once). Nothing is created when the check passes, so empty
    folders are not left behind. The run's own files (result.json, epochs.csv, checkpoint.pt)
    must not be folders.
    """
    folder = Path(folder)
    existing = _first_existing(folder)
    if not existing.is_dir():
        raise ConfigError(
            f"cannot create {what} {folder}: {existing} is a file, not a folder; "
            "move it away or choose another --out"
        )
    for name in _RUN_FILES:
        target = folder / name
        if existing == folder and target.is_dir():
            raise ConfigError(
                f"{target} is a folder, where the run writes a file: remove it or choose "
                "another --out"
            )
    try:
        with tempfile.TemporaryFile(dir=existing, prefix=".bayesagg-write-test."):
            pass
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise ConfigError(
            f"cannot write {what} {folder}: no file can be created in {existing} ({reason}); "
            "choose another --out"
        ) from None


def check_all_writable(folders: Iterable[str | os.PathLike[str]]) -> None:
    """Check every folder with :func:`check_writable` (each distinct one once)."""
    for folder in dict.fromkeys(Path(f) for f in folders):
        check_writable(folder)
