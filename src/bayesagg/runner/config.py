"""What one training run is: :class:`RunConfig`, and :class:`ConfigError` for a bad one."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

__all__ = ["ConfigError", "RunConfig", "check_device"]


class ConfigError(ValueError):
    """A run cannot start as asked; the message names what is wrong and how to fix it."""


@dataclass(frozen=True)
class RunConfig:
    """One run: a benchmark, a method, a seed and a protocol, plus explicit overrides.

    Everything that changes the result is a field, so two runs with equal configs are the same
    run (``compare`` skips a finished one).
    """

    benchmark: str
    method: str
    seed: int = 0
    protocol: str = "quick"
    #: Overrides of the protocol (None: the protocol's value).
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    train_limit: int | None = None
    eval_limit: int | None = None
    #: The method's hyper-parameters, on top of the protocol's (BayesAgg-MTL's).
    hparams: Mapping[str, Any] = field(default_factory=dict)
    #: Extra keyword arguments for the model builder and the data loader.
    model_options: Mapping[str, Any] = field(default_factory=dict)
    data_options: Mapping[str, Any] = field(default_factory=dict)
    #: STL only: train this task alone (None: every task, one model each).
    task: str | None = None
    #: STL references for Delta_m: "auto", "published", "own" or a JSON file.
    references: str = "auto"
    #: The forward passes' precision: "fp32", or "bf16" (torch.autocast with bfloat16; every
    #: method's backward and BayesAgg-MTL's posteriors run in full precision regardless).
    precision: str = "fp32"
    data_dir: str | None = None
    out: str = "runs"

    def identity(self) -> dict[str, Any]:
        """Return the fields that define the result (not where data or results live)."""
        d = asdict(self)
        for k in ("data_dir", "out"):
            d.pop(k)
        if d["precision"] == "fp32":  # the runs made before the option existed are fp32 runs
            d.pop("precision")
        d["hparams"] = dict(sorted(dict(self.hparams).items()))
        d["model_options"] = dict(sorted(dict(self.model_options).items()))
        d["data_options"] = dict(sorted(dict(self.data_options).items()))
        return d

    def with_(self, **changes: Any) -> RunConfig:
        return replace(self, **changes)


def check_device(name: str) -> None:
    """Raise ConfigError unless torch can run on device ``name`` here (before any data loads)."""
    import torch

    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as err:
        raise ConfigError(
            f"--device {name!r} is not a torch device ({err}); use cpu or cuda"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"--device {name}: no CUDA GPU is available on this machine; use --device cpu"
        )
    if (
        device.type == "cuda"
        and device.index is not None
        and device.index >= torch.cuda.device_count()
    ):
        raise ConfigError(
            f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)"
        )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(
            f"--device {name}: MPS is not available on this machine; use --device cpu"
        )
