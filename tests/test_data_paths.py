"""The data root: ``--data-dir``, ``$BAYESAGG_DATA_DIR``, else ``../shared/data`` of the project."""

from __future__ import annotations

from pathlib import Path

import pytest

from bayesagg.benchmarks.paths import ENV_VAR, MissingDataError, data_root, folder_locator

ROOT = Path(__file__).resolve().parents[1]


def test_default_is_resolved_from_the_project_root_not_the_current_directory(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    expected = ROOT.parent / "shared" / "data"
    # A ../shared/data next to the current directory is not the project's: it must be ignored.
    (tmp_path / "shared" / "data").mkdir(parents=True)
    elsewhere = tmp_path / "somewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    if expected.is_dir():
        assert data_root() == expected.resolve()
    else:
        assert data_root() is None
    monkeypatch.setenv(ENV_VAR, str(tmp_path))
    assert data_root() == tmp_path
    assert data_root("/explicit") == Path("/explicit")


def test_folder_locator_names_each_modules_own_folder(tmp_path):
    # Every image benchmark's ``locate`` is one folder check under the data root: the folder
    # its ``load`` reads, and a MissingDataError naming that folder when it is absent.
    from bayesagg.benchmarks.celeba import data as celeba
    from bayesagg.benchmarks.fashion_mtl import data as fashion
    from bayesagg.benchmarks.multimnist import data as multimnist

    (tmp_path / "mnist").mkdir()
    assert multimnist.locate(tmp_path) == str(tmp_path / "mnist")
    with pytest.raises(MissingDataError, match="fashion-mnist"):
        fashion.locate(tmp_path)
    with pytest.raises(MissingDataError, match="'celeba'"):
        celeba.locate(tmp_path)
    assert folder_locator("mnist")(str(tmp_path)) == str(tmp_path / "mnist")
