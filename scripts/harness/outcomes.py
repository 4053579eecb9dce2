"""What a DAG run did, read back from the run's SQLite metadata database.

The state and duration of the newest run of a DAG, its task states, and the tasks' return values:
a value ``{"path": ..., "rows": ...}`` is a Parquet file the task wrote, anything else a result.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class OutputFile:
    """A Parquet file an example task reported writing (its XCom ``{"path", "rows", ...}``)."""

    task: str
    path: str
    rows: int


@dataclass
class DagOutcome:
    """
    What one DAG run did.

    :param dag_id: the DAG.
    :param state: ``success``, ``failed``, or why there is no run (``not run``, ``timed out``).
    :param seconds: duration of the DAG run (wall clock of the command when the run has no times).
    :param log_file: the output to read when it failed.
    :param task_states: number of task instances in each state.
    :param outputs: the Parquet files its tasks wrote.
    :param results: the other return values, as ``(task, value)``.
    """

    dag_id: str
    state: str
    seconds: float
    log_file: Path
    task_states: dict[str, int] = field(default_factory=dict)
    outputs: list[OutputFile] = field(default_factory=list)
    results: list[tuple[str, Any]] = field(default_factory=list)

    @property
    def succeeded(self) -> bool:
        return self.state == "success"

    @property
    def rows_scored(self) -> int | None:
        return sum(output.rows for output in self.outputs) if self.outputs else None


def read_outcome(database_path: Path, dag_id: str, fallback: DagOutcome) -> DagOutcome:
    """Fill ``fallback`` with the DAG's newest run: state, duration, task states and return values."""
    with contextlib.closing(sqlite3.connect(database_path)) as database:
        run = latest_run(database, dag_id)
        if run is None:
            return fallback
        run_id, state, seconds = run
        fallback.state = state
        fallback.seconds = seconds if seconds is not None else fallback.seconds
        fallback.task_states = task_state_counts(database, dag_id, run_id)
        for task, value in task_return_values(database, dag_id, run_id):
            output = as_output_file(task, value)
            if output is not None:
                fallback.outputs.append(output)
            else:
                fallback.results.append((task, value))
    return fallback


def latest_run(database: sqlite3.Connection, dag_id: str) -> tuple[str, str, float | None] | None:
    """(run_id, state, seconds) of the DAG's newest run, or ``None`` when it has none."""
    row = database.execute(
        "SELECT run_id, state FROM dag_run WHERE dag_id = ? ORDER BY id DESC LIMIT 1", (dag_id,)
    ).fetchone()
    if row is None:
        return None
    run_id, state = row
    return str(run_id), str(state), tasks_span_seconds(database, dag_id, run_id)


def tasks_span_seconds(database: sqlite3.Connection, dag_id: str, run_id: str) -> float | None:
    # 'dags test' stamps the run's start with its logical date, so time the run by its tasks.
    start, end = database.execute(
        "SELECT min(start_date), max(end_date) FROM task_instance WHERE dag_id = ? AND run_id = ?",
        (dag_id, run_id),
    ).fetchone()
    if not (start and end):
        return None
    return (parse_timestamp(end) - parse_timestamp(start)).total_seconds()


def parse_timestamp(text: str) -> datetime:
    return datetime.fromisoformat(text.replace(" ", "T"))


def task_state_counts(database: sqlite3.Connection, dag_id: str, run_id: str) -> dict[str, int]:
    rows = database.execute(
        "SELECT coalesce(state, 'none'), count(*) FROM task_instance"
        " WHERE dag_id = ? AND run_id = ? GROUP BY state",
        (dag_id, run_id),
    ).fetchall()
    return {str(state): int(count) for state, count in rows}


def task_return_values(database: sqlite3.Connection, dag_id: str, run_id: str) -> list[tuple[str, Any]]:
    """Each task's return value (mapped tasks as ``task[index]``), in task order."""
    rows = database.execute(
        "SELECT task_id, map_index, value FROM xcom WHERE dag_id = ? AND run_id = ?"
        " AND key = 'return_value' ORDER BY task_id, map_index",
        (dag_id, run_id),
    ).fetchall()
    return [
        (task_id if map_index < 0 else f"{task_id}[{map_index}]", decode_xcom(value))
        for task_id, map_index, value in rows
    ]


def as_output_file(task: str, value: Any) -> OutputFile | None:
    """The Parquet file a task reported writing (a return value ``{"path", "rows", ...}``), if any."""
    if isinstance(value, dict) and isinstance(value.get("path"), str) and "rows" in value:
        return OutputFile(task=task, path=value["path"], rows=int(value["rows"]))
    return None


def decode_xcom(value: Any) -> Any:
    # XCom values are stored as JSON; depending on the writer a document may be encoded twice.
    try:
        decoded = json.loads(value)
        if isinstance(decoded, str) and decoded.startswith(("{", "[")):
            decoded = json.loads(decoded)
    except (TypeError, ValueError):
        return value
    return decoded


__all__ = ["DagOutcome", "OutputFile", "as_output_file", "decode_xcom", "read_outcome"]
