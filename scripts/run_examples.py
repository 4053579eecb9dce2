"""Run every example DAG end to end against the local Modelbit server, then report what happened.

Steps, all on 127.0.0.1 and under one run folder (default ``.airflow/examples``, rebuilt each run):

1. write the sample churn data (``scripts/example_data.py``) under ``<run>/data``;
2. start the local Modelbit server (``python -m airflow_provider_modelbit.emulator``) with a demo
   API key and the stand-alone webhook receiver (``modelbit-callback-receiver``);
3. prepare a fresh ``AIRFLOW_HOME`` (``<run>/airflow-home``, SQLite, ``airflow db migrate``) and the
   ``modelbit_default`` connection as an ``AIRFLOW_CONN_MODELBIT_DEFAULT`` environment variable;
4. run each DAG of ``dags_examples/`` with ``airflow dags test <dag_id> <date>``, output in
   ``<run>/logs/<dag_id>.log``;
5. print a report — each DAG's state, duration and rows scored, the output Parquet files with
   their first rows — and stop everything it started, also on Ctrl-C or failure.

It exits 0 only if every DAG run succeeded. ``--services`` runs the same DAGs on the real Airflow
services (api-server, scheduler, triggerer, dag-processor) instead and leaves the UI up until
Ctrl-C. ``--only DAG_ID`` runs a subset; ``--rows``/``--partitions`` size the sample data.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from types import FrameType
from typing import Any

SCRIPTS_DIR = Path(__file__).resolve().parent
REPOSITORY = SCRIPTS_DIR.parent
DAGS_FOLDER = REPOSITORY / "dags_examples"
DEFAULT_RUN_FOLDER = REPOSITORY / ".airflow" / "examples"
# Written into the run folder so that a re-run only ever deletes a folder this script created.
RUN_FOLDER_MARKER = ".modelbit-examples-run"
CONNECTION_ID = "modelbit_default"
READY_TIMEOUT_SECONDS = 60.0
DAG_RUN_TIMEOUT_SECONDS = 900.0
REST_TIMEOUT_SECONDS = 120.0
PREVIEW_ROWS = 3
RESULT_WIDTH = 80

sys.path.insert(0, str(SCRIPTS_DIR))

from example_data import DEFAULT_PARTITIONS, DEFAULT_ROWS, write_example_data  # noqa: E402


class ExamplesError(RuntimeError):
    """A step of the examples run failed; the message names the step and the log to read."""


@dataclass(frozen=True)
class RunFolder:
    """Where one examples run keeps everything it creates.

    :param root: the run folder; removed and recreated at the start of each run.
    """

    root: Path

    @property
    def airflow_home(self) -> Path:
        return self.root / "airflow-home"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def callback_store(self) -> Path:
        return self.root / "callbacks"

    @property
    def database(self) -> Path:
        return self.airflow_home / "airflow.db"

    def recreate(self) -> None:
        """Start from an empty folder, refusing to delete one this script did not create."""
        if self.root.exists():
            if any(self.root.iterdir()) and not (self.root / RUN_FOLDER_MARKER).exists():
                raise ExamplesError(
                    f"{self.root} exists and was not created by run_examples.py; "
                    "choose another --run-folder or remove it yourself."
                )
            shutil.rmtree(self.root)
        for folder in (self.airflow_home, self.data, self.logs, self.callback_store):
            folder.mkdir(parents=True)
        (self.root / RUN_FOLDER_MARKER).touch()


@dataclass(frozen=True)
class OutputFile:
    """A Parquet file an example task reported writing (its XCom ``{"path", "rows", ...}``)."""

    task: str
    path: str
    rows: int


@dataclass
class DagOutcome:
    """What one example DAG run did.

    :param dag_id: the DAG.
    :param state: ``success``, ``failed``, or why there is no run (``not run``, ``timed out``).
    :param seconds: duration of the DAG run (wall clock of the command when the run has no times).
    :param log_file: the command's output.
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


# -- background processes ------------------------------------------------------------------------


