"""Multi-process training for the runner: launch, samplers, DDP wrapping, gathering.

``bayesagg run ... --nproc N`` (or ``compare``) starts N copies of the same command on
PyTorch's elastic launcher (``torch.distributed.run``, what ``torchrun`` runs); ``torchrun
--nproc-per-node N -m bayesagg run ...`` does the same from outside. Each process:

- joins the default process group (gloo on CPU, nccl with ``--device cuda``, one GPU per local
  rank, ``cuda:LOCAL_RANK``) and seeds everything with the run's seed, so every process builds
  the same model and method state;
- reads, of every global batch of the one-process run (same seed, same order: the same
  ``RandomSampler`` and generator), its contiguous B/N slice (:class:`ShardedBatchSampler`);
- trains the model wrapped in ``DistributedDataParallel`` (``SyncBatchNorm`` on GPUs), with the
  forward under ``no_sync()``: the methods communicate their own statistics
  (:mod:`bayesagg.distributed`) and :meth:`Context.sync_gradients` averages the gradients that
  hold per-process shares, in one flattened all-reduce (DDP's own reducer does not see the
  registry methods' ``torch.autograd.grad`` calls);
- evaluates its contiguous shard of the validation and test sets; predictions and targets are
  gathered in rank order, so every process computes the metrics of the full sets;
- writes nothing unless it is rank 0.

See docs/distributed.md for what is exact.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import sys
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Sampler

from bayesagg.benchmarks.pyg import torch_geometric
from bayesagg.benchmarks.registry import Benchmark
from bayesagg.benchmarks.splits import collate
from bayesagg.distributed import all_gather_cat, all_reduce_mean, average_gradients
from bayesagg.methods.base import Method
from bayesagg.runner.config import ConfigError

__all__ = [
    "Context",
    "DataParallelModel",
    "ShardedBatchSampler",
    "context",
    "distributed_fields",
    "initialised",
    "is_main",
    "launch",
    "launched",
]

_log = logging.getLogger(__name__)
_CURRENT: Context | None = None


def launched() -> bool:
    """Return True in a process started by torchrun / the elastic launcher (WORLD_SIZE set)."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def launch(nproc: int, argv: Sequence[str], entrypoint: Callable[[list[str]], int]) -> int:
    """Run ``entrypoint(argv)`` in ``nproc`` local processes on the elastic launcher.

    ``entrypoint``: the command's own entry (``bayesagg.app.cli.main`` for ``bayesagg
    <argv>``), a module-level function so that the spawned processes can import it; it returns
    the exit code. The same launcher as ``torchrun --standalone --nproc-per-node nproc``;
    returns 0 when every process succeeded, else the launcher's error propagates (naming the
    failed rank).
    """
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=str(uuid.uuid4()),
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",
        max_restarts=0,
        monitor_interval=0.1,
        start_method="spawn",
    )
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    try:
        results = elastic_launch(config, _entrypoint)(entrypoint, list(argv))
    except ChildFailedError as err:
        # a process failed (its error is printed above); the launcher stopped the others
        failures = sorted(err.failures.items())
        return max((f.exitcode for _, f in failures), default=1) or 1
    codes = [int(code or 0) for code in results.values()]
    return max(codes, default=0)


def _entrypoint(main: Callable[[list[str]], int], argv: list[str]) -> int:
    code = main(argv)
    if code:
        # exit non-zero so that the launcher stops the other processes (which would otherwise
        # wait for this one in their next collective)
        sys.stdout.flush()
        sys.stderr.flush()
        sys.exit(code)
    return code


