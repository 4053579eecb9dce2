"""What a DAG run did, read back from the run's metadata database (SQLite or PostgreSQL).

The state and duration of the newest run of a DAG, its task states, and the tasks' return values:
a value ``{"path": ..., "rows": ...}`` is a Parquet file the task wrote, anything else a result.
In the production shape also where each task ran: the worker of each task instance, and the
triggerer that ran each deferred task's trigger.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy
from sqlalchemy.engine import Connection

# Airflow 3's triggerer writes a trigger's log beside its task's: ``<task log>.trigger.<job id>.log``.
_TRIGGER_LOG = re.compile(
    r"run_id=(?P<run>[^/]+)/task_id=(?P<task>[^/]+)/(?:map_index=(?P<index>-?\d+)/)?"
    r"attempt=\d+\.log\.trigger\.(?P<job>\d+)\.log$"
)


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
    workers: list[tuple[str, str]] = field(default_factory=list)
    triggerers: list[tuple[str, str]] = field(default_factory=list)

    @property
    def succeeded(self) -> bool:
        return self.state == "success"

    @property
    def rows_scored(self) -> int | None:
        return sum(output.rows for output in self.outputs) if self.outputs else None


@contextmanager
def connect(database: Path | str) -> Iterator[Connection]:
    """A connection to a SQLite file (a path) or any database SQLAlchemy reaches (a URL)."""
    url = database if isinstance(database, str) and "://" in database else f"sqlite:///{database}"
    engine = sqlalchemy.create_engine(url)
    try:
        with engine.connect() as connection:
            yield connection
    finally:
        engine.dispose()


def read_outcome(database: Path | str, dag_id: str, fallback: DagOutcome) -> DagOutcome:
    """Fill ``fallback`` with the DAG's newest run: state, duration, task states and return values."""
    with connect(database) as connection:
        run = latest_run(connection, dag_id)
        if run is None:
            return fallback
        run_id, state, seconds = run
        fallback.state = state
        fallback.seconds = seconds if seconds is not None else fallback.seconds
        fallback.task_states = task_state_counts(connection, dag_id, run_id)
        for task, value in task_return_values(connection, dag_id, run_id):
            output = as_output_file(task, value)
            if output is not None:
                fallback.outputs.append(output)
            else:
                fallback.results.append((task, value))
    return fallback


def _rows(connection: Connection, query: str, **parameters: Any) -> list[Any]:
    return list(connection.execute(sqlalchemy.text(query), parameters).fetchall())


def latest_run(connection: Connection, dag_id: str) -> tuple[str, str, float | None] | None:
    """(run_id, state, seconds) of the DAG's newest run, or ``None`` when it has none."""
    query = "SELECT run_id, state FROM dag_run WHERE dag_id = :dag ORDER BY id DESC LIMIT 1"
    rows = _rows(connection, query, dag=dag_id)
    if not rows:
        return None
    run_id, state = rows[0]
    return str(run_id), str(state), tasks_span_seconds(connection, dag_id, run_id)


def tasks_span_seconds(connection: Connection, dag_id: str, run_id: str) -> float | None:
    # 'dags test' stamps the run's start with its logical date, so time the run by its tasks.
    start, end = _rows(
        connection,
        "SELECT min(start_date), max(end_date) FROM task_instance WHERE dag_id = :dag AND run_id = :run",
        dag=dag_id,
        run=run_id,
    )[0]
    if not (start and end):
        return None
    return (parse_timestamp(end) - parse_timestamp(start)).total_seconds()


def parse_timestamp(value: str | datetime) -> datetime:
    # SQLite hands timestamps back as text, PostgreSQL as datetimes.
    return value if isinstance(value, datetime) else datetime.fromisoformat(value.replace(" ", "T"))


def task_state_counts(connection: Connection, dag_id: str, run_id: str) -> dict[str, int]:
    rows = _rows(
        connection,
        "SELECT coalesce(state, 'none'), count(*) FROM task_instance"
        " WHERE dag_id = :dag AND run_id = :run GROUP BY state",
        dag=dag_id,
        run=run_id,
    )
    return {str(state): int(count) for state, count in rows}


def task_return_values(connection: Connection, dag_id: str, run_id: str) -> list[tuple[str, Any]]:
    """Each task's return value (mapped tasks as ``task[index]``), in task order."""
    rows = _rows(
        connection,
        "SELECT task_id, map_index, value FROM xcom WHERE dag_id = :dag AND run_id = :run"
        " AND key = 'return_value' ORDER BY task_id, map_index",
        dag=dag_id,
        run=run_id,
    )
    return [(task_label(task_id, map_index), decode_xcom(value)) for task_id, map_index, value in rows]


def task_label(task_id: str, map_index: int | None) -> str:
    return task_id if map_index is None or map_index < 0 else f"{task_id}[{map_index}]"


def read_placements(database: Path | str, outcome: DagOutcome, task_logs: Path) -> DagOutcome:
    """
    Add where ``outcome``'s newest run ran: each task instance's worker (its recorded hostname) and,
    for each deferred task, the triggerer whose job wrote its trigger log.
    """
    with connect(database) as connection:
        run = latest_run(connection, outcome.dag_id)
        if run is None:
            return outcome
        run_id = run[0]
        rows = _rows(
            connection,
            "SELECT task_id, map_index, hostname FROM task_instance"
            " WHERE dag_id = :dag AND run_id = :run ORDER BY task_id, map_index",
            dag=outcome.dag_id,
            run=run_id,
        )
        outcome.workers = [(task_label(task, index), str(host or "-")) for task, index, host in rows]
        triggerers = dict(_rows(connection, "SELECT id, hostname FROM job WHERE job_type = 'TriggererJob'"))
    folder = task_logs / f"dag_id={outcome.dag_id}" / f"run_id={run_id}"
    for log in sorted(folder.rglob("*.trigger.*.log")):
        match = _TRIGGER_LOG.search(log.as_posix())
        if match:
            index = int(match["index"]) if match["index"] is not None else None
            host = str(triggerers.get(int(match["job"]), f"triggerer job {match['job']}"))
            outcome.triggerers.append((task_label(match["task"], index), host))
    return outcome


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


__all__ = [
    "DagOutcome",
    "OutputFile",
    "as_output_file",
    "connect",
    "decode_xcom",
    "read_outcome",
    "read_placements",
]