@dataclass
class BackgroundProcess:
    """A process started in its own process group, with its output in a log file."""

    name: str
    process: subprocess.Popen[bytes]
    log_file: Path

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the group, SIGKILL whatever is left after ``timeout`` seconds."""
        if self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=timeout)


def start_background(
    name: str, command: Sequence[str], env: Mapping[str, str], log_file: Path
) -> BackgroundProcess:
    with log_file.open("ab") as log:
        process = subprocess.Popen(
            list(command),
            env=dict(env),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=REPOSITORY,
        )
    return BackgroundProcess(name=name, process=process, log_file=log_file)


def wait_for_ready_file(started: BackgroundProcess, ready_file: Path) -> str:
    """The URL the process wrote to ``ready_file``; fail early, naming its log, if it exits."""
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if ready_file.exists() and ready_file.read_text().strip():
            return ready_file.read_text().strip().splitlines()[0]
        if started.process.poll() is not None:
            raise ExamplesError(
                f"The {started.name} exited with code {started.process.returncode} before it was ready; "
                f"see {started.log_file}"
            )
        time.sleep(0.1)
    raise ExamplesError(
        f"The {started.name} was not ready after {READY_TIMEOUT_SECONDS:.0f}s; see {started.log_file}"
    )


def start_emulator(
    stack: contextlib.ExitStack, folder: RunFolder, env: Mapping[str, str], api_key: str
) -> str:
    """Start the local Modelbit server requiring ``api_key``; return its URL."""
    ready_file = folder.logs / "modelbit-emulator.url"
    command = [
        sys.executable,
        "-m",
        "airflow_provider_modelbit.emulator",
        "--port",
        "0",
        "--ready-file",
        str(ready_file),
        "--allow-http-webhooks",
        "--require-api-keys",
        "--api-key",
        api_key,
    ]
    emulator = start_background("local Modelbit server", command, env, folder.logs / "modelbit-emulator.log")
    stack.callback(emulator.stop)
    return wait_for_ready_file(emulator, ready_file)


def start_callback_receiver(stack: contextlib.ExitStack, folder: RunFolder, env: Mapping[str, str]) -> str:
    """Start the stand-alone webhook receiver on the run's callback store; return its URL."""
    ready_file = folder.logs / "callback-receiver.url"
    command = [
        sys.executable,
        "-m",
        "airflow_provider_modelbit.callbacks.cli",
        "--port",
        "0",
        "--store",
        str(folder.callback_store),
        "--conn-id",
        CONNECTION_ID,
        "--ready-file",
        str(ready_file),
    ]
    receiver = start_background("callback receiver", command, env, folder.logs / "callback-receiver.log")
    stack.callback(receiver.stop)
    return wait_for_ready_file(receiver, ready_file)


# -- Airflow configuration -----------------------------------------------------------------------


@dataclass(frozen=True)
class ModelbitEndpoints:
    """How the DAGs reach the local Modelbit server and how Modelbit calls back.

    :param emulator_url: base URL of the local Modelbit server.
    :param api_key: the demo API key the server requires.
    :param callback_secret: the webhook signing secret.
    :param receiver_url: base URL of the webhook receiver (``None`` until it is started).
    """

    emulator_url: str
    api_key: str
    callback_secret: str
    receiver_url: str | None = None

    def connection_json(self) -> str:
        extra: dict[str, str] = {"callback_secret": self.callback_secret}
        if self.receiver_url:
            extra["callback_base_url"] = self.receiver_url
        connection = {"conn_type": "modelbit", "host": self.emulator_url, "password": self.api_key}
        return json.dumps({**connection, "extra": extra})


