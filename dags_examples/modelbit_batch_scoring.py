"""Nightly batch scoring: a Parquet table of customers scored by Modelbit, the scores kept as Parquet.

What this DAG shows:

- ``ModelbitBatchInferenceOperator`` streaming the churn table through the ``churn_scorer``
  deployment: rows are read in record batches, sent in chunks of 3,000 with four requests in
  flight, and written to one Parquet file per run date — one row per customer, in input order,
  with the ``customer_id``, the churn probability as ``result`` and the ``plan`` column copied
  through. A failed run leaves no partial file; a retry re-scores only the chunks that had not
  finished (they are kept in ``<output>.checkpoint/`` in the meantime).
- An ``Asset`` updated by the scoring task, so a downstream DAG scheduled on it
  (``schedule=[CHURN_SCORES]``) runs as soon as fresh scores land. The second DAG here does just
  that and summarises the scores per plan.

Parsing this file needs neither the ``modelbit_default`` connection nor the network: input and
output locations are DAG params whose defaults live under ``$MODELBIT_EXAMPLES_DATA`` (else
``$AIRFLOW_HOME/modelbit-examples``); ``python scripts/run_examples.py`` writes the sample data
there and runs this DAG end to end against the local Modelbit server.
"""

from __future__ import annotations

import os
from typing import Any

import pendulum
from airflow.sdk import DAG, Asset, Param, task

from airflow_provider_modelbit.operators import ModelbitBatchInferenceOperator

# The run's date in output paths. Runs triggered by hand in Airflow 3 have no logical date,
# so those fall back to when the run was queued.
RUN_DATE = "{{ (dag_run.logical_date or dag_run.run_after) | ds }}"

EXAMPLES_DATA = os.environ.get(
    "MODELBIT_EXAMPLES_DATA",
    os.path.join(os.environ.get("AIRFLOW_HOME", os.path.expanduser("~/airflow")), "modelbit-examples"),
)
# Downstream DAGs schedule on this name; the scoring task records the file's path and row count.
CHURN_SCORES = Asset("modelbit_churn_scores")
AT_RISK_THRESHOLD = 0.5

with DAG(
    dag_id="modelbit_batch_scoring",
    description="Nightly churn scoring of a Parquet table with Modelbit",
    schedule="0 2 * * *",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["modelbit", "example"],
    params={
        "input_path": Param(
            os.path.join(EXAMPLES_DATA, "churn", "customers.parquet"),
            type="string",
            description="Customers to score: a Parquet file or folder, CSV or JSON Lines; path or URL.",
        ),
        "output_root": Param(
            os.path.join(EXAMPLES_DATA, "scores", "batch_scoring"),
            type="string",
            description="Folder receiving one Parquet file of scores per run date.",
        ),
    },
) as scoring_dag:
    ModelbitBatchInferenceOperator(
        task_id="score_customers",
        deployment="churn_scorer",
        input_path="{{ params.input_path }}",
        output_path="{{ params.output_root }}/" + RUN_DATE + "/churn_scores.parquet",
        id_column="customer_id",
        columns=["tenure_months", "monthly_spend", "plan"],
        passthrough_columns=["plan"],
        batch_size=3_000,
        max_concurrency=4,
        timeout_seconds=120,
        asset=CHURN_SCORES,
        retries=2,
        retry_delay=pendulum.duration(minutes=1),
        deferrable=False,
    )


with DAG(
    dag_id="modelbit_churn_report",
    description="Summarise fresh churn scores as soon as the scoring DAG writes them",
    schedule=[CHURN_SCORES],
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["modelbit", "example"],
) as report_dag:

    @task(inlets=[CHURN_SCORES])
    def summarise_scores(*, inlet_events: Any = None) -> dict[str, Any]:
        """Read the newest scores file and count customers at risk per plan."""
        import pyarrow.compute as pc
        import pyarrow.parquet as pq
        from airflow.sdk import ObjectStoragePath

        newest = inlet_events[CHURN_SCORES][-1]
        # Through ObjectStoragePath, so an s3:// or gs:// output is read with its Airflow connection.
        with ObjectStoragePath(newest.extra["path"]).open("rb") as parquet_file:
            scores = pq.read_table(parquet_file, columns=["plan", "result"])
        at_risk = scores.filter(pc.greater_equal(scores["result"], AT_RISK_THRESHOLD))
        counts = at_risk.group_by("plan").aggregate([("result", "count")])
        return {row["plan"]: row["result_count"] for row in counts.to_pylist()}

    summarise_scores()
