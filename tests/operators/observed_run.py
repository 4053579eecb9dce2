"""Run one DAG scoring with both operators, as a worker process configured for observability would.

``python -m tests.operators.observed_run SPEC.json`` builds the DAG from SPEC.json (input folder,
output paths), runs it with ``dag.test()`` and writes the run's state to SPEC's ``result`` file.
OpenLineage and metrics are set up by Airflow's configuration in the environment
(``AIRFLOW__OPENLINEAGE__TRANSPORT``, ``AIRFLOW__METRICS__*``), which Airflow reads once per
process: hence a process of its own, leaving the test session's configuration alone. The Modelbit
connection comes from ``AIRFLOW_CONN_MODELBIT_DEFAULT``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pendulum
from airflow.sdk import DAG, task

from airflow_provider_modelbit.operators import ModelbitBatchInferenceOperator, ModelbitInferenceOperator
from tests.airflow_dags import run_dag


def start_metrics() -> None:
    """Start Airflow's metrics backend from ``[metrics]``, as the task runner does when a worker starts."""
    try:
        from airflow.sdk.observability import stats
        from airflow.sdk.observability.metrics import stats_utils
    except ImportError:  # Airflow 3.1 builds its Stats backend from the configuration on first use
        return
    from airflow.sdk import conf

    stats.initialize(
        factory=stats_utils.get_stats_factory(),
        export_legacy_names=conf.getboolean("metrics", "legacy_names_on", fallback=True),
    )


def build_dag(spec: dict[str, Any]) -> DAG:
    with DAG(spec["dag_id"], schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC")) as dag:

        @task
        def features() -> list[list[Any]]:
            return [["a", 1], ["b", 2], ["c", 3]]

        ModelbitInferenceOperator(
            task_id="score_rows", deployment="doubler", data=features(), output_path=spec["inference_output"]
        )
        ModelbitInferenceOperator(
            task_id="score_deferred",
            deployment="doubler",
            data=[["d", 4], ["e", 5]],
            deferrable=True,
            callback_poll_interval=0.2,
            callback_delivery_margin=30,
        )
        ModelbitBatchInferenceOperator(
            task_id="score_table",
            deployment="echo",
            input_path=spec["batch_input"],
            output_path=spec["batch_output"],
            id_column="id",
            columns=["x"],
            argument_style="positional",
            batch_size=2,
            max_concurrency=1,
        )
    return dag


def main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    start_metrics()
    run = run_dag(build_dag(spec))
    Path(spec["result"]).write_text(json.dumps({"state": str(run.state)}))


if __name__ == "__main__":
    main(sys.argv[1])