def base_environment(folder: RunFolder) -> dict[str, str]:
    """The environment shared by every process of the run (Airflow settings, data location)."""
    env = {
        key: value for key, value in os.environ.items() if not key.startswith(("AIRFLOW__", "AIRFLOW_CONN_"))
    }
    env.update(
        {
            "AIRFLOW_HOME": str(folder.airflow_home),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{folder.database}",
            "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_FOLDER),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__MODELBIT__CALLBACK_STORE": str(folder.callback_store),
            "MODELBIT_EXAMPLES_DATA": str(folder.data),
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def airflow_command(*arguments: str) -> list[str]:
    """``airflow <arguments>`` with the ``airflow`` of the interpreter running this script."""
    beside_python = Path(sys.executable).with_name("airflow")
    return [str(beside_python) if beside_python.exists() else "airflow", *arguments]


def run_logged(command: Sequence[str], env: Mapping[str, str], log_file: Path, timeout: float) -> int:
    """Run ``command`` to completion with its output in ``log_file``; stop its group on Ctrl-C."""
    started = start_background(Path(command[0]).name, command, env, log_file)
    try:
        return started.process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        started.stop()
        return -1
    finally:
        started.stop()


def migrate_database(env: Mapping[str, str], folder: RunFolder) -> None:
    log_file = folder.logs / "airflow-db-migrate.log"
    if run_logged(airflow_command("db", "migrate"), env, log_file, timeout=300) != 0:
        raise ExamplesError(f"'airflow db migrate' failed; see {log_file}")


def discover_dag_ids(env: Mapping[str, str], folder: RunFolder) -> list[str]:
    """The example DAG ids as Airflow parses them; fail, naming the files, if any does not import.

    DAGs on a time schedule come first, so that Asset-scheduled DAGs run after the DAGs whose
    outputs they read.
    """
    listing = run_airflow_listing(env, folder, "dags", "list", "--columns", "dag_id,timetable_periodic")
    if listing.import_errors:
        errors = run_airflow_listing(env, folder, "dags", "list-import-errors", failure_expected=True)
        files = sorted({entry.get("filepath", "?") for entry in errors.entries})
        raise ExamplesError(
            f"Example DAG files failed to import: {', '.join(files)}; see {folder.logs / 'airflow-dags.log'}"
        )
    ordered = sorted(
        listing.entries, key=lambda entry: (not entry.get("timetable_periodic"), entry["dag_id"])
    )
    return [entry["dag_id"] for entry in ordered]


def is_periodic(entry: Mapping[str, Any]) -> bool:
    # The JSON listing renders booleans as the strings "True" / "False".
    return str(entry.get("timetable_periodic")).lower() == "true"


@dataclass(frozen=True)
class AirflowListing:
    """The JSON rows an ``airflow ... list --local`` command printed, and whether files failed to import."""

    entries: list[dict[str, Any]]
    import_errors: bool


def run_airflow_listing(
    env: Mapping[str, str], folder: RunFolder, *command: str, failure_expected: bool = False
) -> AirflowListing:
    log_file = folder.logs / "airflow-dags.log"
    result = subprocess.run(
        airflow_command(*command, "--local", "--output", "json"),
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    with log_file.open("a") as log:
        log.write(f"$ airflow {' '.join(command)}\n{result.stdout}{result.stderr}\n")
    if result.returncode != 0 and not failure_expected:
        raise ExamplesError(f"'airflow {' '.join(command)}' failed; see {log_file}")
    return AirflowListing(json_list_in_output(result.stdout), "Failed to load all files" in result.stderr)


def json_list_in_output(output: str) -> list[dict[str, Any]]:
    # Airflow prints warnings on stdout too; the listing is the line holding a JSON array.
    for line in reversed(output.splitlines()):
        if line.startswith("["):
            with contextlib.suppress(ValueError):
                return list(json.loads(line))
    raise ExamplesError(f"'airflow dags list' printed no DAG listing:\n{output[-2000:]}")


def select_dag_ids(found: Sequence[str], only: Sequence[str]) -> list[str]:
    unknown = sorted(set(only) - set(found))
    if unknown:
        raise ExamplesError(f"--only names unknown DAGs {unknown}; the examples are {list(found)}")
    return [dag_id for dag_id in found if not only or dag_id in only]


# -- reading results back ------------------------------------------------------------------------


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


def read_outcome(database_path: Path, dag_id: str, fallback: DagOutcome) -> DagOutcome:
    """Fill ``fallback`` with the DAG run's state, task states and outputs from the metadata DB."""
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


# -- running the DAGs ----------------------------------------------------------------------------


def run_with_dags_test(
    dag_id: str, logical_date: str, env: Mapping[str, str], folder: RunFolder
) -> DagOutcome:
    """``airflow dags test`` one DAG (deferred tasks' triggers run in the same process)."""
    log_file = folder.logs / f"{dag_id}.log"
    print(f"  running {dag_id} ...", flush=True)
    started = time.monotonic()
    exit_code = run_logged(
        airflow_command("dags", "test", dag_id, logical_date), env, log_file, DAG_RUN_TIMEOUT_SECONDS
    )
    state = "timed out" if exit_code == -1 else "failed" if exit_code else "success"
    outcome = DagOutcome(dag_id, state, time.monotonic() - started, log_file)
    outcome = read_outcome(folder.database, dag_id, outcome)
    if exit_code != 0 and outcome.succeeded:
        outcome.state = "failed"  # the command failed after the run; its log says why
    return outcome


def run_on_services(
    dag_ids: Sequence[str], env: Mapping[str, str], folder: RunFolder, keep_up: bool
) -> list[DagOutcome]:
    """Trigger each DAG through the REST API of the real Airflow services and wait for it."""
    from airflow_services import AirflowServices

    # Only the runs triggered here should execute, not the schedule's own catch-up run.
    services_env = {**env, "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False"}
    overrides = {key: value for key, value in services_env.items() if key.startswith(("AIRFLOW", "MODELBIT"))}
    print("  starting the Airflow api-server, scheduler, triggerer and dag-processor ...", flush=True)
    with AirflowServices(
        dags_folder=DAGS_FOLDER, env=overrides, home=folder.airflow_home, logs_folder=folder.logs / "services"
    ) as services:
        print(f"  Airflow UI: {services.api_url}/", flush=True)
        outcomes = [trigger_and_wait(services, dag_id, folder) for dag_id in dag_ids]
        if keep_up:
            print_report(outcomes, folder)
            print(f"\nAirflow UI: {services.api_url}/ (every visitor is admin). Press Ctrl-C to stop.")
            wait_until_interrupted()
    return outcomes


def trigger_and_wait(services: Any, dag_id: str, folder: RunFolder) -> DagOutcome:
    """Trigger one run through the REST API; a REST failure fails this DAG, not the whole command."""
    import httpx
    from airflow_rest import AirflowRestError

    log_file = folder.logs / "services" / "tasks"
    print(f"  running {dag_id} ...", flush=True)
    started = time.monotonic()
    try:
        # SQLite serialises the services' writes, so API answers can be slow while tasks run.
        with services.rest_client(timeout=REST_TIMEOUT_SECONDS) as client:
            client.wait_for_dag(dag_id)
            run_id = client.trigger_dag_run(dag_id)
            state = client.wait_for_dag_run(dag_id, run_id, timeout=DAG_RUN_TIMEOUT_SECONDS)
    except (httpx.HTTPError, AirflowRestError) as error:
        print(f"  {dag_id}: the Airflow REST API failed: {error}", file=sys.stderr, flush=True)
        state = "failed"
    outcome = DagOutcome(dag_id, state, time.monotonic() - started, log_file)
    return read_outcome(services.layout.database, dag_id, outcome)


def wait_until_interrupted() -> None:
    with contextlib.suppress(KeyboardInterrupt):
        while True:
            time.sleep(0.5)


# -- the report ----------------------------------------------------------------------------------


def render_summary(outcomes: Sequence[DagOutcome]) -> list[str]:
    lines = [f"{'DAG':<32} {'STATE':<9} {'SECONDS':>7} {'TASKS OK':>8} {'ROWS SCORED':>11}"]
    for outcome in outcomes:
        done = outcome.task_states.get("success", 0)
        total = sum(outcome.task_states.values())
        rows = "-" if outcome.rows_scored is None else f"{outcome.rows_scored:,}"
        tasks = f"{done}/{total}" if total else "-"
        lines.append(f"{outcome.dag_id:<32} {outcome.state:<9} {outcome.seconds:>7.1f} {tasks:>8} {rows:>11}")
    return lines


def render_output_preview(output: OutputFile) -> list[str]:
    """The output's location, row count and first rows, read back from the Parquet file."""
    lines = [f"{output.task}: {display_path(output.path)} ({output.rows:,} rows)"]
    local = output.path.removeprefix("file://")
    if not Path(local).is_file():
        return [*lines, "    (not a local file; not previewed)"]
    import pyarrow.parquet as pq

    head = pq.ParquetFile(local).read_row_group(0).slice(0, PREVIEW_ROWS).to_pandas()
    preview = head.to_string(index=False, max_colwidth=40)
    return [*lines, *(f"    {line}" for line in preview.splitlines())]


def display_path(path: str) -> str:
    with contextlib.suppress(ValueError):
        return str(Path(path.removeprefix("file://")).relative_to(Path.cwd()))
    return path


def render_results(outcome: DagOutcome) -> list[str]:
    """Return values of a DAG that wrote no files, one line each, cut to the terminal width."""
    width = max(len(task) for task, _ in outcome.results)
    lines = []
    for task, value in outcome.results:
        text = json.dumps(value, default=str)
        text = text if len(text) <= RESULT_WIDTH else text[: RESULT_WIDTH - 3] + "..."
        lines.append(f"{task:<{width}}  {text}")
    return lines


def render_report(outcomes: Sequence[DagOutcome], folder: RunFolder) -> str:
    succeeded = sum(outcome.succeeded for outcome in outcomes)
    lines = ["", f"Modelbit examples: {succeeded}/{len(outcomes)} DAG runs succeeded", ""]
    lines += render_summary(outcomes)
    for outcome in outcomes:
        if outcome.outputs:
            lines += ["", f"Outputs of {outcome.dag_id}:"]
            for output in outcome.outputs:
                lines += [f"  {line}" for line in render_output_preview(output)]
        elif outcome.results:
            lines += ["", f"Results of {outcome.dag_id} (XCom):"]
            lines += [f"  {line}" for line in render_results(outcome)]
    lines += ["", "Logs:"]
    lines += [f"  {outcome.dag_id:<32} {display_path(str(outcome.log_file))}" for outcome in outcomes]
    lines.append(f"  {'servers and Airflow':<32} {display_path(str(folder.logs))}/")
    return "\n".join(lines)


def print_report(outcomes: Sequence[DagOutcome], folder: RunFolder) -> None:
    print(render_report(outcomes, folder), flush=True)


# -- the command ---------------------------------------------------------------------------------


def parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Run the example DAGs end to end against the local Modelbit server and report.",
    )
    parser.add_argument("--rows", type=int, default=DEFAULT_ROWS, help="customers in the sample table")
    parser.add_argument("--partitions", type=int, default=DEFAULT_PARTITIONS, help="sample partition files")
    parser.add_argument(
        "--only", action="append", default=[], metavar="DAG_ID", help="run only this DAG (repeatable)"
    )
    parser.add_argument(
        "--date",
        default=datetime.now(timezone.utc).date().isoformat(),
        help="logical date (default: today, UTC)",
    )
    parser.add_argument(
        "--run-folder", type=Path, default=DEFAULT_RUN_FOLDER, help="where data, logs and AIRFLOW_HOME go"
    )
    parser.add_argument(
        "--services",
        action="store_true",
        help="run on the real Airflow services and keep the UI up on 127.0.0.1 until Ctrl-C",
    )
    parser.add_argument(
        "--no-wait",
        action="store_true",
        help="with --services: stop the services after the report instead of waiting for Ctrl-C",
    )
    return parser.parse_args(argv)


def start_modelbit(stack: contextlib.ExitStack, folder: RunFolder, env: dict[str, str]) -> ModelbitEndpoints:
    """Start the local server and the receiver; put the connection into ``env``."""
    api_key = f"demo:{secrets.token_urlsafe(18)}"
    endpoints = ModelbitEndpoints(
        emulator_url=start_emulator(stack, folder, env, api_key),
        api_key=api_key,
        callback_secret=secrets.token_hex(32),
    )
    # The receiver only needs the signing secret from the connection; the base URL is its own.
    env["AIRFLOW_CONN_MODELBIT_DEFAULT"] = endpoints.connection_json()
    endpoints = replace(endpoints, receiver_url=start_callback_receiver(stack, folder, env))
    env["AIRFLOW_CONN_MODELBIT_DEFAULT"] = endpoints.connection_json()
    return endpoints


def run_examples(arguments: argparse.Namespace) -> list[DagOutcome]:
    folder = RunFolder(arguments.run_folder.resolve())
    folder.recreate()
    print(f"Sample data: {arguments.rows:,} customers in {arguments.partitions} partitions", flush=True)
    write_example_data(folder.data, rows=arguments.rows, partitions=arguments.partitions)
    env = base_environment(folder)
    with contextlib.ExitStack() as stack:
        endpoints = start_modelbit(stack, folder, env)
        print(f"Local Modelbit server: {endpoints.emulator_url}  callback receiver: {endpoints.receiver_url}")
        migrate_database(env, folder)
        dag_ids = select_dag_ids(discover_dag_ids(env, folder), arguments.only)
        if arguments.services:
            return run_on_services(dag_ids, env, folder, keep_up=not arguments.no_wait)
        print(f"Running {len(dag_ids)} example DAGs with 'airflow dags test' ({arguments.date}):", flush=True)
        return [run_with_dags_test(dag_id, arguments.date, env, folder) for dag_id in dag_ids]


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Treat SIGTERM like Ctrl-C so the same clean-up stops every process this run started."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: Sequence[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    try:
        with sigterm_as_interrupt():
            outcomes = run_examples(arguments)
    except KeyboardInterrupt:
        print("\nInterrupted; everything this run started has been stopped.", file=sys.stderr)
        return 130
    except ExamplesError as error:
        print(f"\nrun_examples: {error}", file=sys.stderr)
        return 2
    if not arguments.services or arguments.no_wait:
        print_report(outcomes, RunFolder(arguments.run_folder.resolve()))
    return 0 if outcomes and all(outcome.succeeded for outcome in outcomes) else 1


if __name__ == "__main__":
    raise SystemExit(main())
