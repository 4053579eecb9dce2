"""The production shape on one machine: PostgreSQL, Redis and SeaweedFS (S3) for a CeleryExecutor Airflow.

``ProductionStack`` starts, under the run's :class:`~harness.processes.ProcessSupervisor`:

- a throw-away **PostgreSQL** cluster in ``<run>/postgres`` as the metadata database, run as the
  unprivileged ``nobody`` when the script runs as root (PostgreSQL refuses to run as root);
- **Redis** as the Celery broker, keeping nothing on disk;
- **SeaweedFS** (``weed server -s3``) as a real S3-compatible object store, with one bucket holding
  the examples' inputs, outputs, checkpoints and the callback store.

Everything listens on 127.0.0.1 on free ports. :meth:`ProductionStack.airflow_environment` is what
every Airflow process of the run needs to use them (the ``aws_default`` connection included), and
:func:`production_services` the Airflow services of the shape: scheduler, dag-processor, an
api-server with two worker processes (the callback receiver is mounted in each), two triggerers and
two Celery workers, each process named by its own hostname so that the report can tell them apart.
The binaries come from ``scripts/bootstrap_production.sh``.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import socket
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.processes import ProcessError, ProcessGroup, ProcessSupervisor

LOOPBACK = "127.0.0.1"
#: The bucket holding the examples' data and the callback store.
BUCKET = "modelbit-examples"
#: The Airflow connection the ``s3://`` paths name.
AWS_CONN_ID = "aws_default"
DATABASE = "airflow"
DATABASE_USER = "airflow"
#: The unprivileged account PostgreSQL runs as when the script runs as root.
POSTGRES_ACCOUNT = ("nobody", "nogroup")
#: Seconds a store gets to accept connections; generous, for a busy machine.
READY_TIMEOUT_SECONDS = 120.0
# A store's ports are picked free and bound by the store a moment later; on a busy machine another
# process can take one in between, and the store exits. It is started again on other ports.
PORT_ATTEMPTS = 3
_PORT_TAKEN = "address already in use"
#: Environment variable naming the process to :func:`harness.hostname.service_hostname`.
HOSTNAME_VARIABLE = "MODELBIT_SERVICE_HOSTNAME"
SCRIPTS_FOLDER = Path(__file__).resolve().parents[1]


class ProductionStackError(RuntimeError):
    """A part of the production stack is missing or did not start; the message says which and what to do."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        return int(probe.getsockname()[1])


def postgres_binary(name: str) -> str:
    """``name`` from the newest PostgreSQL installed by Debian's ``postgresql`` package (or on PATH)."""
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=_major_version)
    if found:
        return found[-1]
    on_path = shutil.which(name)
    if on_path is None:
        raise ProductionStackError(
            f"PostgreSQL's {name!r} is not installed; run 'bash scripts/bootstrap_production.sh'."
        )
    return on_path


def _major_version(path: str) -> int:
    version = Path(path).parents[1].name
    return int(version) if version.isdigit() else 0


def required_binary(name: str) -> str:
    beside_python = Path(sys.executable).with_name(name)
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which(name)
    if found is None:
        raise ProductionStackError(f"{name!r} is not installed; run 'bash scripts/bootstrap_production.sh'.")
    return found


def unprivileged(command: list[str]) -> list[str]:
    """``command`` run as ``nobody`` when this process is root (PostgreSQL refuses root); as is otherwise."""
    if os.geteuid() != 0:
        return command
    user, group = POSTGRES_ACCOUNT
    return ["setpriv", f"--reuid={user}", f"--regid={group}", "--clear-groups", *command]


def wait_until(
    ready: Callable[[], bool], group: ProcessGroup, timeout: float = READY_TIMEOUT_SECONDS
) -> None:
    """Poll ``ready`` until it is true; fail, naming the log, if the process exits or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if group.exited():
            raise ProcessError(
                f"The {group.name} exited with code {group.process.returncode}; "
                f"its log {group.log_file} ends with:\n{group.log_tail()}"
            )
        try:
            if ready():
                return
        except Exception:  # not accepting connections yet, whatever the client raises
            pass
        time.sleep(0.25)
    raise ProcessError(f"The {group.name} was not ready after {timeout:.0f} s; see {group.log_file}")


@dataclass(frozen=True)
class S3Credentials:
    """The object store's endpoint and the one identity SeaweedFS is configured with."""

    endpoint_url: str
    access_key: str = "modelbit-examples"
    secret_key: str = "modelbit-examples-secret"

    def connection_json(self) -> str:
        """The ``aws`` Airflow connection reaching the store (path-style addressing, any region)."""
        extra = {"endpoint_url": self.endpoint_url, "region_name": "us-east-1"}
        connection = {"conn_type": "aws", "login": self.access_key, "password": self.secret_key}
        return json.dumps({**connection, "extra": extra})

    def client(self, timeout: float | None = None) -> Any:
        """A boto3 S3 client; with ``timeout``, each request gets that many seconds and one try."""
        import boto3
        from botocore.config import Config

        config = (
            None
            if timeout is None
            else Config(connect_timeout=timeout, read_timeout=timeout, retries={"max_attempts": 1})
        )
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name="us-east-1",
            config=config,
        )


