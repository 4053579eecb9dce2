"""Run the real Airflow 3 services on 127.0.0.1 for tests and demos.

``AirflowServices`` prepares a throw-away ``AIRFLOW_HOME`` with a SQLite metadata database,
then starts the api-server (with plugins), scheduler (LocalExecutor), triggerer and
dag-processor as separate process groups, waits until ``/api/v2/monitor/health`` reports
every component healthy, and stops them all on exit::

    with AirflowServices(dags_folder="dags_examples", env={"AIRFLOW_CONN_X": "..."}) as services:
        client = services.rest_client()
        run_id = client.trigger_dag_run("my_dag")
        client.wait_for_dag_run("my_dag", run_id)

From a shell, ``python scripts/airflow_services.py up --dags-folder dags_examples`` leaves the
UI up until Ctrl-C. Authentication is Airflow's SimpleAuthManager with every visitor an
admin: the harness is for a loopback-only machine, never a shared one.

The executor is LocalExecutor on SQLite, which Airflow 3 supports (SequentialExecutor is
gone); parallelism stays small because SQLite serialises writers. New DAGs start paused, as
in any Airflow; ``AirflowRestClient.trigger_dag_run`` unpauses the DAG it triggers.

The services run under a :class:`harness.processes.ProcessSupervisor` (the caller's, or one of
their own): each in its own process group, stopped together, and killed by a watchdog if the
process that started them dies without stopping them.
"""

from __future__ import annotations

import argparse
import base64
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import httpx
from airflow_rest import AirflowRestClient
from harness.airflow import airflow_executable, create_database, run_environment
from harness.layout import RunLayout
from harness.processes import (
    STOP_GRACE_SECONDS,
    ProcessGroup,
    ProcessSupervisor,
    dying_with_parent,
    interrupts_stop,
    signal_group,
)

LOOPBACK = "127.0.0.1"
SIMPLE_AUTH_MANAGER = "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"

# The scheduler and triggerer would otherwise start log servers bound to every interface;
# the api-server reads the task log files directly because everything runs on one machine.
SERVICE_COMMANDS: dict[str, tuple[str, ...]] = {
    "api-server": ("api-server", "--host", LOOPBACK, "--workers", "1"),
    "scheduler": ("scheduler", "--skip-serve-logs"),
    "triggerer": ("triggerer", "--skip-serve-logs"),
    "dag-processor": ("dag-processor",),
}

# Component names as /api/v2/monitor/health reports them, for the services that heartbeat.
HEALTH_COMPONENTS: dict[str, str] = {
    "scheduler": "scheduler",
    "triggerer": "triggerer",
    "dag-processor": "dag_processor",
}


class AirflowServicesError(RuntimeError):
    """A service did not start, or stopped while it was needed; the message names its log file."""


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        return int(probe.getsockname()[1])


def new_fernet_key() -> str:
    """A Fernet key (32 random bytes, url-safe base64), so connection passwords are encrypted at rest."""
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()


