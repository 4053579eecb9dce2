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
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import os
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
from importlib import metadata
from pathlib import Path
from types import TracebackType

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from airflow_rest import AirflowRestClient

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


def airflow_executable() -> str:
    """The ``airflow`` command of the interpreter running this module (the project venv)."""
    beside_python = Path(sys.executable).with_name("airflow")
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which("airflow")
    if found is None:
        raise AirflowServicesError(
            "The 'airflow' command was not found; install apache-airflow in this venv."
        )
    return found


def new_fernet_key() -> str:
    """A Fernet key (32 random bytes, url-safe base64), so connection passwords are encrypted at rest."""
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()


@dataclass(frozen=True)
class ServicesLayout:
    """Where one run of the services keeps its state.

    :param home: the ``AIRFLOW_HOME`` (config, SQLite database, generated files).
    :param logs_folder: process output (``<service>.log``) and task logs (``tasks/``).
    :param dags_folder: the DAG files the dag-processor parses.
    """

    home: Path
    logs_folder: Path
    dags_folder: Path

    @property
    def database(self) -> Path:
        return self.home / "airflow.db"

    @property
    def task_logs(self) -> Path:
        return self.logs_folder / "tasks"


def airflow_environment(
    layout: ServicesLayout, api_port: int, overrides: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The environment every service and CLI call of one run shares.

    The JWT secret and Fernet key must be identical in all processes: the scheduler's
    workers call the api-server's execution API with tokens it signs, and every process
    decrypts the same connection rows.
    """
    api_url = f"http://{LOOPBACK}:{api_port}"
    env = {key: value for key, value in os.environ.items() if not key.startswith("AIRFLOW__")}
    env.update(
        {
            "AIRFLOW_HOME": str(layout.home),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{layout.database}",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": "4",
            "AIRFLOW__CORE__DAGS_FOLDER": str(layout.dags_folder),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
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
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(layout.task_logs),
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
class RunningService:
    """One started service: its process (the leader of its own process group) and log file."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def exited(self) -> bool:
        return self.process.poll() is not None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no output yet)"


