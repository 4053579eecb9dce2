"""The REST client (scripts/airflow_rest.py) against the real api-server: runs, states, logs."""

from __future__ import annotations

from typing import Any

import pytest
from airflow_rest import AirflowRestClient, AirflowRestError, log_entry_text

HELLO_MARKER = "harness says hello"  # printed by dags/harness_checks.py


class TestLogEntryText:
    """Structured log entries become one readable line each."""

    @pytest.mark.parametrize(
        ("entry", "expected"),
        [
            ({"event": "hello", "level": "info", "logger": "task"}, "[info] hello"),
            (
                {"event": "boom", "level": "error", "error_detail": ["ValueError"]},
                "[error] boom ['ValueError']",
            ),
            ("plain source line", "plain source line"),
        ],
    )
    def test_formats(self, entry: Any, expected: str) -> None:
        assert log_entry_text(entry) == expected


@pytest.mark.services
class TestAirflowRestClient:
    """Trigger, wait, inspect: what end-to-end tests do through ``/api/v2``."""

    def test_a_triggered_run_succeeds_and_its_log_is_readable(self, rest_client: AirflowRestClient) -> None:
        rest_client.wait_for_dag("harness_hello")
        run_id = rest_client.trigger_dag_run("harness_hello")
        assert rest_client.wait_for_dag_run("harness_hello", run_id, timeout=180) == "success"
        assert rest_client.task_states("harness_hello", run_id) == {"say_hello": "success"}
        assert HELLO_MARKER in rest_client.task_log("harness_hello", run_id, "say_hello")

    def test_a_deferring_task_is_seen_in_state_deferred(self, rest_client: AirflowRestClient) -> None:
        rest_client.wait_for_dag("harness_deferred")
        run_id = rest_client.trigger_dag_run("harness_deferred")
        state = rest_client.wait_for_task_state(
            "harness_deferred", run_id, "wait_in_triggerer", {"deferred"}, timeout=120
        )
        assert state == "deferred"
        assert rest_client.wait_for_dag_run("harness_deferred", run_id, timeout=180) == "success"

    def test_a_failing_task_fails_the_run_and_its_log_holds_the_error(
        self, rest_client: AirflowRestClient
    ) -> None:
        rest_client.wait_for_dag("harness_failure")
        run_id = rest_client.trigger_dag_run("harness_failure")
        assert rest_client.wait_for_dag_run("harness_failure", run_id, timeout=180) == "failed"
        assert "planned failure for the harness test" in rest_client.task_log(
            "harness_failure", run_id, "fail_on_purpose"
        )

    def test_a_wait_that_runs_out_names_the_task_and_its_state(self, rest_client: AirflowRestClient) -> None:
        rest_client.wait_for_dag("harness_hello")
        run_id = rest_client.trigger_dag_run("harness_hello")
        with pytest.raises(AirflowRestError, match=r"task harness_hello/.*/say_hello is .*wanted one of"):
            rest_client.wait_for_task_state("harness_hello", run_id, "say_hello", {"up_for_reschedule"}, 1)

    def test_an_unknown_dag_is_reported_with_the_parse_status(self, rest_client: AirflowRestClient) -> None:
        with pytest.raises(AirflowRestError, match="DAG 'no_such_dag' was not parsed; no import errors"):
            rest_client.wait_for_dag("no_such_dag", timeout=1)

    def test_a_refused_call_says_what_was_attempted(self, rest_client: AirflowRestClient) -> None:
        with pytest.raises(AirflowRestError, match=r"Could not unpause DAG 'no_such_dag'.*answered 404"):
            rest_client.trigger_dag_run("no_such_dag")

    def test_connections_can_be_replaced(self, rest_client: AirflowRestClient) -> None:
        connection = {"connection_id": "rest_probe", "conn_type": "http", "host": "first.example"}
        rest_client.upsert_connection(connection)
        rest_client.upsert_connection({**connection, "host": "second.example"})
        assert rest_client.get_connection("rest_probe")["host"] == "second.example"