@dataclass
class Context:
    """This process's place in the run: group, rank, world size, backend, device."""

    group: Any
    rank: int
    world_size: int
    local_rank: int
    backend: str
    notes: list[str] = field(default_factory=list)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, requested: str) -> torch.device:
        """Return this process's device: ``cuda:LOCAL_RANK`` for ``cuda``, else as requested."""
        device = torch.device(requested)
        if device.type == "cuda" and device.index is None:
            return torch.device("cuda", self.local_rank)
        return device

    def describe(self) -> dict[str, Any]:
        return {"world_size": self.world_size, "backend": self.backend}

    # -- data -------------------------------------------------------------------------------
    def train_loader(
        self, spec: Benchmark, dataset: Dataset, batch_size: int, seed: int
    ) -> DataLoader:
        """Return this rank's loader of the one-process run's shuffled global batches."""
        from torch.utils.data import BatchSampler, RandomSampler

        generator = torch.Generator().manual_seed(seed)
        batches = BatchSampler(
            RandomSampler(dataset, generator=generator), batch_size, drop_last=False
        )
        sampler = ShardedBatchSampler(batches, self.rank, self.world_size)
        return _loader(spec, dataset, sampler, generator)

    def eval_loader(
        self, spec: Benchmark, dataset: Dataset, batch_size: int, seed: int
    ) -> DataLoader:
        """Return this rank's loader of a contiguous shard (no padding, no repeat) of ``dataset``."""
        from torch.utils.data import BatchSampler

        n = len(dataset)
        start, stop = n * self.rank // self.world_size, n * (self.rank + 1) // self.world_size
        batches = BatchSampler(range(start, stop), batch_size, drop_last=False)
        loader = _loader(spec, dataset, batches, torch.Generator().manual_seed(seed))
        loader.gather = self.gather  # type: ignore[attr-defined]  # read by train.predict: full-set predictions everywhere
        return loader

    # -- model and gradients ----------------------------------------------------------------
    def wrap(self, model: nn.Module, device: torch.device) -> DataParallelModel:
        """Return ``model`` (already on ``device``) in DDP, with SyncBatchNorm on GPUs."""
        from torch.nn.parallel import DistributedDataParallel

        has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
        if has_bn and device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model, self.group)
        elif has_bn:
            self.notes.append(
                "batch normalisation statistics are per process (SyncBatchNorm needs GPUs): "
                "training is not exactly the one-process run"
            )
        ids = [device.index] if device.type == "cuda" else None
        ddp = DistributedDataParallel(model, device_ids=ids, process_group=self.group)
        return DataParallelModel(model, ddp)

    def sync_gradients(self, model: nn.Module, method: Method) -> None:
        """Average over processes the gradients that are per-process shares (see module doc)."""
        skip = list(model.encoder.parameters()) if method.reduces_shared_gradients() else []
        average_gradients(
            list(model.parameters()) + list(method.parameters()), self.group, skip=skip
        )

    def finish_notes(self, train_loader: DataLoader) -> list[str]:
        """Return the run's notes on what differs from the one-process run (none when exact)."""
        notes = [f"data parallel: {self.world_size} processes ({self.backend})", *self.notes]
        dropped = getattr(train_loader.batch_sampler, "dropped", 0)
        if dropped:
            notes.append(
                f"data parallel: {dropped} training examples left out over the run (the last "
                f"batch of an epoch is cut to a multiple of {self.world_size} processes)"
            )
        return notes

    # -- collectives on the runner's values -------------------------------------------------
    def mean(self, tensor: Tensor, device: torch.device) -> Tensor:
        """Return the mean over processes of ``tensor`` (moved to ``device`` for nccl)."""
        return all_reduce_mean(tensor.to(device), self.group).to(tensor.device)

    def gather(self, tensor: Tensor, device: torch.device | None = None) -> Tensor:
        """Return the ranks' tensors concatenated in rank order (on ``tensor``'s device)."""
        where = tensor.device
        target = device or (
            torch.device("cuda", self.local_rank) if self.backend == "nccl" else where
        )
        return all_gather_cat(tensor.to(target), self.group).to(where)


class DataParallelModel:
    """The model seen through DDP: calls go through ``DistributedDataParallel`` under
    ``no_sync()`` (gradients are averaged by :meth:`Context.sync_gradients`); attributes
    (``encoder``, ``heads``, ``parameters``, ``state_dict``, ``train``...) are the model's own,
    so checkpoints keep the one-process keys."""

    def __init__(self, module: nn.Module, ddp: nn.Module) -> None:
        self.module = module
        self.ddp = ddp

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with self.ddp.no_sync():
            return self.ddp(*args, **kwargs)

    def train(self, mode: bool = True) -> DataParallelModel:
        self.ddp.train(mode)  # DDP's own flag and, through it, the model's
        return self

    def eval(self) -> DataParallelModel:
        return self.train(False)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.module, name)


