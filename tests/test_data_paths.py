"""The data root: ``--data-dir``, ``$BAYESAGG_DATA_DIR``, else ``../shared/data`` of the project."""

from __future__ import annotations

from pathlib import Path

from bayesagg.benchmarks.paths import ENV_VAR, data_root

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
