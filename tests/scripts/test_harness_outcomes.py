"""What a DAG run did, read from its metadata database (scripts/harness/outcomes.py)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from harness.outcomes import DagOutcome, OutputFile, decode_xcom, read_outcome


class TestDecodeXcom:
    @pytest.mark.parametrize(
        ("stored", "value"),
        [
            ('{"path": "/p", "rows": 3}', {"path": "/p", "rows": 3}),
            (json.dumps(json.dumps({"rows": 3})), {"rows": 3}),
            ("not json", "not json"),
            (b"[1, 2]", [1, 2]),
        ],
    )
    def test_decodes_stored_json(self, stored: str | bytes, value: object) -> None:
        assert decode_xcom(stored) == value


def write_metadata(path: Path) -> None:
    """The three tables the outcome is read from, with one run of ``nightly``: two tasks, one output."""
    with sqlite3.connect(path) as database:
        database.executescript(
            """
            CREATE TABLE dag_run (id INTEGER PRIMARY KEY, dag_id TEXT, run_id TEXT, state TEXT);
            CREATE TABLE task_instance (dag_id TEXT, run_id TEXT, task_id TEXT, state TEXT,
                                        start_date TEXT, end_date TEXT);
            CREATE TABLE xcom (dag_id TEXT, run_id TEXT, task_id TEXT, map_index INTEGER,
                               key TEXT, value TEXT);
            INSERT INTO dag_run VALUES (1, 'nightly', 'old', 'failed'), (2, 'nightly', 'r1', 'success');
            INSERT INTO task_instance VALUES
                ('nightly', 'r1', 'score', 'success', '2026-01-01 00:00:00', '2026-01-01 00:00:10'),
                ('nightly', 'r1', 'count', 'success', '2026-01-01 00:00:10', '2026-01-01 00:00:12.5');
            INSERT INTO xcom VALUES
                ('nightly', 'r1', 'score', -1, 'return_value', '{"path": "/out.parquet", "rows": 4}'),
                ('nightly', 'r1', 'count', 0, 'return_value', '7');
            """
        )


class TestReadOutcome:
    def test_reads_the_newest_run(self, tmp_path: Path) -> None:
        write_metadata(tmp_path / "airflow.db")
        outcome = read_outcome(
            tmp_path / "airflow.db", "nightly", DagOutcome("nightly", "not run", 0.0, tmp_path)
        )
        assert (outcome.state, outcome.seconds, outcome.task_states) == ("success", 12.5, {"success": 2})
        assert outcome.outputs == [OutputFile("score", "/out.parquet", 4)]
        assert outcome.results == [("count[0]", 7)]
        assert outcome.succeeded and outcome.rows_scored == 4

    def test_a_dag_without_a_run_keeps_the_fallback(self, tmp_path: Path) -> None:
        write_metadata(tmp_path / "airflow.db")
        fallback = DagOutcome("other", "timed out", 900.0, tmp_path)
        assert read_outcome(tmp_path / "airflow.db", "other", fallback) == DagOutcome(
            "other", "timed out", 900.0, tmp_path
        )