class ShardedBatchSampler:
    """Yield rank ``r``'s contiguous slice of every global batch of ``batches``.

    Together the N ranks read exactly the one-process global batches, in order. A global
    batch whose size is not a multiple of N (the epoch's last) loses its last ``size mod N``
    examples so that every rank holds the same number (equal shares make the mean over ranks
    the global mean); :attr:`dropped` counts them for the run's notes.
    """

    def __init__(self, batches: Any, rank: int, world_size: int) -> None:
        self.batches, self.rank, self.world_size = batches, rank, world_size
        self.dropped = 0

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.batches:
            batch = list(batch)
            share = len(batch) // self.world_size
            if share * self.world_size != len(batch):
                self.dropped += len(batch) - share * self.world_size
            if share == 0:
                continue
            yield batch[self.rank * share : (self.rank + 1) * share]

    def __len__(self) -> int:
        return sum(1 for b in _sizes(self.batches) if b >= self.world_size)


def _sizes(batches: Any) -> Iterator[int]:
    n, size = len(batches.sampler), batches.batch_size
    for start in range(0, n, size):
        yield min(size, n - start)


def _loader(
    spec: Benchmark, dataset: Dataset, batch_sampler: Sampler[list[int]], generator: torch.Generator
) -> DataLoader:
    # the generator is drawn from as in the one-process loader (its per-iterator base seed)
    if spec.graph:
        GraphLoader = torch_geometric().loader.DataLoader
        return GraphLoader(dataset, batch_sampler=batch_sampler, generator=generator, num_workers=0)
    return DataLoader(
        dataset,
        batch_sampler=batch_sampler,
        generator=generator,
        num_workers=0,
        collate_fn=collate,
    )


def context() -> Context | None:
    """Return the current process's distributed context, or None (one process)."""
    return _CURRENT


def is_main() -> bool:
    """Return True in a one-process run and in rank 0 of a multi-process one (the writer)."""
    return _CURRENT is None or _CURRENT.is_main


def distributed_fields() -> dict[str, Any]:
    """Return the result JSON's ``world_size`` and ``backend`` (1 and None for one process)."""
    if _CURRENT is None:
        return {"world_size": 1, "backend": None}
    return _CURRENT.describe()


@contextlib.contextmanager
def initialised(device: str, nproc: int | None = None) -> Iterator[Context | None]:
    """Join the launcher's process group for the block (nothing when not launched).

    ``nproc``: the ``--nproc`` asked for; an error if the launcher started another number.
    """
    global _CURRENT
    if not launched():
        yield None
        return
    import torch.distributed as dist

    world = int(os.environ["WORLD_SIZE"])
    if nproc not in (None, 1, world):
        raise ConfigError(f"--nproc {nproc} but the launcher started {world} processes")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.device(device).type == "cuda"
    backend = "nccl" if cuda else "gloo"
    if cuda:
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(
                f"process {local_rank} needs cuda:{local_rank} but this machine has "
                f"{torch.cuda.device_count()} GPU(s): one GPU per process with --device cuda"
            )
        torch.cuda.set_device(local_rank)
    created = not dist.is_initialized()
    if created:
        dist.init_process_group(backend, init_method="env://")
    _CURRENT = Context(
        group=dist.group.WORLD,
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_rank=local_rank,
        backend=dist.get_backend(),
    )
    try:
        yield _CURRENT
    finally:
        _CURRENT = None
        if created:
            # The run's DDP model is unreachable now but kept by reference cycles; freed at the
            # interpreter's exit, after the process group, it can abort a gloo process
            # (scripts/studies/ddp_teardown.py: 7-28 % of two-process runs with torch 2.14.1).
            gc.collect()
            dist.destroy_process_group()
