"""The examples run: sample data, the local Modelbit server and callback receiver, every example DAG.

All of it on 127.0.0.1, under one run folder (:class:`~harness.layout.RunLayout`), and every
process under one :class:`~harness.processes.ProcessSupervisor`:

1. write the sample churn data (``scripts/example_data.py``) under ``<run>/data``;
2. start the local Modelbit server (``run_emulator(mode="process")``) requiring a demo API key,
   and the stand-alone webhook receiver (``modelbit-callback-receiver``);
3. prepare a fresh ``AIRFLOW_HOME`` with its SQLite database, and the ``modelbit_default``
   connection as an ``AIRFLOW_CONN_MODELBIT_DEFAULT`` environment variable;
4. run each DAG of ``dags_examples/``, with ``airflow dags test`` or on the real Airflow services,
   and read what it did from the metadata database (:mod:`harness.outcomes`).

``production`` runs the services in the production shape instead (:mod:`harness.production`):
PostgreSQL, CeleryExecutor on Redis with two workers, two triggerers, an api-server with two worker
processes receiving the webhooks, and the data and callback store as ``s3://`` paths on SeaweedFS.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from example_data import write_example_data

from airflow_provider_modelbit.defaults import DEFAULT_CONN_ID
from airflow_provider_modelbit.plugins.modelbit import CALLBACK_URL_PREFIX
from harness.airflow import (
    create_database,
    discover_dag_ids,
    run_airflow,
    run_environment,
    select_dag_ids,
)
from harness.layout import RunLayout, recreate_run_folder
from harness.outcomes import DagOutcome, read_outcome, read_placements
from harness.processes import ProcessSupervisor

if TYPE_CHECKING:
    from airflow_services import AirflowServices

REPOSITORY = Path(__file__).resolve().parents[2]
DAGS_FOLDER = REPOSITORY / "dags_examples"
#: Seconds one DAG run may take before it is stopped and reported as ``timed out``.
DAG_RUN_TIMEOUT_SECONDS = 900.0
EMULATOR_URL_FILE = "modelbit-emulator.url"
RECEIVER_URL_FILE = "callback-receiver.url"


@dataclass(frozen=True)
class ExamplesOptions:
    """
    What to run.

    :param run_folder: where data, logs and ``AIRFLOW_HOME`` go (rebuilt each run).
    :param rows: customers in the sample table.
    :param partitions: sample partition files.
    :param only: run only these DAGs (all when empty).
    :param logical_date: the runs' logical date, ``YYYY-MM-DD``.
    :param services: run on the real Airflow services instead of ``airflow dags test``.
    :param keep_up: with ``services``: print the report and keep the UI up until interrupted.
    :param database_cache: folder caching a migrated metadata database, or ``None`` to migrate.
    :param production: with ``services``: the production shape (PostgreSQL, Celery, S3).
    """

    run_folder: Path
    rows: int
    partitions: int
    only: Sequence[str]
    logical_date: str
    services: bool = False
    keep_up: bool = False
    database_cache: Path | None = None
    production: bool = False

    @property
    def layout(self) -> RunLayout:
        return RunLayout.in_folder(self.run_folder.resolve(), DAGS_FOLDER)


@dataclass(frozen=True)
class ModelbitEndpoints:
    """
    How the DAGs reach the local Modelbit server and how Modelbit calls back.

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


def run_examples(
    options: ExamplesOptions,
    supervisor: ProcessSupervisor,
    report: Callable[[Sequence[DagOutcome]], None],
) -> list[DagOutcome]:
    """
    Run the examples and return what each DAG did; everything started is stopped on return.

    :param report: prints the outcomes; called here only when the services stay up after the runs.
    """
    layout = options.layout
    recreate_run_folder(options.run_folder.resolve())
    layout.create()
    print(f"Sample data: {options.rows:,} customers in {options.partitions} partitions", flush=True)
    write_example_data(layout.data, rows=options.rows, partitions=options.partitions)
    env = run_environment(layout)
    if options.production:
        return run_production(options, supervisor, report)
    with contextlib.ExitStack() as stack:
        endpoints = start_modelbit(stack, supervisor, layout, env)
        print(f"Local Modelbit server: {endpoints.emulator_url}  callback receiver: {endpoints.receiver_url}")
        create_database(supervisor, layout, env, options.database_cache)
        dag_ids = select_dag_ids(discover_dag_ids(supervisor, layout, env), options.only)
        if options.services:
            return run_on_services(dag_ids, env, layout, supervisor, report if options.keep_up else None)
        print(f"Running {len(dag_ids)} example DAGs with 'airflow dags test' ({options.logical_date}):")
        return [
            run_with_dags_test(dag_id, options.logical_date, env, layout, supervisor) for dag_id in dag_ids
        ]


