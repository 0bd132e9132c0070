"""The ``bayesagg`` command: demo, run, compare, sweep, report, list.

Every error a user can cause (unknown benchmark or method, missing data, bad hyper-parameters)
ends in one line naming what is wrong and how to fix it, and exit code 2; no traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from bayesagg import __version__, methods
from bayesagg.app.demo import demo
from bayesagg.app.report import protocol_report, run_summary, write_report
from bayesagg.app.summary import write_summary
from bayesagg.benchmarks import registry
from bayesagg.benchmarks.paths import MissingDataError
from bayesagg.runner import compare, run
from bayesagg.runner.checks import check_nproc
from bayesagg.runner.config import ConfigError, RunConfig
from bayesagg.runner.hparams import parse_hparams
from bayesagg.runner.launch import initialised, launch, launched
from bayesagg.runner.sweep import sweep, sweeps_report
from bayesagg.runner.threads import default_threads, threads_note, using

__all__ = ["main"]

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (plus where to find help), exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _common(p: argparse.ArgumentParser, *, benchmark_required: bool = True) -> None:
    p.add_argument(
        "--benchmark",
        "-b",
        required=benchmark_required,
        metavar="NAME",
        help=f"one of: {', '.join(registry.names())}",
    )
    p.add_argument(
        "--protocol",
        default="quick",
        choices=("paper", "quick", "smoke", "revised"),
        help="paper: the published recipe; quick: the same recipe on a CPU budget (default); "
        "smoke: a tiny run that checks the pipeline (< 1 minute); revised: QM9 only, NTKMTL's "
        "revised recipe (batch 60, plateau patience 10)",
    )
    p.add_argument("--epochs", type=int, help="override the protocol's epochs (warm-up scaled)")
    p.add_argument("--batch-size", type=int, help="override the protocol's batch size")
    p.add_argument("--lr", type=float, help="override the protocol's learning rate")
    p.add_argument(
        "--precision",
        default="fp32",
        choices=("fp32", "bf16"),
        help="the training forward passes' precision: bf16 runs them under torch.autocast with "
        "bfloat16 (results in <protocol>+bf16); the methods' backward and evaluation stay in "
        "full precision",
    )
    p.add_argument("--train-limit", type=int, help="keep at most N training examples")
    p.add_argument("--eval-limit", type=int, help="keep at most N validation and test examples")
    p.add_argument(
        "--hp",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a method hyper-parameter (repeatable), parsed to int/float/bool/str, e.g. "
        "--hp s_regression=0.75; in compare, METHOD.KEY=VALUE scopes it to one method",
    )
    p.add_argument(
        "--model-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a model-builder option, e.g. weights=IMAGENET1K_V1 for ChestX-ray14",
    )
    p.add_argument(
        "--data-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a data-loader option, e.g. complete_graph=true for QM9, cache=true for UTKFace",
    )
    p.add_argument(
        "--references",
        default="auto",
        metavar="WHICH",
        help="STL references for Delta_m (and for selection on it): auto (published if any, "
        "else this project's STL runs), published, own, none, or a references JSON file; own or "
        "a file must cover every task",
    )
    p.add_argument("--data-dir", metavar="DIR", help="data root (default $BAYESAGG_DATA_DIR)")
    p.add_argument("--out", default="runs", metavar="DIR", help="results folder (default runs/)")
    _execution_options(p, nproc=True)


def _execution_options(p: argparse.ArgumentParser, *, nproc: bool) -> None:
    """Add how the runs execute: device, (data-parallel processes,) threads, reuse, progress."""
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    if nproc:
        p.add_argument(
            "--nproc",
            type=int,
            default=1,
            metavar="N",
            help="data-parallel processes (default 1): N processes on PyTorch's elastic launcher "
            "(gloo on CPU, nccl and one GPU each with --device cuda), each on 1/N of every batch; "
            "see docs/distributed.md",
        )
    p.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="torch threads per process (default: OMP_NUM_THREADS if set, else cores / "
        "processes, 1 when that is 2 or less, at most 8; the command prints its choice)",
    )
    p.add_argument("--force", action="store_true", help="recompute finished runs")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="bayesagg",
        description="BayesAgg-MTL and multi-task baselines on the paper's benchmarks.",
    )

    parser.add_argument("--version", action="version", version=f"bayesagg-mtl {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    demo = sub.add_parser(
        "demo",
        help="a short real comparison on QM9 (LS, FAMO, BayesAgg-MTL), a few minutes on CPU",
        description="Train LS, FAMO and BayesAgg-MTL on a small QM9 subset (molecules "
        "from PyPI qm9pack, no data directory needed) and print their Delta_m against "
        "single-task models of the same subset and budget (committed for the default "
        "setting, trained first for any other).",
    )
    demo.add_argument("--out", default="bayesagg-demo", metavar="DIR", help="results folder")
    demo.add_argument("--molecules", type=int, default=1000, help="training molecules (1000)")
    demo.add_argument("--epochs", type=int, default=6, help="epochs per method (6)")
    demo.add_argument("--seed", type=int, default=0)
    _execution_options(demo, nproc=False)
    demo.set_defaults(func=_demo)

    run = sub.add_parser(
        "run",
        help="one training run",
        description="Train one method on one benchmark; writes result.json and epochs.csv.",
    )
    _common(run)
    run.add_argument("--method", "-m", required=True, help="a method name (see bayesagg list)")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--task", help="with --method stl: train this task only")
    run.set_defaults(func=_run)

    cmp_ = sub.add_parser(
        "compare",
        help="many runs (methods x seeds), then the table; resumable",
        description="Run every method for every seed (finished runs are skipped, an "
        "interrupted compare resumes), then print the results table.",
    )
    _common(cmp_)
    cmp_.add_argument("--methods", required=True, help="comma-separated, e.g. ls,mgda-ub,bayesagg")
    cmp_.add_argument("--seeds", default="0", help="comma-separated seeds (default 0)")
    cmp_.set_defaults(func=_compare)

    swp = sub.add_parser(
        "sweep",
        help="hyper-parameter search over a method's published grid (Optuna); resumable",
        description="Train the points of the method's grid (methods/search_spaces.py) as "
        "ordinary runs until the study has N complete trials; the objective is the "
        "protocol's validation criterion. Run it again to continue; several processes may "
        "share one --storage.",
    )
    _common(swp)
    swp.add_argument("--method", "-m", required=True, help="a method with a search space")
    swp.add_argument("--trials", type=int, required=True, help="complete trials wanted")
    swp.add_argument("--study", metavar="NAME", help="default BENCHMARK-PROTOCOL-METHOD")
    swp.add_argument(
        "--storage",
        metavar="URL",
        help="Optuna database URL (default sqlite:///OUT/sweeps.db)",
    )
    swp.add_argument("--seeds", "--seed", default="0", help="comma-separated seeds (default 0)")
    swp.set_defaults(func=_sweep)

    report = sub.add_parser(
        "report",
        help="paper-style tables and plots from a results folder",
        description="Write report.md (per-task metrics, Delta_m, mean rank, time per step, "
        "mean +- std over seeds) and PNG plots (task weights over training) for every "
        "benchmark and protocol found under DIR.",
    )
    report.add_argument("dir", metavar="DIR", help="a results folder (the --out of run/compare)")
    report.add_argument("--references", default="auto", metavar="WHICH", help="as for run")
    report.add_argument("--output", metavar="FILE", help="markdown file (default DIR/report.md)")
    report.set_defaults(func=_report)

    summary = sub.add_parser(
        "summary",
        help="the campaign across benchmarks: paired differences to LS, ranks, cost",
        description="Write one markdown file (e.g. RESULTS.md) from several protocol folders "
        "(<out>/<benchmark>/<protocol>): each one's table, each method's paired Delta_m "
        "difference to LS with a 95 % interval over seeds, ranks, the mean rank across the "
        "benchmarks and the campaign's wall time; plots in results/plots/ next to it.",
    )
    summary.add_argument("folders", nargs="+", metavar="FOLDER", help="protocol folders")
    summary.add_argument("--output", required=True, metavar="FILE", help="markdown file")
    summary.add_argument("--notes", metavar="FILE", help="markdown put after the title")
    summary.add_argument("--no-plots", action="store_true", help="no PNG plots")
    summary.add_argument("--seeds", help="comma-separated: multi-task runs of these seeds only")
    summary.add_argument(
        "--references", default="own", metavar="WHICH", help="STL references (default own)"
    )
    summary.set_defaults(func=_summary)

    lst = sub.add_parser(
        "list", help="the benchmarks (and whether their data is here), protocols and methods"
    )
    lst.add_argument("--data-dir", metavar="DIR", help="data root (default $BAYESAGG_DATA_DIR)")
    lst.set_defaults(func=_list)
    return parser


def _split_list(text: str, what: str, cast: Any = str) -> list[Any]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    try:
        return [cast(t) for t in items]
    except ValueError:
        raise ConfigError(
            f"--{what} {text!r} is not a comma-separated list of {cast.__name__}s"
        ) from None


def _config(args: argparse.Namespace, method: str, seed: int) -> Any:
    return RunConfig(
        benchmark=args.benchmark,
        method=method,
        seed=seed,
        protocol=args.protocol,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        train_limit=args.train_limit,
        eval_limit=args.eval_limit,
        hparams=parse_hparams(args.hp),
        model_options=parse_hparams(args.model_option, flag="--model-option"),
        data_options=parse_hparams(args.data_option, flag="--data-option"),
        task=getattr(args, "task", None),
        references=args.references,
        precision=args.precision,
        data_dir=args.data_dir,
        out=args.out,
    )


#: The threads line of the running command, not yet printed (see :func:`_distributed`).
_THREADS_NOTE: list[str] = []


def _echo(message: str) -> None:
    while _THREADS_NOTE:
        print(_THREADS_NOTE.pop(), file=sys.stderr)
    print(message, file=sys.stderr)


def _run(args: argparse.Namespace) -> int:
    config = _config(args, args.method, args.seed)
    results = run(
        config,
        force=args.force,
        progress=not args.no_progress,
        command=args.command_line,
        device=args.device,
        echo=_echo,
    )
    print(run_summary(results))
    return 0


def _compare(args: argparse.Namespace) -> int:
    methods = [m.lower() for m in _split_list(args.methods, "methods")]
    seeds = _split_list(args.seeds, "seeds", int)
    folder = compare(
        _config(args, methods[0] if methods else "", seeds[0] if seeds else 0),
        methods,
        seeds,
        force=args.force,
        progress=not args.no_progress,
        command=args.command_line,
        device=args.device,
        echo=_echo,
    )
    print(protocol_report(folder, references=args.references, methods=methods))
    return 0


def _sweep(args: argparse.Namespace) -> int:
    seeds = _split_list(args.seeds, "seeds", int)
    sweep(
        _config(args, args.method.lower(), seeds[0] if seeds else 0),
        trials=args.trials,
        seeds=seeds,
        study_name=args.study,
        storage=args.storage,
        progress=not args.no_progress,
        command=args.command_line,
        device=args.device,
        echo=_echo,
    )
    print(sweeps_report(args.out))
    return 0


def _report(args: argparse.Namespace) -> int:
    left_out: list[tuple[Any, str]] = []
    path = write_report(
        args.dir, references=args.references, output=args.output, unreadable=left_out
    )
    print(path.read_text())
    _warn_left_out(left_out)
    _echo(f"report: {path}")
    return 0


def _warn_left_out(left_out: Sequence[tuple[Any, str]]) -> None:
    """Say on stderr how many result files a table left out, and which: never drop one silently."""
    if left_out:
        _echo(
            f"warning: {len(left_out)} result file(s) left out: "
            + "; ".join(f"{path} ({why})" for path, why in left_out)
        )


def _summary(args: argparse.Namespace) -> int:
    for folder in args.folders:
        if not Path(folder).is_dir():
            raise ConfigError(f"protocol folder {folder} does not exist")
    notes = Path(args.notes).read_text() if args.notes else ""
    left_out: list[tuple[Any, str]] = []
    write_summary(
        args.folders,
        args.output,
        plots=not args.no_plots,
        preamble=notes,
        references=args.references,
        seeds=None if args.seeds is None else _split_list(args.seeds, "--seeds", int),
        left_out=left_out,
    )
    _warn_left_out(left_out)
    _echo(f"summary: {args.output}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    print(
        demo(
            out=args.out,
            molecules=args.molecules,
            epochs=args.epochs,
            seed=args.seed,
            force=args.force,
            progress=not args.no_progress,
            device=args.device,
            command=args.command_line,
            echo=_echo,
        )
    )
    return 0


def _list(args: argparse.Namespace) -> int:
    print(
        "benchmarks (protocols: paper, quick, smoke; qm9 also revised), each with where its "
        "data is found here (--data-dir, else $BAYESAGG_DATA_DIR, else ../shared/data):"
    )
    for name in registry.names():
        spec = registry.get(name)
        print(f"  {name:12s} {spec.description}")
        try:  # folder checks only: listing must stay instant
            where = spec.locate_data(args.data_dir)
            status = "unknown (its data module cannot tell)" if where is None else f"here, {where}"
        except MissingDataError as err:
            status = f"NOT HERE: {err}"
        print(f"  {'':12s} data: {status}")
    print("methods:")
    for name in methods.names():
        print(f"  {name:15s} {methods.describe(name)}")
    return 0


def _distributed(args: argparse.Namespace, argv: list[str]) -> int:
    """Run the command here, or on ``--nproc`` processes; only rank 0 prints."""
    nproc = getattr(args, "nproc", 1)
    if nproc < 1:
        raise ConfigError(f"--nproc must be >= 1, got {nproc}")
    chosen = getattr(args, "threads", None)
    threads = default_threads(nproc) if chosen is None else chosen
    if threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {threads}")
    if nproc > 1 and not launched():
        check_nproc(nproc, getattr(args, "device", "cpu"))  # before any process starts
        return launch(nproc, argv, main)
    with initialised(getattr(args, "device", "cpu"), nproc) as ctx, using(threads):
        if ctx is None or ctx.is_main:
            # said with the command's first status line (or at its end), so that an error
            # found before any work stays the only line the command prints
            if hasattr(args, "threads"):
                _THREADS_NOTE[:] = [threads_note(threads, nproc, chosen=chosen is not None)]
            try:
                code = int(args.func(args) or 0)
                if _THREADS_NOTE:
                    _echo(_THREADS_NOTE.pop())
                return code
            finally:
                _THREADS_NOTE.clear()
        with (
            open(os.devnull, "w") as quiet,
            contextlib.redirect_stdout(quiet),
            contextlib.redirect_stderr(quiet),
        ):
            return int(args.func(args) or 0)


#: Options whose value is a local path, recorded relative to the current directory (a
#: ``--references`` choice such as ``auto`` is not absolute and stays as it is).
_PATH_OPTIONS = ("--out", "--data-dir", "--references")


def _portable(argv: Sequence[str]) -> list[str]:
    """Return ``argv`` as it is recorded (result.json ``command``, reports): ``--out``,
    ``--data-dir`` and a ``--references`` file relative to the current directory when they lie
    under it, so that a reader can re-run the command from a clone instead of getting this
    machine's absolute paths."""
    cwd = Path.cwd()

    def relative(value: str) -> str:
        path = Path(value).expanduser()
        if not path.is_absolute():
            return value
        try:
            return Path(os.path.normpath(path)).relative_to(cwd).as_posix() or "."
        except ValueError:  # elsewhere: only the absolute path says where
            return value

    out = list(argv)
    for i, word in enumerate(out):
        option, eq, value = word.partition("=")
        if option in _PATH_OPTIONS and eq:
            out[i] = f"{option}={relative(value)}"
        elif i and argv[i - 1] in _PATH_OPTIONS:
            out[i] = relative(word)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``bayesagg`` command line; return the exit code (2 for a usage error)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # --help, --version, or a usage error already printed
        return int(stop.code or 0)
    args.command_line = "bayesagg " + shlex.join(_portable(argv))
    try:
        return _distributed(args, argv)
    except (ConfigError, MissingDataError) as err:
        print(f"bayesagg {args.command}: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except FloatingPointError as err:
        print(f"bayesagg {args.command}: training failed: {err}", file=sys.stderr)
        return 1
    except OSError as err:  # found during the work: a full disk, a folder made read-only
        print(f"bayesagg {args.command}: failed: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(
            f"bayesagg {args.command}: interrupted; finished runs are kept, run the same "
            "command again to resume",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
