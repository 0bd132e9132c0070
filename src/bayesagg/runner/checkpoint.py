"""Runs that survive interruption: ``checkpoint.pt`` in the run's folder, once per epoch.

At the end of every epoch the training loop hands :meth:`Checkpoint.save` everything the rest
of the run depends on, and the file is replaced atomically (temporary file, fsync, rename), so
a run killed at any instant leaves either the previous epoch's checkpoint or this one, never a
torn file. It holds:

- the model, the optimiser (Adam's moments), the learning-rate scheduler;
- the method's ``state_dict()`` (BayesAgg-MTL's epoch prior and buffers, Nash-MTL's last
  solution, FAMO's logits and optimiser, the random generators of PCGrad, GradDrop, ...);
- the random states: Python's ``random``, NumPy's global generator, torch's CPU (and CUDA)
  generators, and the training loader's generator, which is the data order: it draws the next
  epoch's permutation;
- the training loop's history: epochs done, per-epoch rows, the best-so-far selection (epoch,
  criterion value, its validation and test metrics), step times, task weights, CSV rows.

Running the same command again restores all of it and continues with the next epoch; the run
ends with exactly the metrics and history of an uninterrupted run (only wall-clock fields
differ). A checkpoint written for another configuration, or one that cannot be read, is
reported by name and ignored (the run starts afresh). After ``result.json`` is written the
checkpoint is deleted (docs/results-schema.md says why).

The file is a ``torch.save`` archive loaded with ``weights_only=True``: plain containers,
numbers, strings and tensors only, so opening a checkpoint runs no pickled code.
"""

from __future__ import annotations

import os
import random
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from bayesagg.methods.base import Method
from bayesagg.runner.results import file_mode

#: A learning-rate schedule of the runner (runner/train.py).
Scheduler = torch.optim.lr_scheduler.LRScheduler | torch.optim.lr_scheduler.ReduceLROnPlateau

__all__ = ["CHECKPOINT_FILE", "FORMAT", "Checkpoint", "Progress", "get_rng_state", "set_rng_state"]

CHECKPOINT_FILE = "checkpoint.pt"
FORMAT = "bayesagg.checkpoint/1"


@dataclass
class Progress:
    """The training loop's own state after ``epoch`` finished epochs."""

    epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    step_seconds: list[float] = field(default_factory=list)
    timed_from_step: int = 0
    weights_per_epoch: list[list[float] | None] = field(default_factory=list)
    #: (0-based epoch, criterion value, val metrics, test metrics) of the best epoch so far.
    best: tuple[int, float | None, dict[str, Any], dict[str, Any]] | None = None
    #: The rows of ``epochs.csv`` so far (the file is rewritten from them).
    rows: list[dict[str, Any]] = field(default_factory=list)
    #: The K task losses of the run's first step (the model as initialised): the reference of
    #: the divergence check (runner/train.py). None in checkpoints written before it existed.
    initial_losses: list[float] | None = None


def get_rng_state() -> dict[str, Any]:
    """Return the states of Python's, NumPy's and torch's global random generators."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None,
    }
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`get_rng_state` returned."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np.random.set_state(tuple(state["numpy"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _generator(loader: DataLoader) -> torch.Generator | None:
    """Return the generator that draws the loader's order (None: the order needs none)."""
    return getattr(loader, "generator", None)


class Checkpoint:
    """The checkpoint file of one run; ``identity`` ties it to the run's configuration."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        identity: dict[str, Any],
        echo: Callable[[str], None] | None = None,
    ) -> None:
        self.path = Path(path)
        self.identity = identity
        self.say = echo or (lambda _msg: None)
        #: Epochs done when the run was resumed from this file (None: started afresh).
        self.resumed_from: int | None = None

    def save(
        self,
        progress: Progress,
        *,
        model: torch.nn.Module,
        method: Method,
        optimizer: torch.optim.Optimizer,
        scheduler: Scheduler | None,
        loader: DataLoader,
    ) -> None:
        """Write the checkpoint after ``progress.epoch`` epochs, atomically."""
        generator = _generator(loader)
        state = {
            "format": FORMAT,
            "identity": self.identity,
            "progress": progress.__dict__,
            "model": model.state_dict(),
            "method": method.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": None if scheduler is None else scheduler.state_dict(),
            "loader_generator": None if generator is None else generator.get_state(),
            "rng": get_rng_state(),
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(
            prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent
        )
        try:
            os.fchmod(fd, file_mode())  # as any file the run writes (mkstemp's is 0600)
            with os.fdopen(fd, "wb") as f:
                torch.save(_encode(state), f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def _read(self) -> dict[str, Any] | None:
        """Return the checkpoint's content if it belongs to this run, else None (said why)."""
        if not self.path.is_file():
            return None
        try:
            state = _decode(torch.load(self.path, map_location="cpu", weights_only=True))
        except Exception as err:  # a truncated or foreign file: any unpickling error
            self.say(f"ignoring unreadable checkpoint {self.path} ({type(err).__name__}: {err})")
            return None
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            self.say(f"ignoring {self.path}: not a {FORMAT} checkpoint")
            return None
        if state.get("identity") != self.identity:
            self.say(f"ignoring {self.path}: it was written for another configuration")
            return None
        return state

    def load(
        self,
        *,
        model: torch.nn.Module,
        method: Method,
        optimizer: torch.optim.Optimizer,
        scheduler: Scheduler | None,
        loader: DataLoader,
    ) -> Progress | None:
        """Restore every state from the file into the given objects; return the progress.

        Returns None (nothing restored) when there is no usable checkpoint. Call it after the
        objects are built exactly as for a fresh run and before the first epoch.
        """
        state = self._read()
        if state is None:
            return None
        device = next(model.parameters()).device
        model.load_state_dict(state["model"])
        method.load_state_dict(_to_device(state["method"], device))
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(state["scheduler"])
        generator = _generator(loader)
        if generator is not None:
            if state["loader_generator"] is None:
                raise ValueError(f"{self.path}: the checkpoint holds no data-order state")
            generator.set_state(state["loader_generator"])
        set_rng_state(state["rng"])
        progress = Progress(**state["progress"])
        if progress.best is not None:
            progress.best = tuple(progress.best)  # type: ignore[assignment]
        self.resumed_from = progress.epoch
        self.say(f"resuming {self.path.parent} after epoch {progress.epoch} ({self.path.name})")
        return progress

    def discard(self) -> None:
        """Delete the checkpoint (the run's result.json now holds everything it is for)."""
        self.path.unlink(missing_ok=True)


_NUMPY = "__numpy__"


def _encode(value: Any) -> Any:
    """Return ``value`` with NumPy arrays and scalars (Nash-MTL's alpha, GradVac's targets)
    as tagged tensors, which ``weights_only`` loading accepts; :func:`_decode` undoes it."""
    if isinstance(value, np.ndarray | np.generic):
        array = np.asarray(value)
        return {_NUMPY: torch.from_numpy(array.copy()), "scalar": isinstance(value, np.generic)}
    if isinstance(value, dict):
        return {k: _encode(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_encode(v) for v in value)
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, dict):
        if _NUMPY in value:
            array = value[_NUMPY].numpy()
            return array[()] if value["scalar"] else array
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_decode(v) for v in value)
    return value


def _to_device(value: Any, device: torch.device) -> Any:
    """Move the tensors of a method's state to the model's device (generator states stay)."""
    if device.type == "cpu":
        return value
    if isinstance(value, torch.Tensor):
        return value if value.dtype == torch.uint8 else value.to(device)
    if isinstance(value, dict):
        return {k: _to_device(v, device) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_to_device(v, device) for v in value)
    return value
