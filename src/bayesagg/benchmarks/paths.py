"""Where the benchmarks' data lives: ``--data-dir``, else ``$BAYESAGG_DATA_DIR``, else ``../shared/data``.

The last is resolved from the project's root (the folder holding ``pyproject.toml``, for a
source checkout), never from the current directory, so a command finds it from anywhere.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeAlias

__all__ = ["ENV_VAR", "DataDir", "MissingDataError", "data_root", "dataset_dir", "folder_locator"]

ENV_VAR = "BAYESAGG_DATA_DIR"

#: A data loader's ``data_dir`` argument: a folder, or None for the default data root.
DataDir: TypeAlias = str | os.PathLike[str] | None


class MissingDataError(FileNotFoundError):
    """A benchmark's data is not where it was looked for; the message says how to fix it."""


def data_root(data_dir: DataDir = None) -> Path | None:
    """Return the data root to use, or None when none is given and no default exists.

    Order: the explicit ``data_dir``, then ``$BAYESAGG_DATA_DIR``, then ``../shared/data``
    relative to the project's root (this project's machines keep the real data there).
    """
    if data_dir is not None:
        return Path(data_dir).expanduser()
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    default = _project_root()
    if default is None:
        return None
    default = default.parent / "shared" / "data"
    return default.resolve() if default.is_dir() else None


def _project_root() -> Path | None:
    """Return the source checkout's root (src/bayesagg/benchmarks/ -> 3 up), None if installed."""
    root = Path(__file__).resolve().parents[3]
    return root if (root / "pyproject.toml").is_file() else None


def dataset_dir(name: str, data_dir: DataDir = None) -> Path:
    """Return ``<root>/<name>``, raising :class:`MissingDataError` that names the fix if absent."""
    root = data_root(data_dir)
    if root is None:
        raise MissingDataError(
            f"no data directory for {name!r}: pass --data-dir DIR (containing {name}/) "
            f"or set ${ENV_VAR}"
        )
    path = root / name
    if not path.is_dir():
        raise MissingDataError(
            f"data for {name!r} not found at {path}: pass --data-dir DIR whose {name}/ folder "
            f"holds the files, or set ${ENV_VAR}"
        )
    return path


def folder_locator(name: str) -> Callable[..., str]:
    """Return a data module's ``locate`` for data kept in ``<root>/<name>``.

    The returned ``locate(data_dir=None)`` says where the module's ``load`` would read the data
    from, without reading it (a folder check: cheap enough for ``bayesagg list``), and raises
    :class:`MissingDataError` naming the fix if it is absent.
    """

    def locate(data_dir: DataDir = None) -> str:
        return str(dataset_dir(name, data_dir))

    locate.__doc__ = (
        f"Return where ``load`` would read the data from (``<root>/{name}``), without reading "
        "it; raise MissingDataError naming the fix if it is absent."
    )
    return locate
