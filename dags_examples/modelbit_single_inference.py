"""
Single inference with ModelbitInferenceOperator: latest, a pinned version, and an alias.

Every morning the DAG asks the ``versioned`` deployment for a prediction three ways:

* ``latest`` — whatever version was deployed last on ``main``;
* version ``1`` — pinned, so the result does not change when someone deploys;
* alias ``official`` — the version the team has promoted, moved without touching the DAG.

The three answers reach downstream tasks through XCom (``operator.output``), and a ``@task``
compares them: a pipeline can keep scoring with the promoted model while watching how the
newest one differs. A fourth task scores a few batch rows built by an upstream task and passes
them on as ``[[id, result], ...]``.

It runs against a Modelbit workspace or the local server (``modelbit-emulator``) through the
``modelbit_default`` connection; parsing it needs neither a connection nor the network.
"""

from __future__ import annotations

from typing import Any

import pendulum
from airflow.sdk import dag, task

from airflow_provider_modelbit.operators import ModelbitInferenceOperator

CUSTOMER = {"customer_id": "c-1042", "tenure_months": 18, "monthly_spend": 42.5}


@dag(
    schedule="0 6 * * *",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["modelbit", "example"],
    doc_md=__doc__,
)
def modelbit_single_inference() -> None:
    latest = ModelbitInferenceOperator(task_id="score_latest", deployment="versioned", data=CUSTOMER)
    pinned = ModelbitInferenceOperator(
        task_id="score_pinned_v1", deployment="versioned", data=CUSTOMER, version=1
    )
    official = ModelbitInferenceOperator(
        task_id="score_official", deployment="versioned", data=CUSTOMER, version="official"
    )

    @task
    def compare_versions(latest: dict[str, Any], pinned: dict[str, Any], official: dict[str, Any]) -> str:
        """Report which deployed version answered each call, and whether the answers agree."""
        answers = {"latest": latest, "pinned": pinned, "official": official}
        versions = {name: answer["version"] for name, answer in answers.items()}
        verdict = "agree" if len({answer["version"] for answer in answers.values()}) == 1 else "differ"
        return f"versions {versions}: answers {verdict}"

    @task
    def todays_accounts() -> list[list[Any]]:
        """Build batch rows [[id, input], ...] — in a real pipeline, read from a warehouse."""
        return [["c-1042", 18], ["c-2077", 3], ["c-3110", 40]]

    # An XComArg as data arrives with its type (here a list of rows), not as rendered text.
    batch = ModelbitInferenceOperator(
        task_id="score_accounts", deployment="versioned", data=todays_accounts(), version="official"
    )

    @task
    def count_scored(rows: list[list[Any]]) -> int:
        """Count the scored accounts (each row is [id, result])."""
        return len(rows)

    compare_versions(latest.output, pinned.output, official.output)
    count_scored(batch.output)


modelbit_single_inference()
