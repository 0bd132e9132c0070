"""How many intra-op threads each training process gets (``--threads``), and why that default.

PyTorch starts one intra-op thread per physical core in every process. For the small matrices
of multi-task training (per-task heads, K x K Gramians, BayesAgg-MTL's posteriors of width
D + 1) the work per operation is tiny, so every operation is dominated by waking and joining
the thread team; when the cores are shared (``--nproc`` processes, or other jobs on the
machine) a thread that is descheduled stalls the whole team. On a 2-core machine with other
work running, torch's default of 2 threads has made such steps tens of times slower than one
thread (``scripts/timing/threads.py`` measures it on the machine at hand). Hence the default: share the
cores among the processes, and below 3 cores per process use one thread.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

from bayesagg.runner.config import ConfigError

__all__ = ["MAX_DEFAULT_THREADS", "available_cores", "default_threads", "threads_note", "using"]

#: The default never exceeds this many threads per process: more rarely pays for the layers
#: of these benchmarks and oversubscribes machines that run several jobs; ``--threads`` lifts it.
MAX_DEFAULT_THREADS = 8


def available_cores() -> int:
    """Return the CPU cores this process may run on (its affinity mask, else the machine's)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not on Linux
        return max(1, os.cpu_count() or 1)


def _from_environment() -> int | None:
    """Return ``OMP_NUM_THREADS`` when it holds a positive integer (the user's own choice)."""
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else None


def default_threads(nproc: int = 1, cores: int | None = None) -> int:
    """Return the default intra-op threads per process for ``nproc`` processes on ``cores``.

    ``OMP_NUM_THREADS``, when set, wins (it is what the user asked for). Otherwise the cores
    are shared among the processes: ``cores // nproc``, but 1 when that is 2 or less (two
    threads on two busy cores are far slower than one, see the module docstring), and at most
    :data:`MAX_DEFAULT_THREADS`.
    """
    if nproc < 1:
        raise ValueError(f"nproc must be >= 1, got {nproc}")
    env = _from_environment()
    if env is not None:
        return env
    per_process = (available_cores() if cores is None else cores) // nproc
    return 1 if per_process <= 2 else min(per_process, MAX_DEFAULT_THREADS)


def threads_note(threads: int, nproc: int, *, chosen: bool) -> str:
    """Return the one line a command prints about its threads (what, and where it came from)."""
    cores = available_cores()
    processes = f"{nproc} process{'es' if nproc > 1 else ''}"
    if chosen:
        source = "--threads"
    elif _from_environment() is not None:
        source = "from OMP_NUM_THREADS; --threads N to change"
    else:
        source = f"default for {cores} cores and {processes}; --threads N to change"
    return f"threads: {threads} per process, {processes} ({source})"


@contextlib.contextmanager
def using(threads: int) -> Iterator[None]:
    """Run the body with ``torch.set_num_threads(threads)``; restore the previous count after.

    Restoring keeps ``bayesagg.app.cli.main`` free of side effects when called in-process (tests,
    notebooks); the recorded ``torch_threads`` of a run is the count set here.
    """
    if threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {threads}")
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
