"""Partitioned scoring: one Modelbit scoring task per input file, with dynamic task mapping.

What this DAG shows:

- A ``@task`` listing the Parquet files of a partitioned table (as Spark, DuckDB or a data
  lake export writes them) and returning one ``{"input_path", "output_path"}`` per file.
- ``ModelbitBatchInferenceOperator.partial(...).expand_kwargs(...)`` turning that list into one
  mapped scoring task per file at run time: the files are scored in parallel (up to
  ``max_active_tis_per_dagrun``), each retried on its own, and each writes its own Parquet
  output with the same name as its input — so the scores form a partitioned table too.
- A final ``@task`` adding up the row counts the mapped tasks returned through XCom (each
  returns ``{"path", "rows", "chunks", "seconds", "rows_per_second"}``, never the scores).

Parsing this file needs neither the ``modelbit_default`` connection nor the network: the input
folder and output folder are DAG params whose defaults live under ``$MODELBIT_EXAMPLES_DATA``
(else ``$AIRFLOW_HOME/modelbit-examples``); ``python scripts/run_examples.py`` writes the sample
partitions there and runs this DAG end to end against the local Modelbit server.
"""

from __future__ import annotations

import os
from typing import Any

import pendulum
from airflow.sdk import DAG, Param, task

from airflow_provider_modelbit.operators import ModelbitBatchInferenceOperator

# The run's date in output paths. Runs triggered by hand in Airflow 3 have no logical date,
# so those fall back to when the run was queued.
RUN_DATE = "{{ (dag_run.logical_date or dag_run.run_after) | ds }}"

EXAMPLES_DATA = os.environ.get(
    "MODELBIT_EXAMPLES_DATA",
    os.path.join(os.environ.get("AIRFLOW_HOME", os.path.expanduser("~/airflow")), "modelbit-examples"),
)

with DAG(
    dag_id="modelbit_partitioned_scoring",
    description="Score each partition file of the churn table in its own mapped task",
    schedule="0 3 * * *",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    max_active_tasks=4,
    tags=["modelbit", "example", "dynamic-task-mapping"],
    params={
        "partitions_dir": Param(
            os.path.join(EXAMPLES_DATA, "churn", "partitions"),
            type="string",
            description="Folder of Parquet files to score, one mapped task per file; path or URL.",
        ),
        "output_root": Param(
            os.path.join(EXAMPLES_DATA, "scores", "partitioned"),
            type="string",
            description="Folder receiving a folder of scored partitions per run date.",
        ),
    },
) as dag:

    @task
    def list_partitions(partitions_dir: str, output_dir: str) -> list[dict[str, str]]:
        """One input/output pair per Parquet file of the partitions folder, in name order."""
        from airflow.sdk import ObjectStoragePath

        folder = ObjectStoragePath(partitions_dir if "://" in partitions_dir else f"file://{partitions_dir}")
        files = sorted(path for path in folder.iterdir() if path.name.endswith(".parquet"))
        if not files:
            raise ValueError(f"No Parquet files in {partitions_dir}; nothing to score.")
        return [{"input_path": str(path), "output_path": f"{output_dir}/{path.name}"} for path in files]

    @task
    def total_rows(results: list[dict[str, Any]]) -> int:
        """Add up the rows scored by every mapped task."""
        return sum(result["rows"] for result in results)

    partitions = list_partitions("{{ params.partitions_dir }}", "{{ params.output_root }}/" + RUN_DATE)
    scored = ModelbitBatchInferenceOperator.partial(
        task_id="score_partition",
        deployment="churn_scorer",
        id_column="customer_id",
        columns=["tenure_months", "monthly_spend", "plan"],
        passthrough_columns=["plan"],
        batch_size=2_000,
        max_concurrency=2,
        retries=2,
        deferrable=False,
    ).expand_kwargs(partitions)
    total_rows(scored.output)
