"""The production shape for fault tests: one stack per test module, started and stopped by a fixture.

:func:`production_deployment` starts, under one :class:`~harness.processes.ProcessSupervisor`, the
stores of :mod:`harness.production` (PostgreSQL, Redis, SeaweedFS as S3), the local Modelbit
server in a process of its own, and the Airflow services of the production shape (scheduler,
dag-processor, an api-server with two worker processes receiving the webhooks, two triggerers, two
Celery workers), all on 127.0.0.1. The test module's DAG files read and write ``s3://`` paths
through the ``aws_default`` connection; the callback store is on S3 too.

Everything stops when the module ends, on Ctrl-C or SIGTERM (the handler of
:func:`~harness.processes.interrupts_stop` turns either into ``KeyboardInterrupt``, and pytest's
teardown stops the groups), and when pytest itself is killed (the supervisor's watchdog).
"""

from __future__ import annotations

import contextlib
import io
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from airflow_rest import AirflowRestClient
from airflow_services import AirflowServices, free_port
from harness.examples import ModelbitEndpoints
from harness.processes import ProcessSupervisor, interrupts_stop
from harness.production import (
    AWS_CONN_ID,
    BUCKET,
    PRODUCTION_SERVICE_COMMANDS,
    ProductionStack,
    production_service_environment,
)

from airflow_provider_modelbit.emulator.server import RunningEmulator, run_emulator
from airflow_provider_modelbit.plugins.modelbit import CALLBACK_URL_PREFIX

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"


@dataclass
class ProductionDeployment:
    """The running production shape, the local Modelbit server and a way into the object store."""

    stores: ProductionStack
    services: AirflowServices
    client: AirflowRestClient
    emulator: RunningEmulator
    endpoints: ModelbitEndpoints

    @property
    def database_url(self) -> str:
        return self.services.environment["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]

    @property
    def task_logs(self) -> Path:
        return self.services.layout.task_logs

    def put_table(self, key: str, table: pa.Table) -> None:
        sink = io.BytesIO()
        pq.write_table(table, sink)
        self._s3().put_object(Bucket=BUCKET, Key=key, Body=sink.getvalue())

    def read_table(self, key: str) -> pa.Table:
        body = self._s3().get_object(Bucket=BUCKET, Key=key)["Body"].read()
        return pq.read_table(pa.BufferReader(body))

    def keys(self, prefix: str) -> list[str]:
        """Every object key under ``prefix``."""
        pages = self._s3().get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
        return sorted(item["Key"] for page in pages for item in page.get("Contents", []))

    def connections(self) -> dict[str, str]:
        """The ``AIRFLOW_CONN_*`` variables of the services, for a reference run in the test process."""
        return {
            "AIRFLOW_CONN_AWS_DEFAULT": self.services.environment["AIRFLOW_CONN_AWS_DEFAULT"],
            "AIRFLOW_CONN_MODELBIT_DEFAULT": self.endpoints.connection_json(),
        }

    def _s3(self) -> Any:
        assert self.stores.s3 is not None
        return self.stores.s3.client()


def s3_url(key: str) -> str:
    """``key`` in the stack's bucket as the DAGs name it (through the ``aws_default`` connection)."""
    return f"s3://{AWS_CONN_ID}@{BUCKET}/{key}"


@contextlib.contextmanager
def production_deployment(
    dags: Path, *, logs_name: str, env: Mapping[str, str] | None = None
) -> Iterator[ProductionDeployment]:
    """
    Start the production shape on ``dags``; stop all of it on exit, interrupt included.

    :param dags: the DAGs folder.
    :param logs_name: the stores' and services' logs go to ``artifacts/production/<logs_name>``.
    :param env: extra Airflow settings for every service (e.g. shorter failure detection).
    """
    logs = ARTIFACTS / "production" / logs_name
    shutil.rmtree(logs, ignore_errors=True)
    # PostgreSQL runs as an unprivileged user, which must reach its cluster's folder.
    work = Path(tempfile.mkdtemp(prefix="modelbit-production-"))
    work.chmod(0o755)
    api_key = f"demo:{secrets.token_urlsafe(18)}"
    try:
        with (
            ProcessSupervisor() as supervisor,
            interrupts_stop(supervisor),
            run_emulator(
                mode="process", require_api_keys=True, api_keys=(api_key,), allow_http_webhooks=True
            ) as emulator,
        ):
            stores = ProductionStack(work / "stores", supervisor)
            stores.start()
            api_port = free_port()
            endpoints = ModelbitEndpoints(
                emulator.url,
                api_key,
                callback_secret=secrets.token_hex(32),
                receiver_url=f"http://127.0.0.1:{api_port}{CALLBACK_URL_PREFIX}",
            )
            settings = {
                **stores.airflow_environment(),
                "AIRFLOW_CONN_MODELBIT_DEFAULT": endpoints.connection_json(),
                # Only the runs a test triggers should execute.
                "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
                **(env or {}),
            }
            services = AirflowServices(
                dags_folder=dags,
                env=settings,
                home=work / "airflow-home",
                logs_folder=logs,
                supervisor=supervisor,
                commands=dict(PRODUCTION_SERVICE_COMMANDS),
                service_env=production_service_environment(),
                api_port=api_port,
            )
            with services, services.rest_client() as client:
                yield ProductionDeployment(stores, services, client, emulator, endpoints)
    finally:
        _keep_store_logs(work / "stores" / "logs", logs / "stores")
        shutil.rmtree(work, ignore_errors=True)


def _keep_store_logs(source: Path, target: Path) -> None:
    if source.is_dir():
        shutil.copytree(source, target, dirs_exist_ok=True)


def wait_until(condition: Callable[[], bool], timeout: float, describe: Callable[[], str]) -> float:
    """Poll ``condition`` every quarter second; return the seconds it took; fail at ``timeout``."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not reached within {timeout:.0f} s: {describe()}")
        time.sleep(0.25)
    return time.monotonic() - started


def service_processes(hostname: str) -> list[int]:
    """Process ids still running with ``hostname`` as their service name (what a service forked included)."""
    marker = f"MODELBIT_SERVICE_HOSTNAME={hostname}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if marker in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
    return found