@dataclass
class ProductionStack:
    """
    PostgreSQL, Redis and SeaweedFS for one run, under ``folder``.

    :param folder: where the stores keep their files and logs (``postgres/``, ``seaweedfs/``, ``logs/``).
    :param supervisor: the run's supervisor; the stores stop with everything else.
    """

    folder: Path
    supervisor: ProcessSupervisor
    postgres_port: int = 0
    redis_port: int = 0
    s3: S3Credentials | None = None
    _groups: dict[str, ProcessGroup] = field(default_factory=dict, init=False, repr=False)
    _weed_command: list[str] = field(default_factory=list, init=False, repr=False)
    _weed_sockets: tuple[Path, ...] = field(default=(), init=False, repr=False)

    @property
    def logs_folder(self) -> Path:
        return self.folder / "logs"

    @property
    def database_url(self) -> str:
        return f"postgresql+psycopg2://{DATABASE_USER}@{LOOPBACK}:{self.postgres_port}/{DATABASE}"

    @property
    def broker_url(self) -> str:
        return f"redis://{LOOPBACK}:{self.redis_port}/0"

    @property
    def data_url(self) -> str:
        """Where the examples' inputs and outputs live, as the DAGs name it."""
        return f"s3://{AWS_CONN_ID}@{BUCKET}/data"

    @property
    def callback_store_url(self) -> str:
        return f"s3://{AWS_CONN_ID}@{BUCKET}/callbacks"

    def start(self) -> None:
        """Start the three stores (PostgreSQL's cluster initialised first) and wait until each answers."""
        self.logs_folder.mkdir(parents=True, exist_ok=True)
        self.start_postgres()
        self.start_redis()
        self.start_object_store()

    def start_postgres(self) -> None:
        data = self.folder / "postgres"
        if not data.exists():
            self._initialise_postgres(data)
        chosen = self.postgres_port

        def command() -> list[str]:
            self.postgres_port = chosen or free_port()
            # No Unix socket (its default folder is the system's), no fsync: the cluster is thrown away.
            settings = [f"listen_addresses={LOOPBACK}", "unix_socket_directories=", "fsync=off"]
            settings.append("max_connections=200")
            command = [postgres_binary("postgres"), "-D", str(data), "-p", str(self.postgres_port)]
            return unprivileged([*command, *(part for setting in settings for part in ("-c", setting))])

        self._start_store("PostgreSQL", "postgres", command, self._postgres_accepts, new_ports=not chosen)
        self._create_database()

    def _initialise_postgres(self, data: Path) -> None:
        data.mkdir(parents=True)
        if os.geteuid() == 0:
            shutil.chown(data, *POSTGRES_ACCOUNT)
        command = unprivileged(
            [postgres_binary("initdb"), "-D", str(data), "-U", DATABASE_USER, "--auth=trust", "-E", "UTF8"]
        )
        code = self.supervisor.run("initdb", command, _stores_environment(), self._log("initdb"), 300)
        if code != 0:
            raise ProductionStackError(f"initdb failed ({code}); see {self._log('initdb')}")

    def _postgres_connect(self, database: str) -> Any:
        import psycopg2

        return psycopg2.connect(
            host=LOOPBACK, port=self.postgres_port, user=DATABASE_USER, dbname=database, connect_timeout=5
        )

    def _postgres_accepts(self) -> bool:
        self._postgres_connect("postgres").close()
        return True

    def _create_database(self) -> None:
        connection = self._postgres_connect("postgres")
        try:
            connection.autocommit = True
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,))
                if cursor.fetchone() is None:
                    cursor.execute(f"CREATE DATABASE {DATABASE}")
        finally:
            connection.close()

    def start_redis(self) -> None:
        chosen = self.redis_port
        folder = self.folder / "redis"
        folder.mkdir(parents=True, exist_ok=True)

        def command() -> list[str]:
            self.redis_port = chosen or free_port()
            command = [required_binary("redis-server"), "--bind", LOOPBACK, "--port", str(self.redis_port)]
            return [*command, "--save", "", "--appendonly", "no", "--dir", str(folder)]

        self._start_store("Redis", "redis", command, self._redis_answers, new_ports=not chosen)

    def _redis_answers(self) -> bool:
        import redis

        return bool(redis.Redis(host=LOOPBACK, port=self.redis_port, socket_timeout=5).ping())

    def start_object_store(self) -> None:
        """Start SeaweedFS (again, after :meth:`stop_object_store`, on the same ports and data)."""
        restart = bool(self._weed_command)

        def command() -> list[str]:
            if not restart:
                self._weed_command = self._seaweedfs_command()
            return self._weed_command

        self._start_store(
            "SeaweedFS", "seaweedfs", command, self._bucket_ready, new_ports=not restart,
            leftovers=lambda: self._weed_sockets,
        )  # fmt: skip

    def _start_store(
        self,
        name: str,
        key: str,
        command: Callable[[], list[str]],
        ready: Callable[[], bool],
        *,
        new_ports: bool,
        leftovers: Callable[[], tuple[Path, ...]] = tuple,
    ) -> None:
        """
        Start a store with ``command()`` and wait until ``ready``.

        :param key: the store's log name and its key among the started groups.
        :param command: builds the command line, picking the store's ports when it may (each call
            picks them again).
        :param leftovers: the files the started command leaves behind (asked after ``command()``).
        :param new_ports: the ports may be picked again: a store that exits because another process
            took one of them meanwhile is started again on new ones, up to :data:`PORT_ATTEMPTS` times.
        """
        log = self._log(key)
        for attempt in range(1, PORT_ATTEMPTS + 1):
            start = log.stat().st_size if log.exists() else 0
            group = self.supervisor.start(name, command(), _stores_environment(), log, leftovers())
            self._groups[key] = group
            try:
                wait_until(ready, group)
                return
            except ProcessError:
                lost_a_port = group.exited() and _lost_a_port(log, start)
                if not (new_ports and lost_a_port and attempt < PORT_ATTEMPTS):
                    raise
                self.supervisor.stop(group)  # whatever the store had started besides
                print(f"  {name} lost a port to another process; starting it on other ports", flush=True)

    def stop_object_store(self) -> None:
        """Stop SeaweedFS (SIGTERM, then SIGKILL): the object store becomes unreachable until restarted."""
        group = self._groups.pop("seaweedfs")
        self.supervisor.stop(group)

    def _seaweedfs_command(self) -> list[str]:
        data = self.folder / "seaweedfs"
        data.mkdir(parents=True, exist_ok=True)
        config = self.folder / "seaweedfs-s3.json"
        self.s3 = S3Credentials(endpoint_url=f"http://{LOOPBACK}:{free_port()}")
        identity = {
            "name": "airflow",
            "credentials": [{"accessKey": self.s3.access_key, "secretKey": self.s3.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }
        config.write_text(json.dumps({"identities": [identity]}))
        s3_port = self.s3.endpoint_url.rsplit(":", 1)[1]
        ports = {
            name: str(free_port())
            for name in ("master", "master.grpc", "volume", "volume.grpc", "filer", "filer.grpc", "s3.grpc")
        }
        # Its own log files go beside the stores' logs, not into the machine's temporary folder.
        log_files = self.logs_folder / "seaweedfs"
        log_files.mkdir(parents=True, exist_ok=True)
        command = [required_binary("weed"), f"-logdir={log_files}", "server"]
        command += [f"-ip={LOOPBACK}", f"-ip.bind={LOOPBACK}"]
        command += [f"-dir={data}"]
        command += [f"-master.port={ports['master']}", f"-master.port.grpc={ports['master.grpc']}"]
        command += [f"-volume.port={ports['volume']}", f"-volume.port.grpc={ports['volume.grpc']}"]
        command += [f"-filer.port={ports['filer']}", f"-filer.port.grpc={ports['filer.grpc']}"]
        command += ["-s3", f"-s3.port={s3_port}", f"-s3.port.grpc={ports['s3.grpc']}", f"-s3.config={config}"]
        # The Iceberg and Lance endpoints would take fixed ports; small volumes suit a small machine.
        command += ["-s3.port.iceberg=0", "-s3.port.lance=0", "-metricsPort=0"]
        # SeaweedFS listens on a Unix socket in /tmp beside some ports, and leaves most of them there.
        sockets = [f"filer-{ports['filer']}", f"s3-{s3_port}"]
        sockets += [f"{name.replace('.', '-')}-{ports[name]}" for name in ports if name.endswith(".grpc")]
        self._weed_sockets = tuple(Path(f"/tmp/seaweedfs-{socket}.sock") for socket in sockets)
        return [*command, "-master.volumeSizeLimitMB=64", "-volume.max=50"]

    def _bucket_ready(self) -> bool:
        assert self.s3 is not None
        # Asked every quarter second: an endpoint that accepts and never answers must not hold it.
        client = self.s3.client(timeout=5)
        existing = {bucket["Name"] for bucket in client.list_buckets().get("Buckets", [])}
        if BUCKET not in existing:
            client.create_bucket(Bucket=BUCKET)
        return True

    def upload_folder(self, local: Path, prefix: str) -> int:
        """Copy every file under ``local`` to ``s3://<bucket>/<prefix>/``; return how many."""
        assert self.s3 is not None
        client = self.s3.client()
        files = [path for path in sorted(local.rglob("*")) if path.is_file()]
        for path in files:
            client.upload_file(str(path), BUCKET, f"{prefix}/{path.relative_to(local).as_posix()}")
        return len(files)

    def airflow_environment(self) -> dict[str, str]:
        """What every Airflow process of the run needs: database, executor, broker, S3 connection, data."""
        assert self.s3 is not None
        return {
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": self.database_url,
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__CORE__PARALLELISM": "8",
            "AIRFLOW__CELERY__BROKER_URL": self.broker_url,
            "AIRFLOW__CELERY__RESULT_BACKEND": f"db+postgresql+psycopg2://{DATABASE_USER}@{LOOPBACK}:{self.postgres_port}/{DATABASE}",
            "AIRFLOW__CELERY__WORKER_CONCURRENCY": "2",
            "AIRFLOW__CORE__HOSTNAME_CALLABLE": "harness.hostname.service_hostname",
            "AIRFLOW__API__WORKERS": "2",
            # A task's first call to the execution API can wait on a busy api-server (two workers on
            # a small machine); the default 5 s fails the task before it starts.
            "AIRFLOW__WORKERS__EXECUTION_API_TIMEOUT": "60",
            "AIRFLOW_CONN_AWS_DEFAULT": self.s3.connection_json(),
            "AIRFLOW__MODELBIT__CALLBACK_STORE": self.callback_store_url,
            "MODELBIT_EXAMPLES_DATA": self.data_url,
            "PYTHONPATH": _with_scripts_folder(os.environ.get("PYTHONPATH", "")),
        }

    def _log(self, name: str) -> Path:
        return self.logs_folder / f"{name}.log"


def _lost_a_port(log: Path, start: int) -> bool:
    """Tell whether what a store wrote to ``log`` after byte ``start`` says a port it was given was taken."""
    with log.open("rb") as stream:
        stream.seek(start)
        return _PORT_TAKEN in stream.read().decode(errors="replace").lower()


def _stores_environment() -> dict[str, str]:
    return {key: value for key, value in os.environ.items() if not key.startswith("AIRFLOW")}


def _with_scripts_folder(pythonpath: str) -> str:
    # The services import harness.hostname (the hostname callable) from the scripts folder.
    return os.pathsep.join(part for part in (str(SCRIPTS_FOLDER), pythonpath) if part)


#: The Airflow services of the production shape: name -> ``airflow`` arguments.
PRODUCTION_SERVICE_COMMANDS: dict[str, tuple[str, ...]] = {
    "api-server": ("api-server", "--host", LOOPBACK, "--workers", "2"),
    "scheduler": ("scheduler", "--skip-serve-logs"),
    "dag-processor": ("dag-processor",),
    "triggerer-1": ("triggerer", "--skip-serve-logs"),
    "triggerer-2": ("triggerer", "--skip-serve-logs"),
    "celery-worker-1": ("celery", "worker", "--celery-hostname", "celery-worker-1@%h", "--skip-serve-logs"),
    "celery-worker-2": ("celery", "worker", "--celery-hostname", "celery-worker-2@%h", "--skip-serve-logs"),
}


def production_service_environment() -> dict[str, Mapping[str, str]]:
    """Each service's own environment: its name as the hostname Airflow records for what it runs."""
    return {name: {HOSTNAME_VARIABLE: name} for name in PRODUCTION_SERVICE_COMMANDS}


__all__ = [
    "AWS_CONN_ID",
    "BUCKET",
    "PRODUCTION_SERVICE_COMMANDS",
    "ProductionStack",
    "ProductionStackError",
    "S3Credentials",
    "production_service_environment",
]