def airflow_environment(
    layout: RunLayout, api_port: int, overrides: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The environment every service and CLI call of one run shares: the run's, plus the services' own.

    The JWT secret and Fernet key must be identical in all processes: the scheduler's
    workers call the api-server's execution API with tokens it signs, and every process
    decrypts the same connection rows.
    """
    api_url = f"http://{LOOPBACK}:{api_port}"
    env = run_environment(layout)
    env.update(
        {
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": "4",
            "AIRFLOW__CORE__AUTH_MANAGER": SIMPLE_AUTH_MANAGER,
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
            "AIRFLOW__CORE__TEST_CONNECTION": "Enabled",
            "AIRFLOW__CORE__FERNET_KEY": new_fernet_key(),
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{api_url}/execution/",
            "AIRFLOW__API__HOST": LOOPBACK,
            "AIRFLOW__API__PORT": str(api_port),
            "AIRFLOW__API__BASE_URL": api_url,
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__API__SECRET_KEY": secrets.token_hex(16),
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
            "AIRFLOW__SCHEDULER__JOB_HEARTBEAT_SEC": "1",
            "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
            "AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC": "1",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "5",
            "AIRFLOW__DAG_PROCESSOR__BUNDLE_REFRESH_CHECK_INTERVAL": "1",
        }
    )
    env.update(overrides or {})
    return env


@dataclass
class AirflowServices:
    """The Airflow api-server, scheduler, triggerer and dag-processor, started for one test session.

    :param dags_folder: folder of DAG files the dag-processor parses.
    :param env: extra environment for every service (e.g. ``AIRFLOW_CONN_*``, ``AIRFLOW__...`` options);
        applied last, so it can override the harness defaults.
    :param home: ``AIRFLOW_HOME`` to use (a database already in it is kept); a new temporary folder
        (removed on exit) when ``None``.
    :param logs_folder: where ``<service>.log`` and task logs go; ``<home>/logs`` when ``None``
        (kept on exit when given, so CI can upload it).
    :param services: which of ``commands`` to start; all of them by default.
    :param commands: the services: name -> ``airflow`` arguments (:data:`SERVICE_COMMANDS` by default;
        the production shape has two triggerers and two Celery workers).
    :param service_env: extra environment of single services, by name (e.g. each one's hostname).
    :param api_port: the api-server's port, when the caller needs it before start (e.g. for a
        connection pointing at the callback receiver mounted there); a free port when ``None``.
    :param database_ready: the metadata database is migrated already (e.g. a PostgreSQL one).
    :param database_cache: folder keeping a freshly migrated database per Airflow version; later runs
        copy it instead of running the ~40 s ``airflow db migrate`` again. ``None`` always migrates.
    :param startup_timeout: seconds to wait for every service to report healthy.
    :param stop_timeout: seconds the process groups get after SIGTERM before SIGKILL.
    :param supervisor: the supervisor of the caller's run, so that one interrupt stops the services
        with the rest of the run; one of their own when ``None``.
    """

    dags_folder: str | Path
    env: Mapping[str, str] = field(default_factory=dict)
    home: str | Path | None = None
    logs_folder: str | Path | None = None
    services: Sequence[str] | None = None
    commands: Mapping[str, Sequence[str]] = field(default_factory=lambda: dict(SERVICE_COMMANDS))
    service_env: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    api_port: int | None = None
    database_ready: bool = False
    database_cache: str | Path | None = None
    startup_timeout: float = 300.0
    stop_timeout: float = STOP_GRACE_SECONDS
    supervisor: ProcessSupervisor | None = None
    _layout: RunLayout | None = field(default=None, init=False, repr=False)
    _environment: dict[str, str] = field(default_factory=dict, init=False, repr=False)
    _running: list[ProcessGroup] = field(default_factory=list, init=False, repr=False)
    _own_supervisor: ProcessSupervisor | None = field(default=None, init=False, repr=False)
    _owned_home: bool = field(default=False, init=False, repr=False)
    _api_port: int = field(default=0, init=False, repr=False)

    def __enter__(self) -> AirflowServices:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def api_url(self) -> str:
        """Base URL of the api-server (UI at ``/``, REST API at ``/api/v2``)."""
        return f"http://{LOOPBACK}:{self._api_port}"

    @property
    def service_names(self) -> list[str]:
        return list(self.commands) if self.services is None else list(self.services)

    @property
    def layout(self) -> RunLayout:
        if self._layout is None:
            raise AirflowServicesError("The services are not started; use 'with AirflowServices(...)'.")
        return self._layout

    @property
    def environment(self) -> dict[str, str]:
        """The environment the services run with, for ``airflow`` CLI calls against the same database."""
        return dict(self._environment)

    def start(self) -> None:
        """Prepare a fresh home and database, start the services and wait until they are healthy."""
        unknown = [name for name in self.service_names if name not in self.commands]
        if unknown:
            known = ", ".join(self.commands)
            raise AirflowServicesError(f"Unknown service {unknown[0]!r}; choose from {known}.")
        self._layout = self._prepare_layout()
        self._api_port = self.api_port or free_port()
        self._environment = airflow_environment(self._layout, self._api_port, self.env)
        try:
            if not (self.database_ready or self._layout.database.exists()):
                create_database(self._supervisor(), self._layout, self._environment, self._database_cache())
            for name in self.service_names:
                self._running.append(self._launch(name))
            self._wait_until_healthy()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop every service (all at once, so shutdown takes the slowest, not the sum) and clean up."""
        if self._running:
            self._supervisor().stop(*self._running, grace=self.stop_timeout)
        self._running.clear()
        if self._own_supervisor is not None:
            self._own_supervisor.close()
            self._own_supervisor = None
        if self._owned_home and self._layout is not None:
            shutil.rmtree(self._layout.home, ignore_errors=True)
            self._owned_home = False

    def kill_service(self, name: str, signum: signal.Signals = signal.SIGKILL) -> None:
        """
        Send ``signum`` to one running service's process group and wait until it exits.

        The default SIGKILL gives the service no chance to clean up: what a crash or an evicted pod
        does to it. :meth:`start_service` starts it again.
        """
        service = self._running_service(name)
        signal_group(service.pgid, signum)
        service.process.wait(timeout=max(self.stop_timeout, 30.0))
        self._supervisor().forget(service)
        self._running.remove(service)

    def stop_service(self, name: str) -> None:
        """
        Stop one running service, every process of it, as :meth:`stop` stops them all.

        SIGTERM goes to its whole process group (the api-server's worker processes too) and SIGKILL
        to what is left after ``stop_timeout``; it returns once no process of the group is left: what
        a rolling deploy or a drained node does to it. :meth:`start_service` starts it again with the
        same settings, the api-server on the same port.
        """
        service = self._running_service(name)
        self._supervisor().stop(service, grace=self.stop_timeout)
        self._running.remove(service)

    def start_service(self, name: str) -> None:
        """Start a service :meth:`kill_service` or :meth:`stop_service` stopped; wait until all are up."""
        if any(service.name == name for service in self._running):
            raise AirflowServicesError(f"Airflow {name} is already running.")
        self._running.append(self._launch(name))
        self._wait_until_healthy()

    def _running_service(self, name: str) -> ProcessGroup:
        service = next((service for service in self._running if service.name == name), None)
        if service is None:
            running = ", ".join(service.name for service in self._running) or "none"
            raise AirflowServicesError(f"Airflow {name} is not running (running: {running}).")
        return service

    def run_cli(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """Run ``airflow <args>`` against this run's home and database; raise with its output on failure."""
        result = subprocess.run(
            # Short-lived; dies with the caller, and an interrupt ends it through subprocess.run.
            dying_with_parent([airflow_executable(), *args]),
            env=self._environment,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if result.returncode != 0:
            raise AirflowServicesError(
                f"'airflow {' '.join(args)}' exited with {result.returncode}:\n{result.stderr[-3000:]}"
            )
        return result

    def rest_client(self, timeout: float = 120.0) -> AirflowRestClient:
        """
        A REST client for this api-server, authenticated as the all-admin SimpleAuthManager user.

        SQLite serialises the services' writes, so on a busy machine one answer can take tens of seconds.
        """
        return AirflowRestClient(self.api_url, timeout=timeout)

    def service_log(self, name: str) -> Path:
        """The file holding a service's stdout and stderr."""
        return self.layout.logs_folder / f"{name}.log"

    def _prepare_layout(self) -> RunLayout:
        dags_folder = Path(self.dags_folder).resolve()
        if not dags_folder.is_dir():
            raise AirflowServicesError(f"DAGs folder {dags_folder} does not exist; pass an existing folder.")
        if self.home is None:
            home = Path(tempfile.mkdtemp(prefix="airflow-home-"))
            self._owned_home = True
        else:
            home = Path(self.home).resolve()
            home.mkdir(parents=True, exist_ok=True)
        logs = Path(self.logs_folder).resolve() if self.logs_folder else home / "logs"
        layout = RunLayout(
            home=home,
            logs_folder=logs,
            dags_folder=dags_folder,
            data=home / "data",
            callback_store=home / "callbacks",
        )
        layout.create()
        return layout

    def _database_cache(self) -> Path | None:
        return None if self.database_cache is None else Path(self.database_cache).resolve()

    def _supervisor(self) -> ProcessSupervisor:
        if self.supervisor is not None:
            return self.supervisor
        if self._own_supervisor is None:
            self._own_supervisor = ProcessSupervisor(grace=self.stop_timeout)
        return self._own_supervisor

    def _launch(self, name: str) -> ProcessGroup:
        if name not in self.commands:
            raise AirflowServicesError(f"Unknown service {name!r}; choose from {', '.join(self.commands)}.")
        command = [airflow_executable(), *self.commands[name]]
        env = {**self._environment, **self.service_env.get(name, {})}
        return self._supervisor().start(name, command, env, self.service_log(name))

    def _wait_until_healthy(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        missing: list[str] = self.service_names
        while time.monotonic() < deadline:
            self._raise_if_any_exited()
            missing = self._unhealthy_services()
            if not missing:
                return
            time.sleep(0.5)
        raise AirflowServicesError(
            f"Airflow services not healthy after {self.startup_timeout:.0f}s: {', '.join(missing)}. "
            f"Logs: {self.layout.logs_folder}"
        )

    def _unhealthy_services(self) -> list[str]:
        try:
            response = httpx.get(f"{self.api_url}/api/v2/monitor/health", timeout=5)
            health = response.json() if response.status_code == 200 else {}
        except httpx.HTTPError:
            return ["api-server"]
        # Services are known by the command they run: two triggerers report as one component.
        components = {name: HEALTH_COMPONENTS.get(self.commands[name][0]) for name in self.service_names}
        return [
            name
            for name, component in components.items()
            if component is not None and health.get(component, {}).get("status") != "healthy"
        ]

    def _raise_if_any_exited(self) -> None:
        for service in self._running:
            if service.exited():
                raise AirflowServicesError(
                    f"Airflow {service.name} exited with code {service.process.returncode}; "
                    f"its log {service.log_file} ends with:\n{service.log_tail()}"
                )

    def check_still_running(self) -> None:
        """Raise, naming the log, if a service has died since start-up."""
        self._raise_if_any_exited()


def command_up(arguments: argparse.Namespace) -> int:
    """Start the services and keep them up until Ctrl-C or SIGTERM, which stop them all."""
    extra_env = dict(item.split("=", 1) for item in arguments.env)
    started = time.monotonic()
    # Handlers installed explicitly: a shell starting this in the background ignores SIGINT.
    with ProcessSupervisor() as supervisor, interrupts_stop(supervisor):
        try:
            with AirflowServices(
                dags_folder=arguments.dags_folder,
                env=extra_env,
                home=arguments.home,
                logs_folder=arguments.logs_folder,
                database_cache=arguments.database_cache,
                supervisor=supervisor,
            ) as services:
                elapsed = time.monotonic() - started
                print(
                    f"Airflow is up in {elapsed:.0f}s: {services.api_url}/ (every visitor is admin)",
                    flush=True,
                )
                print(f"AIRFLOW_HOME={services.layout.home}  logs: {services.layout.logs_folder}", flush=True)
                print("Press Ctrl-C to stop.", flush=True)
                while True:
                    time.sleep(3600)
        except KeyboardInterrupt:
            print("Stopped.", flush=True)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Run the Airflow services locally on 127.0.0.1.")
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="start api-server, scheduler, triggerer, dag-processor until Ctrl-C")
    up.add_argument("--dags-folder", required=True, help="folder of DAG files to load")
    up.add_argument("--home", default=None, help="AIRFLOW_HOME to use (default: a temporary folder)")
    up.add_argument("--logs-folder", default=None, help="where service and task logs go")
    up.add_argument("--database-cache", default=None, help="folder caching a migrated database")
    up.add_argument(
        "--env", action="append", default=[], metavar="NAME=VALUE", help="extra environment (repeatable)"
    )
    up.set_defaults(handler=command_up)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    arguments = build_parser().parse_args(argv)
    return int(arguments.handler(arguments))


if __name__ == "__main__":
    sys.exit(main())
