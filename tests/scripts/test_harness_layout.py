"""One layout for a run's folders (scripts/harness/layout.py), and the run folder only a run may delete."""

from __future__ import annotations

from pathlib import Path

import pytest
from harness.layout import RUN_FOLDER_MARKER, LayoutError, RunLayout, recreate_run_folder


class TestRunLayout:
    def test_a_run_folder_holds_home_logs_data_and_callbacks(self, tmp_path: Path) -> None:
        layout = RunLayout.in_folder(tmp_path / "run", dags_folder=tmp_path)
        assert layout.home == tmp_path / "run" / "airflow-home"
        assert layout.database == layout.home / "airflow.db"
        assert layout.task_logs == tmp_path / "run" / "logs" / "tasks"
        assert (layout.data, layout.callback_store) == (
            tmp_path / "run" / "data",
            tmp_path / "run" / "callbacks",
        )

    def test_create_makes_every_folder(self, tmp_path: Path) -> None:
        layout = RunLayout.in_folder(tmp_path / "run", dags_folder=tmp_path)
        layout.create()
        for folder in (layout.home, layout.task_logs, layout.data, layout.callback_store):
            assert folder.is_dir()

    def test_a_missing_dags_folder_is_named(self, tmp_path: Path) -> None:
        layout = RunLayout.in_folder(tmp_path / "run", dags_folder=tmp_path / "no-dags")
        with pytest.raises(LayoutError, match=r"DAGs folder .*no-dags does not exist"):
            layout.create()


class TestRecreateRunFolder:
    def test_empties_a_folder_a_run_created(self, tmp_path: Path) -> None:
        recreate_run_folder(tmp_path / "run")
        (tmp_path / "run" / "old.parquet").write_bytes(b"old")
        recreate_run_folder(tmp_path / "run")
        assert not (tmp_path / "run" / "old.parquet").exists()
        assert (tmp_path / "run" / RUN_FOLDER_MARKER).exists()

    def test_refuses_to_delete_a_folder_no_run_created(self, tmp_path: Path) -> None:
        (tmp_path / "precious.txt").write_text("keep me")
        with pytest.raises(LayoutError, match=r"not created by run_examples\.py"):
            recreate_run_folder(tmp_path)
        assert (tmp_path / "precious.txt").exists()