def run_production(
    options: ExamplesOptions,
    supervisor: ProcessSupervisor,
    report: Callable[[Sequence[DagOutcome]], None],
) -> list[DagOutcome]:
    """The examples on the production shape: stores first, the sample data on S3, then the services."""
    from airflow_services import free_port

    from harness.production import ProductionStack

    layout = options.layout
    print("  starting PostgreSQL, Redis and SeaweedFS (S3) ...", flush=True)
    stores = ProductionStack(options.run_folder.resolve() / "production", supervisor)
    stores.start()
    uploaded = stores.upload_folder(layout.data, "data")
    print(f"  {uploaded} sample files uploaded to {stores.data_url}", flush=True)
    env = {**run_environment(layout), **stores.airflow_environment()}
    api_port = free_port()
    with contextlib.ExitStack() as stack:
        # Webhooks go to the receiver mounted in each api-server worker process, not a separate one.
        endpoints = start_emulator(stack, layout, env)
        endpoints = replace(endpoints, receiver_url=f"http://127.0.0.1:{api_port}{CALLBACK_URL_PREFIX}")
        env["AIRFLOW_CONN_MODELBIT_DEFAULT"] = endpoints.connection_json()
        print(f"Local Modelbit server: {endpoints.emulator_url}  callback receiver: {endpoints.receiver_url}")
        create_database(supervisor, layout, env)
        dag_ids = select_dag_ids(discover_dag_ids(supervisor, layout, env), options.only)
        return run_on_services(
            dag_ids, env, layout, supervisor, report if options.keep_up else None, production_port=api_port
        )


def start_emulator(stack: contextlib.ExitStack, layout: RunLayout, env: dict[str, str]) -> ModelbitEndpoints:
    """Start the local Modelbit server requiring a fresh demo API key; put the connection into ``env``."""
    from airflow_provider_modelbit.emulator import run_emulator

    api_key = f"demo:{secrets.token_urlsafe(18)}"
    emulator = stack.enter_context(
        run_emulator(mode="process", require_api_keys=True, api_keys=(api_key,), allow_http_webhooks=True)
    )
    (layout.logs_folder / EMULATOR_URL_FILE).write_text(f"{emulator.url}\n")
    endpoints = ModelbitEndpoints(emulator.url, api_key, callback_secret=secrets.token_hex(32))
    env["AIRFLOW_CONN_MODELBIT_DEFAULT"] = endpoints.connection_json()
    return endpoints


def start_modelbit(
    stack: contextlib.ExitStack, supervisor: ProcessSupervisor, layout: RunLayout, env: dict[str, str]
) -> ModelbitEndpoints:
    """Start the local server and the receiver; put the connection into ``env``."""
    endpoints = start_emulator(stack, layout, env)
    # The receiver only needs the signing secret from the connection; the base URL is its own.
    env["AIRFLOW_CONN_MODELBIT_DEFAULT"] = endpoints.connection_json()
    endpoints = replace(endpoints, receiver_url=start_callback_receiver(supervisor, layout, env))
    env["AIRFLOW_CONN_MODELBIT_DEFAULT"] = endpoints.connection_json()
    return endpoints


def start_callback_receiver(supervisor: ProcessSupervisor, layout: RunLayout, env: Mapping[str, str]) -> str:
    """Start the stand-alone webhook receiver on the run's callback store; return its URL."""
    ready_file = layout.logs_folder / RECEIVER_URL_FILE
    command = [sys.executable, "-m", "airflow_provider_modelbit.callbacks.cli", "--port", "0"]
    command += ["--store", str(layout.callback_store), "--conn-id", DEFAULT_CONN_ID]
    command += ["--ready-file", str(ready_file)]
    receiver = supervisor.start(
        "callback receiver", command, env, layout.logs_folder / "callback-receiver.log"
    )
    return receiver.wait_for_ready_file(ready_file)


