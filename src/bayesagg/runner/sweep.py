"""``bayesagg sweep``: a hyper-parameter search over a method's published grid, with Optuna.

Each trial is one point of the method's grid (methods/search_spaces.py) trained as ordinary
runs (one run folder per seed, resumable from its checkpoint); its value is the protocol's
validation criterion at the selected epoch (the one ``run`` selects on), averaged over seeds.
The study lives in an Optuna storage: by default an SQLite file ``<out>/sweeps.db``, or any
database URL Optuna accepts, so that processes on several machines share one study.

``--trials N`` is the number of finished (complete) trials the study should have: running the
same command again continues it, and a run interrupted inside a trial resumes from its
checkpoint. Several processes may work on one study at once: a process takes the first grid
point that no other trial has finished, is running, or failed on; if two processes take the
same point at the same instant, the trial with the higher number sees the other one's
parameters in the storage and steps aside (state PRUNED, user attribute ``duplicate_of``), so
no point is trained twice. Likewise, if two processes both see room for one more trial, the
one whose trial has the higher number finds ``--trials`` trials ahead of it (complete or
running) and steps aside (user attribute ``surplus``), so the study does not overshoot
``--trials``. A process killed inside a trial stops sending Optuna's heartbeat;
after the grace period its trial is marked failed and its point is free again. Each trial also
records its process (pid, host, start time), so a rerun on the same host fails the trial of a
process that has ended at once, rather than taking it for one running elsewhere.

After every trial the study's summary is written to ``<out>/sweeps/<study>.json``, which
``bayesagg report`` shows (the chosen settings and every trial).
"""

from __future__ import annotations

import datetime as _dt
import math
import statistics
import warnings
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from bayesagg.methods.search_spaces import search_space
from bayesagg.runner.checks import check_seed, check_writable
from bayesagg.runner.config import ConfigError, RunConfig, check_device
from bayesagg.runner.lock import process_alive, process_record
from bayesagg.runner.plan import plan
from bayesagg.runner.results import protocol_dir, read_json, run_dir, write_json_atomic
from bayesagg.runner.run import run
from bayesagg.runner.splits import SplitsCache
from bayesagg.tasks import task_kinds

__all__ = ["SUMMARY_DIR", "default_storage", "sweep", "sweeps_report"]

SUMMARY_DIR = "sweeps"
#: Seconds between a running trial's heartbeats, and without one before it counts as dead.
HEARTBEAT_SECONDS = 30
GRACE_SECONDS = 120
#: The trial's user attribute naming the process that runs it (runner/lock.py's record).
PROCESS_ATTR = "process"


def default_storage(out: str | Path) -> str:
    """Return the default storage: the SQLite file ``<out>/sweeps.db`` (absolute)."""
    return f"sqlite:///{(Path(out) / 'sweeps.db').resolve()}"


def _optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise ConfigError(
            "bayesagg sweep needs Optuna: pip install 'bayesagg-mtl[sweep]'"
        ) from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def _key(params: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((k, repr(v)) for k, v in params.items()))


def _taken(study: Any, trial_number: int | None = None) -> dict[tuple, int]:
    """Return {grid point: trial number} of every point finished, running or failed on."""
    from optuna.trial import TrialState

    out: dict[tuple, int] = {}
    for t in study.get_trials(deepcopy=False):
        if t.number == trial_number or not t.params:
            continue
        failed_here = t.state == TrialState.FAIL and "error" in t.user_attrs
        if t.state in (TrialState.COMPLETE, TrialState.RUNNING) or failed_here:
            key = _key(t.params)
            out[key] = min(out.get(key, t.number), t.number)
    return out


def _counted(study: Any) -> list[Any]:
    """Return the trials that count towards ``--trials``: complete or running."""
    from optuna.trial import TrialState

    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING))


def _room(study: Any) -> tuple[list[Any], list[Any]]:
    """Return (complete, running) trials: what the loop checks before starting another."""
    from optuna.trial import TrialState

    counted = _counted(study)
    return (
        [t for t in counted if t.state == TrialState.COMPLETE],
        [t for t in counted if t.state == TrialState.RUNNING],
    )


