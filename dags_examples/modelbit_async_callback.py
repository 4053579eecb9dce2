"""Async-callback scoring: Modelbit calls back when the results are ready, no worker waits for it.

What this DAG shows:

- ``ModelbitBatchInferenceOperator(deferrable=True, response_format="links")`` scoring the churn
  table with the ``churn_scorer`` deployment. Each chunk of rows is submitted as an asynchronous
  request carrying a signed webhook URL; the task then defers, freeing its worker slot, while the
  triggerer waits for the deliveries. Every delivery holds a download link (links mode keeps large
  answers out of the webhook body); on resume the worker streams the links into one Parquet file,
  one row per customer, in input order.
- ``ModelbitInferenceOperator(deferrable=True)`` for a single long inference (the ``sleeper``
  deployment stands in for a slow model): the same webhook path for one input.
- A downstream ``@task`` reading the Parquet output back to summarise churn risk per plan.

It needs the ``modelbit_default`` connection with the callback extras ``callback_base_url`` (where
Modelbit reaches the callback receiver: the api-server's ``/modelbit`` prefix, or a stand-alone
``modelbit-callback-receiver``) and ``callback_secret``. Parsing this file needs neither the
connection nor the network: input and output locations are DAG params whose defaults live under
``$MODELBIT_EXAMPLES_DATA`` (else ``$AIRFLOW_HOME/modelbit-examples``); ``python
scripts/run_examples.py`` writes the sample data there and runs this DAG end to end.
"""

from __future__ import annotations

import os
from typing import Any

import pendulum
from airflow.sdk import DAG, Param, task

from airflow_provider_modelbit.operators import ModelbitBatchInferenceOperator, ModelbitInferenceOperator

# The run's date in output paths. Runs triggered by hand in Airflow 3 have no logical date,
# so those fall back to when the run was queued.
RUN_DATE = "{{ (dag_run.logical_date or dag_run.run_after) | ds }}"

EXAMPLES_DATA = os.environ.get(
    "MODELBIT_EXAMPLES_DATA",
    os.path.join(os.environ.get("AIRFLOW_HOME", os.path.expanduser("~/airflow")), "modelbit-examples"),
)
# Scores at or above this are treated as "likely to churn" in the summary.
AT_RISK_THRESHOLD = 0.5

with DAG(
    dag_id="modelbit_async_callback",
    description="Churn scoring through Modelbit async webhooks and download links",
    schedule="30 2 * * *",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["modelbit", "example", "deferrable"],
    params={
        "input_path": Param(
            os.path.join(EXAMPLES_DATA, "churn", "customers.parquet"),
            type="string",
            description="Customers to score: a Parquet file or folder, local path or ObjectStoragePath URL.",
        ),
        "output_root": Param(
            os.path.join(EXAMPLES_DATA, "scores", "async_callback"),
            type="string",
            description="Folder receiving one Parquet file of scores per run date.",
        ),
    },
) as dag:
    score_customers = ModelbitBatchInferenceOperator(
        task_id="score_customers",
        deployment="churn_scorer",
        input_path="{{ params.input_path }}",
        output_path="{{ params.output_root }}/" + RUN_DATE + "/churn_scores.parquet",
        id_column="customer_id",
        columns=["tenure_months", "monthly_spend", "plan"],
        passthrough_columns=["plan"],
        response_format="links",
        batch_size=5_000,
        timeout_seconds=300,
        deferrable=True,
    )

    wait_for_slow_model = ModelbitInferenceOperator(
        task_id="wait_for_slow_model",
        deployment="sleeper",
        data=2,
        timeout_seconds=60,
        deferrable=True,
    )

    @task
    def summarise_risk(scores: dict[str, Any]) -> dict[str, Any]:
        """Read the scores back and count the customers at risk of churning, per plan."""
        import pyarrow.compute as pc
        import pyarrow.parquet as pq
        from airflow.sdk import ObjectStoragePath

        with ObjectStoragePath(scores["path"]).open("rb") as parquet_file:
            table = pq.read_table(parquet_file, columns=["plan", "result"])
        at_risk = table.filter(pc.greater_equal(table["result"], AT_RISK_THRESHOLD))
        per_plan = at_risk.group_by("plan").aggregate([("result", "count")]).to_pylist()
        return {
            "customers": table.num_rows,
            "at_risk": at_risk.num_rows,
            "at_risk_by_plan": {row["plan"]: row["result_count"] for row in per_plan},
        }

    summarise_risk(score_customers.output)
