"""One process per run folder: a lock file, and the clean-up it makes safe.

Two identical commands into one ``--out`` would otherwise both train the same run, each
overwriting the other's checkpoint and, at the end, its ``result.json``. While a process
trains a run it holds an exclusive ``flock`` on ``<run folder>/.lock``, whose text names the
process (pid, host, start, command). Another process that finds the lock taken stops at once
with a one-line error naming that process; the kernel drops the lock of a process that died
(even by SIGKILL), so a stale lock file is simply taken over, and said so. The file is removed
when the run ends.

Holding the lock is also what makes it safe to delete the temporary files an interrupted run
left behind (``.checkpoint.pt.*.tmp``, ``.result.json.*.tmp``, ``epochs.csv.tmp``): no other
process can be writing them.

Where ``fcntl`` is missing (Windows), runs are not locked.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import socket
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

from bayesagg.runner.config import ConfigError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "LOCK_FILE",
    "RunLock",
    "RunLocked",
    "process_alive",
    "process_record",
    "remove_stale_temporaries",
]

LOCK_FILE = ".lock"
#: Temporary files of the atomic writes (checkpoint, result, epoch log) in a run folder.
TEMPORARY_PATTERNS = (".checkpoint.pt.*.tmp", ".result.json.*.tmp", "epochs.csv.tmp")


class RunLocked(ConfigError):
    """The run folder is held by another live process."""


def _start_ticks(pid: int) -> int | None:
    """Return the process's start time in clock ticks since boot (Linux), else None.

    Recorded with the pid so that a pid reused by an unrelated process is not taken for the
    one that held a run.
    """
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ")".
    fields = text.rpartition(")")[2].split()
    try:
        return int(fields[19])  # field 22 of proc(5): starttime
    except (IndexError, ValueError):
        return None


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def process_record(command: str | None = None) -> dict[str, Any]:
    """Return what identifies this process to others: pid, host, start, and the command."""
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "start_ticks": _start_ticks(os.getpid()),
        "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
    }


def process_alive(record: dict[str, Any]) -> bool | None:
    """Return whether the process of ``record`` still runs: None if it runs on another host.

    A pid that exists but started at another time (reused), or a zombie, counts as dead.
    """
    if record.get("host") != socket.gethostname():
        return None
    try:
        pid = int(record["pid"])
    except (KeyError, TypeError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: it exists
    if _zombie(pid):
        return False
    ticks = record.get("start_ticks")
    return ticks is None or _start_ticks(pid) in (None, ticks)


def _describe(record: dict[str, Any] | None) -> str:
    if not record:
        return "another process"
    text = f"process {record.get('pid')} on {record.get('host')}"
    if record.get("started"):
        text += f" (since {record['started']}"
        text += f": {record['command']})" if record.get("command") else ")"
    return text


def _read_record(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


class RunLock:
    """The exclusive lock of one run folder, held while that run trains (a context manager)."""

    def __init__(
        self,
        folder: str | os.PathLike[str],
        command: str | None = None,
        echo: Callable[[str], None] | None = None,
    ) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_FILE
        self.command = command
        self.say = echo or (lambda _msg: None)
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock, or raise :class:`RunLocked` naming the process that holds it."""
        if fcntl is None or self._fd is not None:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise RunLocked(
                    f"run folder {self.folder} is being trained by "
                    f"{_describe(_read_record(self.path))}: wait for it to finish (the same "
                    "command then skips the run) or stop that process"
                ) from None
            except BaseException:
                os.close(fd)
                raise
            # A process releasing the lock unlinks the file before unlocking it: if the path
            # now names another file (or none), this lock is on a dead inode, so try again.
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        previous = _read_record(self.path)
        if previous and previous.get("pid") != os.getpid():
            self.say(f"taking over the lock of {self.folder} from {_describe(previous)}: it ended")
        os.ftruncate(fd, 0)
        os.write(fd, (json.dumps(process_record(self.command)) + "\n").encode())
        self._fd = fd

    def release(self) -> None:
        """Remove the lock file and drop the lock (removed first: see :meth:`acquire`)."""
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.release()


def remove_stale_temporaries(
    folder: str | os.PathLike[str], echo: Callable[[str], None] | None = None
) -> list[Path]:
    """Delete the temporary files a killed run left in ``folder``; return them.

    Only safe while holding the folder's :class:`RunLock`: then no process is writing them.
    """
    folder = Path(folder)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for pattern in TEMPORARY_PATTERNS:
        for path in sorted(folder.glob(pattern)):
            if path.is_file():
                path.unlink(missing_ok=True)
                removed.append(path)
    if removed and echo is not None:
        echo(
            f"removed {len(removed)} temporary file(s) an interrupted run left in {folder}: "
            + ", ".join(p.name for p in removed)
        )
    return removed
