"""Many runs, then the table: methods x seeds on one benchmark and protocol, resumable.

Each run's ``result.json`` is written atomically when the run ends, so an interrupted compare
continues only the unfinished runs (each from its ``checkpoint.pt``, runner/checkpoint.py) and
never recomputes a finished one unless ``force``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from bayesagg.runner.checks import check_all_writable
from bayesagg.runner.config import ConfigError, RunConfig, check_device
from bayesagg.runner.hparams import constructor_parameters
from bayesagg.runner.plan import plan
from bayesagg.runner.results import protocol_dir, run_dir
from bayesagg.runner.run import finished_result, run
from bayesagg.runner.splits import SplitsCache

__all__ = ["compare", "split_hparams"]


def split_hparams(methods: Sequence[str], hparams: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Return each method's hyper-parameters from ``key=value`` / ``method.key=value`` items.

    A scoped key (``bayesagg.s_regression``) goes to that method; a plain key to every listed
    method whose constructor takes it (ConfigError if none does).
    """
    out: dict[str, dict[str, Any]] = {m: {} for m in methods}
    for key, value in hparams.items():
        scope, dot, name = key.partition(".")
        if dot:
            if scope not in out:
                raise ConfigError(
                    f"--hp {key}: method {scope!r} is not in --methods ({', '.join(methods)})"
                )
            out[scope][name] = value
            continue
        takers = [m for m in methods if m != "stl" and _accepts(m, key)]
        if not takers:
            raise ConfigError(
                f"--hp {key}: none of the methods {', '.join(methods)} has this "
                "hyper-parameter (scope it as METHOD.KEY=VALUE)"
            )
        for m in takers:
            out[m][key] = value
    return out


def _accepts(method: str, key: str) -> bool:
    params, var_kw = constructor_parameters(method)
    return var_kw or key in params


def compare(
    base: RunConfig,
    methods: Sequence[str],
    seeds: Sequence[int],
    *,
    force: bool = False,
    progress: bool = False,
    command: str | None = None,
    device: str = "cpu",
    echo: Callable[[str], None] | None = None,
) -> Path:
    """Run every (method, seed) not already finished; return the protocol folder of the runs.

    All configs are checked before the first run starts, so a typo in the last method fails
    at once rather than after hours of training.
    """
    if not methods:
        raise ConfigError("--methods is empty: give e.g. --methods ls,mgda-ub,bayesagg")
    if not seeds:
        raise ConfigError("--seeds is empty: give e.g. --seeds 0,1,2")
    check_device(device)
    say = echo or (lambda _msg: None)
    # STL first: its references then exist for the Delta_m of the other methods.
    methods = sorted(methods, key=lambda m: m != "stl")
    per_method = split_hparams(methods, base.hparams)
    configs = [
        replace(base, method=m, seed=s, hparams=per_method[m]) for s in seeds for m in methods
    ]
    # With STL in the list, own references may not exist yet: check them after it runs.
    plans = [plan(replace(c, references="none") if "stl" in methods else c) for c in configs]
    # ... and every run folder can be written, before the first run trains.
    check_all_writable(run_dir(c) for c in configs)
    total = len(configs)
    data = SplitsCache()  # consecutive runs on the same data load it once
    for i, (c, p) in enumerate(zip(configs, plans, strict=True), 1):
        if not force and c.method != "stl" and finished_result(c, p.settings) is not None:
            say(f"[{i}/{total}] {c.method} seed {c.seed}: finished, skipped")
            continue
        say(f"[{i}/{total}] {c.method} seed {c.seed}")
        run(c, force=force, progress=progress, command=command, device=device, echo=say, data=data)
    return protocol_dir(base)