def sweep(
    base: RunConfig,
    *,
    trials: int,
    seeds: Sequence[int] = (0,),
    study_name: str | None = None,
    storage: str | None = None,
    progress: bool = False,
    command: str | None = None,
    device: str = "cpu",
    echo: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Bring the study to ``trials`` complete trials (or the whole grid); return its summary."""
    optuna = _optuna()

    say = echo or (lambda _msg: None)
    if trials < 1:
        raise ConfigError(f"--trials must be >= 1, got {trials}")
    if not seeds:
        raise ConfigError("--seeds is empty: give e.g. --seeds 0,1,2")
    for seed in seeds:
        check_seed(seed, "--seeds")
    check_device(device)
    p = plan(replace(base, seed=seeds[0]))
    base = replace(p.config, seed=seeds[0])
    try:
        space = search_space(base.method, task_kinds(p.groups))
    except KeyError as err:
        raise ConfigError(str(err.args[0])) from None
    clash = sorted(set(space.grid) & set(base.hparams))
    if clash:
        raise ConfigError(f"--hp {', '.join(clash)}: searched by the sweep, do not fix them")
    criterion = p.criterion()
    data = SplitsCache()  # the trials' runs share their data
    direction = "minimize" if criterion.mode == "min" else "maximize"
    name = study_name or f"{base.benchmark}-{protocol_dir(base).name}-{base.method}"
    url = storage or default_storage(base.out)
    check_writable(base.out, "results folder")
    Path(base.out).mkdir(parents=True, exist_ok=True)

    class ChosenPoint(optuna.samplers.BaseSampler):
        """Suggests the grid point this process chose (grids are walked, not sampled)."""

        def __init__(self) -> None:
            self.point: dict[str, Any] = {}

        def infer_relative_search_space(self, study: Any, trial: Any) -> dict[str, Any]:
            return {}

        def sample_relative(self, study: Any, trial: Any, search_space: Any) -> dict[str, Any]:
            return {}

        def sample_independent(self, study: Any, trial: Any, param_name: str, dist: Any) -> Any:
            return self.point[param_name]

    sampler = ChosenPoint()
    study = _open_study(optuna, url, name, direction, sampler)
    if study.direction.name.lower() != direction:
        raise ConfigError(
            f"study {name!r} in {url} was created to {study.direction.name.lower()}, this "
            f"sweep's criterion {criterion.name!r} needs {direction}: use another --study"
        )
    identity = {
        "benchmark": base.benchmark,
        "method": base.method,
        "protocol_dir": protocol_dir(base).name,
        "seeds": list(seeds),
        "fixed_hparams": dict(base.hparams),
    }
    attrs = study.user_attrs
    if "identity" in attrs and attrs["identity"] != identity:
        raise ConfigError(
            f"study {name!r} in {url} searches {attrs['identity']}, not {identity}: "
            "use another --study"
        )
    for key, value in (
        ("identity", identity),
        ("grid", {k: list(v) for k, v in space.grid.items()}),
        ("source", space.source),
        ("criterion", criterion.name),
    ):
        if key not in attrs:
            study.set_user_attr(key, value)

    def objective(trial: Any) -> float:
        # Which process runs the trial: a rerun on this host fails it at once if that process
        # has died, instead of waiting out the heartbeat's grace period.
        trial.set_user_attr(PROCESS_ATTR, process_record(command))
        point = {k: trial.suggest_categorical(k, list(v)) for k, v in space.grid.items()}
        first = _taken(study, trial.number).get(_key(point))
        if first is not None and first < trial.number:
            trial.set_user_attr("duplicate_of", first)
            raise optuna.TrialPruned(f"grid point taken by trial {first}")
        # Two processes may both have seen room for one more trial; the storage numbers
        # trials atomically, so the later one steps aside and --trials is not overshot.
        ahead = [t for t in _counted(study) if t.number < trial.number]
        if len(ahead) >= trials:
            trial.set_user_attr("surplus", True)
            raise optuna.TrialPruned(f"{len(ahead)} trials already complete or running")
        # Optuna's trial number, the one the summary and the report show, in every message.
        say(
            f"study {name}: trial {trial.number} {point}: training ({progress_count[0]} of "
            f"{trials} complete trials so far)"
        )
        values, folders = [], []
        for seed in seeds:
            config = replace(base, seed=seed, hparams={**base.hparams, **point})
            folders.append(str(run_dir(config)))
            trial.set_user_attr("runs", folders)
            try:
                [result] = run(
                    config,
                    progress=progress,
                    command=command,
                    device=device,
                    echo=say,
                    data=data,
                )
            except FloatingPointError as err:
                trial.set_user_attr("error", str(err))
                say(f"trial {trial.number} {point}: {err}")
                return math.nan  # Optuna marks the trial failed; the point is not retried
            value = result["selection"]["value"]
            if value is None:
                trial.set_user_attr("error", f"criterion undefined (seed {seed})")
                return math.nan
            values.append(float(value))
        value = statistics.fmean(values)
        say(f"trial {trial.number} {point}: {criterion.name} = {value:.6g}")
        return value

    points = space.points()
    progress_count = [0]  # complete trials when the next one starts, for its message
    summary_file = Path(base.out) / SUMMARY_DIR / f"{_slug(name)}.json"

    def write_summary() -> dict[str, Any]:
        summary = _summary(study, url, space, criterion.name, direction, trials)
        write_json_atomic(summary_file, summary)
        return summary

    while True:
        # Trials of killed processes (no heartbeat for GRACE_SECONDS) fail, freeing their points.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
        _fail_dead_trials(study, say)
        done, running = _room(study)
        if len(done) >= trials:
            say(f"study {name}: {len(done)} complete trials (asked for {trials})")
            break
        if len(done) + len(running) >= trials:
            say(f"study {name}: the remaining trials are running in {_runners(running)}")
            break
        taken = _taken(study)
        free = [q for q in points if _key(q) not in taken]
        if not free:
            say(f"study {name}: every point of the {len(points)}-point grid is taken")
            break
        sampler.point = free[0]
        progress_count[0] = len(done)
        try:
            study.optimize(objective, n_trials=1)
        finally:
            write_summary()  # after every trial, also one cut short
    return write_summary()


def _fail_dead_trials(study: Any, say: Callable[[str], None]) -> None:
    """Fail the running trials whose process (on this host) has ended: their points are free.

    Optuna's heartbeat frees a killed process's trial only after GRACE_SECONDS; until then a
    rerun would take it for a trial running elsewhere. A trial records its process (pid,
    host, start time); where that process no longer runs here, the trial is failed now.
    Trials of other hosts, or without the record, are left to the heartbeat.
    """
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        record = t.user_attrs.get(PROCESS_ATTR)
        if not isinstance(record, dict) or process_alive(record) is not False:
            continue
        try:
            study._storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
        except UpdateFinishedTrialError:
            continue  # finished or failed meanwhile, by its process or another rerun
        say(
            f"study {study.study_name}: trial {t.number} {t.params}: its process "
            f"{record.get('pid')} has ended; marked failed, its point is free again"
        )


def _runners(running: Sequence[Any]) -> str:
    """Return which processes run the given trials, for a message."""
    named = []
    for t in running:
        record = t.user_attrs.get(PROCESS_ATTR)
        if isinstance(record, dict):
            named.append(f"trial {t.number}: process {record.get('pid')} on {record.get('host')}")
        else:
            named.append(f"trial {t.number}: another process")
    return "another process (" + "; ".join(named) + ")" if named else "another process"


def _open_study(optuna: Any, url: str, name: str, direction: str, sampler: Any) -> Any:
    """Open (or create) the study; retried, since processes that start together on a new
    database race to create its tables (Optuna's schema set-up is not atomic)."""
    import time

    for attempt in range(6):
        try:
            with warnings.catch_warnings():
                # Heartbeats are marked experimental in Optuna; they free killed trials.
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                rdb = optuna.storages.RDBStorage(
                    url, heartbeat_interval=HEARTBEAT_SECONDS, grace_period=GRACE_SECONDS
                )
            return optuna.create_study(
                study_name=name,
                storage=rdb,
                direction=direction,
                sampler=sampler,
                load_if_exists=True,
            )
        except (ValueError, ImportError) as err:
            raise ConfigError(f"--storage {url}: {err}") from None
        except Exception as err:  # SQLAlchemy: tables being created, cannot connect, ...
            if attempt == 5:
                raise ConfigError(f"--storage {url}: {type(err).__name__}: {err}") from None
            time.sleep(0.5 * (attempt + 1))
    raise AssertionError("unreachable")


def _slug(text: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9_.=+-]+", "_", text)


def _redact(url: str) -> str:
    """Return the URL without a password (``user:secret@`` -> ``user:***@``)."""
    import re

    return re.sub(r"(//[^:/@]+:)[^@]*@", r"\1***@", url)


def _summary(
    study: Any, url: str, space: Any, criterion: str, direction: str, trials: int
) -> dict[str, Any]:
    from optuna.trial import TrialState

    rows = []
    for t in study.get_trials(deepcopy=False):
        rows.append(
            {
                "number": t.number,
                "state": t.state.name,
                "params": t.params,
                "value": t.value if t.state == TrialState.COMPLETE else None,
                "runs": t.user_attrs.get("runs", []),
                **{k: t.user_attrs[k] for k in ("error", "duplicate_of") if k in t.user_attrs},
            }
        )
    complete = [r for r in rows if r["state"] == "COMPLETE"]
    best = None
    if complete:
        b = study.best_trial
        best = {"number": b.number, "params": b.params, "value": b.value}
    return {
        "schema": "bayesagg.sweep/1",
        "study": study.study_name,
        "storage": _redact(url),
        **study.user_attrs["identity"],
        "grid": study.user_attrs["grid"],
        "source": study.user_attrs["source"],
        "criterion": criterion,
        "direction": direction,
        "trials_asked": trials,
        "trials_complete": len(complete),
        "best": best,
        "trials": rows,
        "written": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def sweeps_report(root: str | Path) -> str:
    """Return the markdown section of every sweep summary under ``root`` ("" if none)."""
    paths = sorted(Path(root).rglob(f"{SUMMARY_DIR}/*.json"))
    parts: list[str] = []
    for path in paths:
        try:
            s = read_json(path)
        except (OSError, ValueError) as err:
            parts += [f"Unreadable sweep summary `{path}`: {type(err).__name__}: {err}", ""]
            continue
        if s.get("schema") != "bayesagg.sweep/1":
            continue
        best = s["best"]
        chosen = (
            ", ".join(f"{k}={v}" for k, v in best["params"].items())
            + f" (trial {best['number']}, {s['criterion']} = {best['value']:.6g})"
            if best
            else "none yet (no complete trial)"
        )
        parts += [
            f"### Sweep {s['study']}: {s['method']} on {s['benchmark']} {s['protocol_dir']}",
            "",
            f"Chosen settings: **{chosen}**; {s['trials_complete']} complete trials of "
            f"{s['trials_asked']} asked, seeds {s['seeds']}, {s['direction']} validation "
            f"{s['criterion']}. Grid: {s['grid']} ({s['source']}). Storage: {s['storage']}.",
            "",
            "| trial | state | " + " | ".join(s["grid"]) + f" | val {s['criterion']} |",
            "|---" * (len(s["grid"]) + 3) + "|",
        ]
        for t in s["trials"]:
            cells = [str(t["params"].get(k, "")) for k in s["grid"]]
            value = "" if t["value"] is None else f"{t['value']:.6g}"
            parts.append(f"| {t['number']} | {t['state']} | " + " | ".join(cells) + f" | {value} |")
        parts.append("")
    return ("## Sweeps\n\n" + "\n".join(parts)) if parts else ""
