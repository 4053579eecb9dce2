"""What a real DAG run tells OpenLineage and the metrics backend.

One DAG (an upstream ``@task`` feeding ``ModelbitInferenceOperator``, a deferrable
``ModelbitInferenceOperator`` whose webhooks reach a receiver on 127.0.0.1, and
``ModelbitBatchInferenceOperator`` over a folder of two Parquet partitions) runs once with
``dag.test()`` in a process configured through Airflow's own settings: the OpenLineage provider
with its file transport, and ``[metrics]`` StatsD pointed at a UDP listener on 127.0.0.1. The
batch deployment answers about half its requests with 429 first, so retries show in both. The
tests read the emitted events and datagrams, and the local server's run counts.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import uuid
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from airflow_provider_modelbit.callbacks.receiver import ConnectionSecretSource, create_callback_app
from airflow_provider_modelbit.callbacks.store import CallbackStore
from airflow_provider_modelbit.emulator import RunningEmulator
from airflow_provider_modelbit.hooks import metrics
from airflow_provider_modelbit.operators.lineage import RUN_FACET_KEY, XCOM_NAMESPACE
from tests.asgi_thread import serve_in_thread

pytestmark = pytest.mark.slow  # one DAG run in a process of its own (~40 s idle, longer when busy)

REPOSITORY = Path(__file__).resolve().parents[2]
API_KEY = "mbkOBSERVE01:key"
CALLBACK_SECRET = "observability-test-secret-0123"
BATCH_IDS = list(range(1, 9))


@dataclass
class ObservedRun:
    """What one observed DAG run left: outputs, lineage events, StatsD datagrams, run counts."""

    state: str
    workspace_url: str
    folder: Path
    events: list[dict[str, Any]]
    datagrams: list[str]
    runs: dict[str, dict[str, int]]
    retried_429s: int
    counters: dict[tuple[str, frozenset[tuple[str, str]]], float] = field(default_factory=dict)
    timers: dict[tuple[str, frozenset[tuple[str, str]]], list[float]] = field(
        default_factory=lambda: defaultdict(list)
    )

    def complete_event(self, task_id: str) -> dict[str, Any]:
        (event,) = [
            event
            for event in self.events
            if event["eventType"] == "COMPLETE" and event["job"]["name"].endswith(f".{task_id}")
        ]
        return event

    def counted(self, name: str, **tags: str) -> float:
        """The sum of counter ``name`` over the datagrams carrying every tag in ``tags``."""
        wanted = set(tags.items())
        return sum(
            value
            for (stat, stat_tags), value in self.counters.items()
            if stat == name and wanted <= stat_tags
        )


def _write_partitions(folder: Path) -> Path:
    partitions = folder / "features"
    partitions.mkdir()
    for part, ids in enumerate((BATCH_IDS[:4], BATCH_IDS[4:])):
        table = pa.table({"id": ids, "x": [row_id * 10 for row_id in ids]})
        pq.write_table(table, partitions / f"part-{part}.parquet")
    return partitions


def _parse_statsd(run: ObservedRun) -> None:
    # With statsd_influxdb_enabled, tags ride in the name: "airflow.modelbit.requests,deployment=echo:1|c".
    for datagram in run.datagrams:
        for line in datagram.splitlines():
            head, _, rest = line.partition(":")
            value, _, kind = rest.partition("|")
            name, *tag_parts = head.split(",")
            tags = frozenset(tuple(part.split("=", 1)) for part in tag_parts)
            if kind.startswith("c"):
                key = (name, tags)
                run.counters[key] = run.counters.get(key, 0) + float(value)
            elif kind.startswith("ms"):
                run.timers[(name, tags)].append(float(value))


def _drain(listener: socket.socket) -> list[str]:
    # UDP on loopback is queued by the kernel when sent: once the process has exited, the socket
    # holds every datagram, and a short read timeout finds the end.
    listener.settimeout(2.0)
    datagrams = []
    while True:
        try:
            datagrams.append(listener.recv(65_535).decode())
        except TimeoutError:
            return datagrams


def _connection(url: str, receiver_url: str) -> str:
    extra = {"callback_base_url": receiver_url, "callback_secret": CALLBACK_SECRET}
    return json.dumps({"conn_type": "modelbit", "host": url, "password": API_KEY, "extra": extra})


def _observability_settings(events_file: Path, statsd_port: int) -> dict[str, str]:
    """OpenLineage's file transport and StatsD with tags, as Airflow's configuration says them."""
    return {
        "AIRFLOW__OPENLINEAGE__TRANSPORT": json.dumps(
            {"type": "file", "log_file_path": str(events_file), "append": True}
        ),
        "AIRFLOW__OPENLINEAGE__NAMESPACE": "observed",
        "AIRFLOW__METRICS__STATSD_ON": "True",
        "AIRFLOW__METRICS__STATSD_HOST": "127.0.0.1",
        "AIRFLOW__METRICS__STATSD_PORT": str(statsd_port),
        "AIRFLOW__METRICS__STATSD_PREFIX": "airflow",
        "AIRFLOW__METRICS__STATSD_INFLUXDB_ENABLED": "True",
    }


@pytest.fixture(scope="module")
def observed(
    airflow_db: None, modelbit_emulator_session: RunningEmulator, tmp_path_factory: Any
) -> Iterator[ObservedRun]:
    client = modelbit_emulator_session.client
    client.reset()
    client.configure(
        require_api_keys=True, api_keys=[API_KEY], allow_http_webhooks=True, webhook_time_scale=0.01
    )
    client.set_faults(rate_429=0.5, retry_after=0, deployment="echo", seed=3)
    # Held back, the deferrable task's delivery cannot arrive before the task looks for it: the task
    # defers, so the deferred wait is recorded (a delivery already in is collected without one).
    client.set_faults(webhook_delay_seconds=5.0, deployment="doubler")
    folder = tmp_path_factory.mktemp("observed")
    spec = {
        "dag_id": f"observed_{uuid.uuid4().hex[:8]}",
        "inference_output": str(folder / "rows.parquet"),
        "batch_input": str(_write_partitions(folder)),
        "batch_output": str(folder / "table.parquet"),
        "result": str(folder / "result.json"),
    }
    (folder / "spec.json").write_text(json.dumps(spec))
    events_file = folder / "lineage.jsonl"
    with (
        pytest.MonkeyPatch.context() as patch,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as listener,
    ):
        # The receiver (here) and the task (in its own process) share the store and the secret.
        patch.setenv("AIRFLOW__MODELBIT__CALLBACK_STORE", str(folder / "callbacks"))
        patch.setenv("AIRFLOW_CONN_MODELBIT_DEFAULT", _connection(modelbit_emulator_session.url, ""))
        receiver = create_callback_app(store=CallbackStore(), secrets=ConnectionSecretSource())
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        listener.bind(("127.0.0.1", 0))
        with serve_in_thread(receiver) as receiver_url:
            patch.setenv(
                "AIRFLOW_CONN_MODELBIT_DEFAULT", _connection(modelbit_emulator_session.url, receiver_url)
            )
            environment = {**os.environ, **_observability_settings(events_file, listener.getsockname()[1])}
            finished = subprocess.run(
                [sys.executable, "-m", "tests.operators.observed_run", str(folder / "spec.json")],
                cwd=REPOSITORY,
                env=environment,
                capture_output=True,
                text=True,
                timeout=300,
            )
        datagrams = _drain(listener)
    (folder / "run.log").write_text(finished.stdout + finished.stderr)
    assert finished.returncode == 0, finished.stderr[-4000:]
    lines = events_file.read_text().splitlines() if events_file.exists() else []
    run = ObservedRun(
        state=json.loads((folder / "result.json").read_text())["state"],
        workspace_url=modelbit_emulator_session.url,
        folder=folder,
        events=[json.loads(line) for line in lines if line.strip()],
        datagrams=datagrams,
        runs={name: client.runs(name) for name in ("doubler", "echo")},
        retried_429s=client.fault_counts().get("rate_429", 0),
    )
    _parse_statsd(run)
    yield run
    client.reset()


class TestLineage:
    def test_the_run_succeeds_and_scores_each_row_once(self, observed: ObservedRun) -> None:
        assert observed.state == "success"
        assert observed.runs["doubler"] == {"a": 1, "b": 1, "c": 1, "d": 1, "e": 1}
        assert observed.runs["echo"] == {str(row_id): 1 for row_id in BATCH_IDS}
        scored = pq.read_table(observed.folder / "table.parquet")
        assert scored.column("id").to_pylist() == BATCH_IDS
        assert scored.column("result").to_pylist() == [row_id * 10 for row_id in BATCH_IDS]

    def test_the_batch_output_is_the_final_parquet_path(self, observed: ObservedRun) -> None:
        event = observed.complete_event("score_table")
        assert [(dataset["namespace"], dataset["name"]) for dataset in event["outputs"]] == [
            ("file", str(observed.folder / "table.parquet"))
        ]
        assert [dataset["name"] for dataset in event["inputs"]] == [
            str(observed.folder / "features" / "part-0.parquet"),
            str(observed.folder / "features" / "part-1.parquet"),
        ]
        assert ".tmp-" not in json.dumps(event)

    def test_the_inference_input_is_the_upstream_xcom(self, observed: ObservedRun) -> None:
        event = observed.complete_event("score_rows")
        dag_id = event["job"]["name"].rsplit(".", 1)[0]
        assert [(dataset["namespace"], dataset["name"]) for dataset in event["inputs"]] == [
            (XCOM_NAMESPACE, f"{dag_id}.features")
        ]
        assert [dataset["name"] for dataset in event["outputs"]] == [str(observed.folder / "rows.parquet")]

    def test_the_modelbit_run_facet_says_what_ran(self, observed: ObservedRun) -> None:
        facet = observed.complete_event("score_table")["run"]["facets"][RUN_FACET_KEY]
        assert {key: facet[key] for key in ("deployment", "version", "branch", "rows", "chunks")} == {
            "deployment": "echo",
            "version": "latest",
            "branch": "main",
            "rows": 8,
            "chunks": 4,
        }
        assert facet["workspace"] == urlsplit(observed.workspace_url).netloc
        assert facet["retries"] == observed.retried_429s > 0
        assert facet["retriesByReason"] == {"rate_limited": observed.retried_429s}
        rows_facet = observed.complete_event("score_rows")["run"]["facets"][RUN_FACET_KEY]
        assert (rows_facet["deployment"], rows_facet["rows"], rows_facet["retries"]) == ("doubler", 3, 0)
        deferred_facet = observed.complete_event("score_deferred")["run"]["facets"][RUN_FACET_KEY]
        assert (deferred_facet["rows"], deferred_facet["chunks"]) == (2, 1)


class TestMetrics:
    def test_requests_rows_and_latency_per_deployment(self, observed: ObservedRun) -> None:
        requests = "airflow." + metrics.REQUESTS
        # The deferred task's submission is one more request; its rows count once collected.
        assert observed.counted(requests, deployment="doubler", outcome="success") == 2
        assert observed.counted(requests, deployment="echo", outcome="success") == 4
        assert observed.counted("airflow." + metrics.ROWS_SCORED, deployment="doubler") == 3 + 2
        assert observed.counted("airflow." + metrics.ROWS_SCORED, deployment="echo") == 8
        latency = observed.timers["airflow." + metrics.REQUEST_LATENCY, frozenset({("deployment", "echo")})]
        assert len(latency) == 4
        assert all(milliseconds >= 0 for milliseconds in latency)

    def test_retries_by_reason_and_429s(self, observed: ObservedRun) -> None:
        retried = observed.retried_429s
        assert retried > 0
        assert (
            observed.counted("airflow." + metrics.REQUESTS, deployment="echo", outcome="retried") == retried
        )
        assert (
            observed.counted("airflow." + metrics.RETRIES, deployment="echo", reason="rate_limited")
            == retried
        )
        assert observed.counted("airflow." + metrics.RATE_LIMITED_ANSWERS, deployment="echo") == retried
        assert observed.counted("airflow." + metrics.RETRIES, deployment="doubler") == 0

    def test_the_deferred_wait(self, observed: ObservedRun) -> None:
        waits = observed.timers["airflow." + metrics.DEFERRED_WAIT, frozenset({("deployment", "doubler")})]
        assert len(waits) == 1
        assert waits[0] >= 0
