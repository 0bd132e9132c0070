"""How often one run's call path returns into a module it is still inside (a structure check).

    python scripts/studies/run_walk.py -- run -b multimnist --protocol smoke --method bayesagg \
        --out /tmp/walk --no-progress

Runs the ``bayesagg`` command line given after ``--`` under a profiler hook and follows every
call from one function of the package into another. A call *returns into a module it left*
when the callee's module is already on the call stack below the caller's module: A calls into
B (directly or further down), and B, or something B called, calls back into A. One-way code
(the command line calls the runner, the runner the methods, the methods the core) has none;
callbacks, planning helpers that ask the layer above for facts, and modules that hand work
back and forth do. It also counts calls *up the layers* (command line and reports > runner >
benchmarks > methods > core): a lower layer calling a function of a higher one. Each distinct
(caller function, callee function) pair is counted once, so loops over epochs and batches do
not inflate the counts. Prints both counts and their pairs.
"""

from __future__ import annotations

import argparse
import sys
from types import FrameType
from typing import Any


def _module(frame: FrameType) -> str | None:
    name = frame.f_globals.get("__name__", "")
    return name if isinstance(name, str) and name.startswith("bayesagg") else None


#: Layers, top first; a module's layer is the first prefix it starts with (the core last).
LAYERS = (
    ("bayesagg.app", "bayesagg.cli", "bayesagg.report", "bayesagg.summary", "bayesagg.__main__"),
    ("bayesagg.runner",),
    ("bayesagg.benchmarks",),
    ("bayesagg.methods",),
    ("bayesagg",),
)


def layer(module: str) -> int:
    """0 for the command line and reports, ... 4 for the core."""
    return next(i for i, names in enumerate(LAYERS) if module.startswith(names))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("argv", nargs=argparse.REMAINDER, help="the bayesagg command, after --")
    args = parser.parse_args()
    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    try:  # imported after argument parsing so that --help stays fast
        from bayesagg.app.cli import main as cli
    except ImportError:  # a tree from before the application layer (comparisons over time)
        from bayesagg.cli import main as cli  # type: ignore[no-redef]

    pairs: set[tuple[str, str, str, str]] = set()
    upward: set[tuple[str, str, str, str]] = set()

    def hook(frame: FrameType, event: str, arg: Any) -> None:
        if event != "call":
            return
        callee = _module(frame)
        caller_frame = frame.f_back
        caller = _module(caller_frame) if caller_frame is not None else None
        if callee is None or caller is None or callee == caller:
            return
        assert caller_frame is not None
        if layer(callee) < layer(caller):
            upward.add((caller, caller_frame.f_code.co_name, callee, frame.f_code.co_name))
        below = caller_frame.f_back if caller_frame is not None else None
        while below is not None:
            if _module(below) == callee:
                pairs.add((caller, caller_frame.f_code.co_name, callee, frame.f_code.co_name))
                return
            below = below.f_back

    sys.setprofile(hook)
    try:
        code = cli(argv)
    finally:
        sys.setprofile(None)
    for title, found in (
        ("returns into a module still on the stack", pairs),
        ("calls up the layers", upward),
    ):
        for caller, caller_fn, callee, callee_fn in sorted(found):
            print(f"  {caller}.{caller_fn} -> {callee}.{callee_fn}")
        print(f"{title}: {len(found)}")
    print(f"(exit code {code})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
