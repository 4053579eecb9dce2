"""DAGs that exercise the services harness itself: a plain task, a deferring sensor, a failing task."""

from __future__ import annotations

import datetime

from airflow.providers.standard.sensors.time_delta import WaitSensor
from airflow.sdk import dag, task

START = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
LOG_MARKER = "harness says hello"


@dag(schedule=None, start_date=START, catchup=False, tags=["harness"])
def harness_hello() -> None:
    @task
    def say_hello() -> int:
        print(LOG_MARKER)
        return 1

    say_hello()


@dag(schedule=None, start_date=START, catchup=False, tags=["harness"])
def harness_deferred() -> None:
    # Long enough for a poll every half second to see the task in the triggerer.
    WaitSensor(task_id="wait_in_triggerer", time_to_wait=datetime.timedelta(seconds=10), deferrable=True)


@dag(schedule=None, start_date=START, catchup=False, tags=["harness"])
def harness_failure() -> None:
    @task(retries=0)
    def fail_on_purpose() -> None:
        raise ValueError("planned failure for the harness test")

    fail_on_purpose()


harness_hello()
harness_deferred()
harness_failure()