def run_with_dags_test(
    dag_id: str, logical_date: str, env: Mapping[str, str], layout: RunLayout, supervisor: ProcessSupervisor
) -> DagOutcome:
    """``airflow dags test`` one DAG (deferred tasks' triggers run in the same process)."""
    log_file = layout.logs_folder / f"{dag_id}.log"
    print(f"  running {dag_id} ...", flush=True)
    started = time.monotonic()
    arguments = ["dags", "test", dag_id, logical_date]
    exit_code = run_airflow(supervisor, arguments, env, log_file, DAG_RUN_TIMEOUT_SECONDS, check=False)
    state = "timed out" if exit_code == -1 else "failed" if exit_code else "success"
    outcome = read_outcome(
        layout.database, dag_id, DagOutcome(dag_id, state, time.monotonic() - started, log_file)
    )
    if exit_code != 0 and outcome.succeeded:
        outcome.state = "failed"  # the command failed after the run; its log says why
    return outcome


def run_on_services(
    dag_ids: Sequence[str],
    env: Mapping[str, str],
    layout: RunLayout,
    supervisor: ProcessSupervisor,
    keep_up_report: Callable[[Sequence[DagOutcome]], None] | None,
    production_port: int | None = None,
) -> list[DagOutcome]:
    """
    Trigger each DAG through the REST API of the real Airflow services and wait for it.

    :param production_port: the api-server's port in the production shape (whose services are
        :data:`~harness.production.PRODUCTION_SERVICE_COMMANDS`, on a migrated database); ``None``
        for the four services on LocalExecutor.
    """
    from airflow_services import SERVICE_COMMANDS, AirflowServices

    from harness.production import PRODUCTION_SERVICE_COMMANDS, production_service_environment

    # Only the runs triggered here should execute, not the schedule's own catch-up run.
    services_env = {**env, "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False"}
    overrides = {key: value for key, value in services_env.items() if key.startswith(("AIRFLOW", "MODELBIT"))}
    if "PYTHONPATH" in env:
        overrides["PYTHONPATH"] = env["PYTHONPATH"]
    production = production_port is not None
    commands = PRODUCTION_SERVICE_COMMANDS if production else SERVICE_COMMANDS
    print(f"  starting the Airflow services: {', '.join(commands)} ...", flush=True)
    with AirflowServices(
        dags_folder=layout.dags_folder,
        env=overrides,
        home=layout.home,
        logs_folder=layout.logs_folder / "services",
        supervisor=supervisor,
        commands=dict(commands),
        service_env=production_service_environment() if production else {},
        api_port=production_port,
        database_ready=production,
    ) as services:
        print(f"  Airflow UI: {services.api_url}/", flush=True)
        outcomes = [trigger_and_wait(services, dag_id) for dag_id in dag_ids]
        if production:
            # Read once every run is over: a triggerer's log of a trigger may be written after its task ends.
            database = services.environment["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
            outcomes = [read_placements(database, outcome, outcome.log_file) for outcome in outcomes]
        if keep_up_report is not None:
            keep_up_report(outcomes)
            print(f"\nAirflow UI: {services.api_url}/ (every visitor is admin). Press Ctrl-C to stop.")
            wait_until_interrupted()
    return outcomes


def trigger_and_wait(services: AirflowServices, dag_id: str) -> DagOutcome:
    """Trigger one run through the REST API; a REST failure fails this DAG, not the whole command."""
    import httpx
    from airflow_rest import AirflowRestError

    print(f"  running {dag_id} ...", flush=True)
    started = time.monotonic()
    try:
        with services.rest_client() as client:
            client.wait_for_dag(dag_id)
            run_id = client.trigger_dag_run(dag_id)
            state = client.wait_for_dag_run(dag_id, run_id, timeout=DAG_RUN_TIMEOUT_SECONDS)
    except (httpx.HTTPError, AirflowRestError) as error:
        print(f"  {dag_id}: the Airflow REST API failed: {error}", file=sys.stderr, flush=True)
        state = "failed"
    # The run's environment may put task logs elsewhere than the services' own logs folder.
    task_logs = Path(services.environment.get("AIRFLOW__LOGGING__BASE_LOG_FOLDER", services.layout.task_logs))
    outcome = DagOutcome(dag_id, state, time.monotonic() - started, task_logs)
    database = services.environment["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    return read_outcome(database, dag_id, outcome)


def wait_until_interrupted() -> None:
    """Keep the UI up; Ctrl-C or SIGTERM ends the wait, which is how a person ends a ``--services`` run."""
    with contextlib.suppress(KeyboardInterrupt):
        while True:
            time.sleep(3600)


__all__ = [
    "DAGS_FOLDER",
    "ExamplesOptions",
    "ModelbitEndpoints",
    "run_examples",
]