def signal_group(process: subprocess.Popen[bytes], signum: signal.Signals) -> None:
    """Send ``signum`` to the process group ``process`` leads (the scheduler forks workers into it)."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signum)


def stop_process_groups(processes: Sequence[subprocess.Popen[bytes]], timeout: float) -> None:
    """SIGTERM every group at once, then SIGKILL the groups still alive after ``timeout`` seconds."""
    for process in processes:
        signal_group(process, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for process in processes:
        try:
            process.wait(timeout=max(deadline - time.monotonic(), 0.01))
        except subprocess.TimeoutExpired:
            signal_group(process, signal.SIGKILL)
            process.wait(timeout=timeout)


def stop_process_group(process: subprocess.Popen[bytes], timeout: float) -> None:
    """Stop one service: SIGTERM its group, SIGKILL it if it outlives ``timeout``."""
    stop_process_groups([process], timeout)


@dataclass
class AirflowServices:
    """The Airflow api-server, scheduler, triggerer and dag-processor, started for one test session.

    :param dags_folder: folder of DAG files the dag-processor parses.
    :param env: extra environment for every service (e.g. ``AIRFLOW_CONN_*``, ``AIRFLOW__...`` options);
        applied last, so it can override the harness defaults.
    :param home: ``AIRFLOW_HOME`` to use; a new temporary folder (removed on exit) when ``None``.
    :param logs_folder: where ``<service>.log`` and task logs go; ``<home>/logs`` when ``None``
        (kept on exit when given, so CI can upload it).
    :param services: which services to start; all four by default.
    :param database_cache: folder keeping a freshly migrated database per Airflow version; later runs
        copy it instead of running the ~40 s ``airflow db migrate`` again. ``None`` always migrates.
    :param startup_timeout: seconds to wait for every service to report healthy.
    :param stop_timeout: seconds each process group gets after SIGTERM before SIGKILL.
    """

    dags_folder: str | Path
    env: Mapping[str, str] = field(default_factory=dict)
    home: str | Path | None = None
    logs_folder: str | Path | None = None
    services: Sequence[str] = tuple(SERVICE_COMMANDS)
    database_cache: str | Path | None = None
    startup_timeout: float = 180.0
    stop_timeout: float = 20.0
    _layout: ServicesLayout | None = field(default=None, init=False, repr=False)
    _environment: dict[str, str] = field(default_factory=dict, init=False, repr=False)
    _running: list[RunningService] = field(default_factory=list, init=False, repr=False)
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
    def layout(self) -> ServicesLayout:
        if self._layout is None:
            raise AirflowServicesError("The services are not started; use 'with AirflowServices(...)'.")
        return self._layout

    @property
    def environment(self) -> dict[str, str]:
        """The environment the services run with, for ``airflow`` CLI calls against the same database."""
        return dict(self._environment)

    def start(self) -> None:
        """Prepare a fresh home and database, start the services and wait until they are healthy."""
        unknown = [name for name in self.services if name not in SERVICE_COMMANDS]
        if unknown:
            known = ", ".join(SERVICE_COMMANDS)
            raise AirflowServicesError(f"Unknown service {unknown[0]!r}; choose from {known}.")
        self._layout = self._prepare_layout()
        self._api_port = free_port()
        self._environment = airflow_environment(self._layout, self._api_port, self.env)
        try:
            self._create_database()
            for name in self.services:
                self._running.append(self._launch(name))
            self._wait_until_healthy()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop every service (all at once, so shutdown takes the slowest, not the sum) and clean up."""
        stop_process_groups([service.process for service in self._running], self.stop_timeout)
        self._running.clear()
        if self._owned_home and self._layout is not None:
            shutil.rmtree(self._layout.home, ignore_errors=True)
            self._owned_home = False

    def kill_service(self, name: str, signum: signal.Signals = signal.SIGKILL) -> None:
        """
        Send ``signum`` to one running service's process group and wait until it exits.

        The default SIGKILL gives the service no chance to clean up: what a crash or an evicted pod
        does to it. :meth:`start_service` starts it again.
        """
        service = next((service for service in self._running if service.name == name), None)
        if service is None:
            running = ", ".join(service.name for service in self._running) or "none"
            raise AirflowServicesError(f"Airflow {name} is not running (running: {running}).")
        signal_group(service.process, signum)
        service.process.wait(timeout=self.stop_timeout)
        self._running.remove(service)

    def start_service(self, name: str) -> None:
        """Start one service that :meth:`kill_service` stopped, and wait until every service is healthy."""
        if any(service.name == name for service in self._running):
            raise AirflowServicesError(f"Airflow {name} is already running.")
        self._running.append(self._launch(name))
        self._wait_until_healthy()

    def run_cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run ``airflow <args>`` against this run's home and database; raise with its output on failure."""
        result = subprocess.run(
            [airflow_executable(), *args],
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

    def rest_client(self, timeout: float = 30.0) -> AirflowRestClient:
        """A REST client for this api-server, authenticated as the all-admin SimpleAuthManager user."""
        return AirflowRestClient(self.api_url, timeout=timeout)

    def service_log(self, name: str) -> Path:
        """The file holding a service's stdout and stderr."""
        return self.layout.logs_folder / f"{name}.log"

    def _prepare_layout(self) -> ServicesLayout:
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
        (logs / "tasks").mkdir(parents=True, exist_ok=True)
        return ServicesLayout(home=home, logs_folder=logs, dags_folder=dags_folder)

    def _create_database(self) -> None:
        template = self._database_template()
        if template is not None and template.exists():
            shutil.copyfile(template, self.layout.database)
            return
        self.run_cli("db", "migrate", timeout=300)
        if template is not None:
            # Copy then rename, so a concurrent run never copies a half-written template.
            template.parent.mkdir(parents=True, exist_ok=True)
            partial = template.with_name(f"{template.name}.{os.getpid()}.partial")
            shutil.copyfile(self.layout.database, partial)
            os.replace(partial, template)

    def _database_template(self) -> Path | None:
        if self.database_cache is None:
            return None
        return Path(self.database_cache).resolve() / f"airflow-{metadata.version('apache-airflow-core')}.db"

    def _launch(self, name: str) -> RunningService:
        if name not in SERVICE_COMMANDS:
            raise AirflowServicesError(
                f"Unknown service {name!r}; choose from {', '.join(SERVICE_COMMANDS)}."
            )
        log_path = self.service_log(name)
        with log_path.open("ab") as log_file:
            process = subprocess.Popen(
                [airflow_executable(), *SERVICE_COMMANDS[name]],
                env=self._environment,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        return RunningService(name=name, process=process, log_path=log_path)

    def _wait_until_healthy(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        missing: list[str] = list(self.services)
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
        return [
            name
            for name in self.services
            if name in HEALTH_COMPONENTS
            and health.get(HEALTH_COMPONENTS[name], {}).get("status") != "healthy"
        ]

    def _raise_if_any_exited(self) -> None:
        for service in self._running:
            if service.exited():
                raise AirflowServicesError(
                    f"Airflow {service.name} exited with code {service.process.returncode} during start-up; "
                    f"its log {service.log_path} ends with:\n{service.log_tail()}"
                )

    def check_still_running(self) -> None:
        """Raise, naming the log, if a service has died since start-up."""
        self._raise_if_any_exited()


def wait_for_interrupt() -> None:
    """Block until Ctrl-C or SIGTERM, so ``up`` keeps the services running for a person to use."""
    stop_requested = False

    def request_stop(signum: int, frame: object) -> None:
        nonlocal stop_requested
        stop_requested = True

    # SIGINT too: a shell starting this in the background ignores SIGINT, which would disarm Ctrl-C.
    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    while not stop_requested:
        time.sleep(0.5)


def command_up(arguments: argparse.Namespace) -> int:
    extra_env = dict(item.split("=", 1) for item in arguments.env)
    started = time.monotonic()
    with AirflowServices(
        dags_folder=arguments.dags_folder,
        env=extra_env,
        home=arguments.home,
        logs_folder=arguments.logs_folder,
        database_cache=arguments.database_cache,
    ) as services:
        elapsed = time.monotonic() - started
        print(f"Airflow is up in {elapsed:.0f}s: {services.api_url}/ (every visitor is admin)", flush=True)
        print(f"AIRFLOW_HOME={services.layout.home}  logs: {services.layout.logs_folder}", flush=True)
        print("Press Ctrl-C to stop.", flush=True)
        wait_for_interrupt()
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
