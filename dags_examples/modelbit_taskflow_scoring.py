"""TaskFlow scoring: ``@task`` and ``@task.modelbit`` only, mapped over the partitions of a table.

What this DAG shows:

- A ``@task`` listing the Parquet partition files of the churn table.
- A function decorated with ``@task.modelbit`` that reads one partition into a pandas DataFrame
  (indexed by customer ID) and returns the columns the model takes; the decorator sends that
  DataFrame to the ``churn_scorer`` deployment exactly as ``ModelbitInferenceOperator`` would and
  writes the scores of each partition to its own Parquet file (``output_path`` is templated per
  mapped task with ``ti.map_index``).
- ``.expand(partition=...)``: one mapped scoring task per file at run time, each retried on its
  own; the task returns ``{"path", "rows", "bytes"}``, never the scores.
- A final ``@task`` adding up the rows scored.

Parsing this file needs neither the ``modelbit_default`` connection nor the network: the folders
are DAG params whose defaults live under ``$MODELBIT_EXAMPLES_DATA`` (else
``$AIRFLOW_HOME/modelbit-examples``); ``python scripts/run_examples.py`` writes the sample
partitions there and runs this DAG end to end against the local Modelbit server.
"""

from __future__ import annotations

import os
from typing import Any

import pendulum
from airflow.sdk import DAG, Param, task

# The run's date in output paths. Runs triggered by hand in Airflow 3 have no logical date,
# so those fall back to when the run was queued.
RUN_DATE = "{{ (dag_run.logical_date or dag_run.run_after) | ds }}"

EXAMPLES_DATA = os.environ.get(
    "MODELBIT_EXAMPLES_DATA",
    os.path.join(os.environ.get("AIRFLOW_HOME", os.path.expanduser("~/airflow")), "modelbit-examples"),
)

with DAG(
    dag_id="modelbit_taskflow_scoring",
    description="Score each partition of the churn table with @task.modelbit, mapped per file",
    schedule="30 3 * * *",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    max_active_tasks=4,
    tags=["modelbit", "example", "taskflow", "dynamic-task-mapping"],
    params={
        "partitions_dir": Param(
            os.path.join(EXAMPLES_DATA, "churn", "partitions"),
            type="string",
            description="Folder of Parquet files to score, one mapped task per file.",
        ),
        "output_root": Param(
            os.path.join(EXAMPLES_DATA, "scores", "taskflow"),
            type="string",
            description="Folder receiving a folder of scored partitions per run date.",
        ),
    },
) as dag:

    @task
    def list_partitions(partitions_dir: str) -> list[str]:
        """The Parquet files of the partitions folder (local or an object-storage URL), in name order."""
        from airflow.sdk import ObjectStoragePath

        folder = ObjectStoragePath(partitions_dir if "://" in partitions_dir else f"file://{partitions_dir}")
        files = sorted(str(path) for path in folder.iterdir() if path.name.endswith(".parquet"))
        if not files:
            raise ValueError(f"No Parquet files in {partitions_dir}; nothing to score.")
        return files

    @task.modelbit(
        deployment="churn_scorer",
        output_path="{{ params.output_root }}/" + RUN_DATE + "/part-{{ ti.map_index }}.parquet",
        retries=2,
        deferrable=False,
    )
    def churn_features(partition: str) -> Any:
        """One partition as a DataFrame indexed by customer ID: the rows the model scores."""
        import pandas as pd
        from airflow.sdk import ObjectStoragePath

        columns = ["customer_id", "tenure_months", "monthly_spend", "plan"]
        with ObjectStoragePath(partition).open("rb") as parquet_file:
            frame = pd.read_parquet(parquet_file, columns=columns)
        return frame.set_index("customer_id")

    @task
    def total_rows(results: list[dict[str, Any]]) -> int:
        """Add up the rows scored by every mapped task."""
        return sum(result["rows"] for result in results)

    partitions = list_partitions("{{ params.partitions_dir }}")
    total_rows(churn_features.expand(partition=partitions))
