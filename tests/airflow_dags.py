"""
Parse and run DAGs in tests on every supported Airflow (3.1 floor to 3.3).

Airflow 3.2 moved ``DagBag`` and ``sync_bag_to_db`` from ``airflow.models.dagbag`` to
``airflow.dag_processing.dagbag``, and ``TaskDeferred`` from ``airflow.exceptions`` to
``airflow.sdk.exceptions``; tests import them from here, and mark what 3.1 cannot do outside a task.
"""

from __future__ import annotations

import functools
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from unittest import mock

import airflow
import pendulum
import pytest
from airflow.sdk import DAG, task

try:
    from airflow.dag_processing.dagbag import DagBag, sync_bag_to_db
except ImportError:  # Airflow < 3.2
    from airflow.models.dagbag import DagBag, sync_bag_to_db  # type: ignore[no-redef,attr-defined]

try:
    from airflow.sdk.exceptions import TaskDeferred
except ImportError:  # Airflow < 3.2
    from airflow.exceptions import TaskDeferred  # type: ignore[no-redef]

if TYPE_CHECKING:
    from pathlib import Path

    from airflow.sdk import BaseOperator

__all__ = [
    "NEEDS_LOOKUP_OUTSIDE_TASKS",
    "NOT_RECEIVED",
    "DagBag",
    "TaskDeferred",
    "TaskOutcome",
    "parse_dags",
    "run_dag",
    "run_task",
    "task_errors",
]

# Airflow 3.1.0 asks the task supervisor for a connection no secrets backend has, and outside a
# task there is none to ask: the lookup fails with ImportError instead of "not found".
NEEDS_LOOKUP_OUTSIDE_TASKS = pytest.mark.skipif(
    tuple(int(part) for part in airflow.__version__.split(".")[:2]) < (3, 2),
    reason="Airflow 3.1 cannot report a missing connection outside a task",
)

LIFESPAN_TIMEOUT_SECONDS = 120


def _share_the_in_process_execution_api() -> None:
    """
    Build dag.test()'s in-process execution API once per session, started before its first task.

    Airflow 3.1 and 3.2 build the whole API app again for every task dag.test() runs (seconds
    each), and start its lifespan in the background: on a busy machine the task's first request
    can come before it and fail (3.2: "'State' object has no attribute 'svcs_registry'"). 3.3
    caches the server with this same ``lru_cache``; here it is also started before it is used.
    """
    from airflow.sdk.execution_time import supervisor

    if hasattr(supervisor.in_process_api_server, "cache_info"):
        return
    build = supervisor.in_process_api_server

    @functools.lru_cache(maxsize=1)
    def started_once() -> Any:
        api = build()
        api.transport  # noqa: B018 - starts the app's lifespan on the transport's event loop
        deadline = time.monotonic() + LIFESPAN_TIMEOUT_SECONDS
        while not getattr(api.app.state, "lifespan_called", False):
            if time.monotonic() > deadline:
                raise RuntimeError("dag.test()'s in-process execution API did not start")
            time.sleep(0.05)
        return api

    supervisor.in_process_api_server = started_once


_share_the_in_process_execution_api()

#: The value of a task whose result no downstream task received.
NOT_RECEIVED = object()


@dataclass
class TaskOutcome:
    """What a run of one operator's task left behind."""

    state: str
    value: Any  # what a downstream task received through XCom, or NOT_RECEIVED
    error: BaseException | None


def parse_dags(path: Path | str) -> Any:
    """A ``DagBag`` of the DAG file or folder at ``path``, parsed as the dag-processor would."""
    return DagBag(dag_folder=str(path), safe_mode=False)


def run_dag(dag: Any) -> Any:
    """Store an in-memory DAG in the metadata database, then run it with ``dag.test()``."""
    from airflow.dag_processing.bundles.manager import DagBundlesManager

    DagBundlesManager().sync_bundles_to_db()
    bag = DagBag(collect_dags=False)
    bag.bag_dag(dag)
    sync_bag_to_db(bag, "dags-folder", None)
    return dag.test()


@contextmanager
def task_errors() -> Iterator[dict[str, BaseException]]:
    """
    Collect, by task ID, the exception each task of a ``dag.test()`` run last failed with.

    In ``dag.test()`` failure callbacks find it in ``context["exception"]`` only from Airflow 3.2;
    the task runner's ``finalize`` step receives it on every version.
    """
    from airflow.sdk.execution_time import task_runner

    errors: dict[str, BaseException] = {}
    finalize = task_runner.finalize

    def recording_finalize(
        ti: Any, state: Any, context: Any, log: Any, error: BaseException | None = None
    ) -> Any:
        if error is not None:
            errors[ti.task_id] = error
        return finalize(ti, state, context, log, error)

    with mock.patch.object(task_runner, "finalize", recording_finalize):
        yield errors


def fresh_dag(prefix: str, **dag_kwargs: Any) -> DAG:
    """An unscheduled DAG for one test run, its id ``prefix`` and a random suffix; use it as a context."""
    return DAG(
        f"{prefix}_{uuid.uuid4().hex[:10]}",
        schedule=None,
        start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
        **dag_kwargs,
    )


def run_task(build: Callable[[], BaseOperator], **dag_kwargs: Any) -> TaskOutcome:
    """
    Run ``build()``'s operator in a fresh DAG with ``dag.test()``.

    ``build`` is called inside the DAG, so it may create upstream tasks. A downstream task records
    the operator's XCom value, and the runner the exception it failed with.
    """
    seen: dict[str, Any] = {}
    with fresh_dag("test_task", **dag_kwargs) as dag:
        operator = build()

        @task
        def receive(value: Any) -> None:
            seen["value"] = value

        receive(operator.output)
    with task_errors() as errors:
        run = run_dag(dag)
    state = run.get_task_instance(operator.task_id).state
    return TaskOutcome(str(state), seen.get("value", NOT_RECEIVED), errors.get(operator.task_id))
