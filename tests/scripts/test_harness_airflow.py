"""Airflow as the scripts run it (scripts/harness/airflow.py): environment, database, DAG selection."""

from __future__ import annotations

import os
from importlib import metadata
from pathlib import Path

import pytest
from harness.airflow import (
    AirflowCommandError,
    create_database,
    json_list_in_output,
    run_airflow,
    run_environment,
    select_dag_ids,
)
from harness.layout import RunLayout
from harness.processes import ProcessSupervisor


@pytest.fixture
def layout(tmp_path: Path) -> RunLayout:
    layout = RunLayout.in_folder(tmp_path / "run", dags_folder=tmp_path)
    layout.create()
    return layout


class TestRunEnvironment:
    def test_points_airflow_at_the_layout(self, layout: RunLayout) -> None:
        env = run_environment(layout)
        assert env["AIRFLOW_HOME"] == str(layout.home)
        assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] == f"sqlite:///{layout.database}"
        assert env["AIRFLOW__CORE__DAGS_FOLDER"] == str(layout.dags_folder)
        assert env["AIRFLOW__MODELBIT__CALLBACK_STORE"] == str(layout.callback_store)
        assert env["MODELBIT_EXAMPLES_DATA"] == str(layout.data)

    def test_leaves_out_the_airflow_settings_of_the_calling_shell(
        self, layout: RunLayout, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("AIRFLOW__CORE__EXECUTOR", "CeleryExecutor")
        monkeypatch.setenv("AIRFLOW_CONN_MODELBIT_DEFAULT", "modelbit://elsewhere")
        env = run_environment(layout)
        assert "AIRFLOW__CORE__EXECUTOR" not in env
        assert "AIRFLOW_CONN_MODELBIT_DEFAULT" not in env


class TestCreateDatabase:
    def test_a_cached_database_is_copied_instead_of_migrating(
        self, layout: RunLayout, tmp_path: Path
    ) -> None:
        cache = tmp_path / "cache"
        cache.mkdir()
        (cache / f"airflow-{metadata.version('apache-airflow-core')}.db").write_bytes(b"migrated")
        with ProcessSupervisor() as supervisor:
            create_database(supervisor, layout, run_environment(layout), cache)
        assert layout.database.read_bytes() == b"migrated"
        assert not (layout.logs_folder / "airflow-db-migrate.log").exists()


class TestRunAirflow:
    def test_a_failing_command_names_itself_and_its_log(self, layout: RunLayout, tmp_path: Path) -> None:
        expected = r"'airflow nope' exited with 2; see .*nope\.log"
        with ProcessSupervisor() as supervisor, pytest.raises(AirflowCommandError, match=expected):
            run_airflow(supervisor, ["nope"], dict(os.environ), tmp_path / "nope.log", timeout=300)
        assert (tmp_path / "nope.log").stat().st_size > 0


class TestDagSelection:
    @pytest.mark.parametrize(
        ("only", "selected"),
        [([], ["a", "b", "c"]), (["c", "a"], ["a", "c"]), (["b"], ["b"])],
    )
    def test_keeps_the_listing_order(self, only: list[str], selected: list[str]) -> None:
        assert select_dag_ids(["a", "b", "c"], only) == selected

    def test_unknown_dag_names_the_known_ones(self) -> None:
        with pytest.raises(AirflowCommandError, match=r"\['x'\].*\['a', 'b'\]"):
            select_dag_ids(["a", "b"], ["x"])

    def test_the_listing_is_found_among_warnings(self) -> None:
        output = 'WARNING something\n[1] not json either\n[{"dag_id": "a"}]\n'
        assert json_list_in_output(output) == [{"dag_id": "a"}]

    def test_output_without_a_listing_is_an_error(self) -> None:
        with pytest.raises(AirflowCommandError, match="printed no DAG listing"):
            json_list_in_output("Traceback ...")
