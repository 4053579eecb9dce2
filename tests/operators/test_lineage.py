"""How a finished scoring task is described to OpenLineage (the end-to-end run is in test_observability)."""

from __future__ import annotations

import pytest
from airflow.sdk import DAG, task

from airflow_provider_modelbit.hooks.metrics import reason_tag
from airflow_provider_modelbit.hooks.retries import RATE_LIMITED, UNAVAILABLE
from airflow_provider_modelbit.operators import ModelbitInferenceOperator
from airflow_provider_modelbit.operators.lineage import (
    RUN_FACET_KEY,
    XCOM_NAMESPACE,
    ScoringRun,
    operator_lineage,
    path_dataset,
    xcom_input_tasks,
)


class TestDatasetNames:
    @pytest.mark.parametrize(
        ("uri", "namespace", "name"),
        [
            ("file:///data/scores.parquet", "file", "/data/scores.parquet"),
            ("s3://bucket/scores/2026-01-01.parquet", "s3://bucket", "scores/2026-01-01.parquet"),
            ("gs://bucket/a/b.parquet", "gs://bucket", "a/b.parquet"),
        ],
    )
    def test_files_are_named_as_the_openlineage_spec_says(self, uri: str, namespace: str, name: str) -> None:
        dataset = path_dataset(uri)
        assert (dataset.namespace, dataset.name) == (namespace, name)


class TestOperatorLineage:
    def test_an_object_store_run_reports_its_files_and_facet(self) -> None:
        run = ScoringRun(
            workspace="acme.us-east-1.modelbit.com",
            deployment="scorer",
            version="3",
            branch="main",
            rows=10,
            chunks=2,
            retries={RATE_LIMITED: 2, UNAVAILABLE: 1},
            inputs=["s3://lake/features/part-0.parquet"],
            upstream=[("nightly", "extract")],
            output="s3://lake/scores/today.parquet",
        )
        lineage = operator_lineage(run)
        assert [(d.namespace, d.name) for d in lineage.inputs] == [
            ("s3://lake", "features/part-0.parquet"),
            (XCOM_NAMESPACE, "nightly.extract"),
        ]
        assert [(d.namespace, d.name) for d in lineage.outputs] == [("s3://lake", "scores/today.parquet")]
        facet = lineage.run_facets[RUN_FACET_KEY]
        assert (facet.deployment, facet.rows, facet.chunks, facet.retries) == ("scorer", 10, 2, 3)
        assert facet.retriesByReason == {"rate_limited": 2, "unavailable": 1}

    def test_a_result_sent_to_xcom_has_no_output(self) -> None:
        run = ScoringRun(workspace="w", deployment="d", version="latest", branch="main", rows=1, chunks=1)
        assert operator_lineage(run).outputs == []


class TestXComInputs:
    def test_the_upstream_tasks_of_the_data_are_remembered_before_rendering(self) -> None:
        with DAG("lineage_inputs", schedule=None):

            @task
            def extract() -> list[list[int]]:
                return [[1, 1]]

            rows = extract()
            operator = ModelbitInferenceOperator(task_id="score", deployment="doubler", data=rows)
            inline = ModelbitInferenceOperator(task_id="inline", deployment="doubler", data=[[1, 1]])
        assert operator.input_tasks == ["extract"]
        assert inline.input_tasks == []
        assert xcom_input_tasks({"a": rows, "b": [rows]}) == ["extract"]


def test_retry_reasons_become_short_tags() -> None:
    assert (reason_tag(RATE_LIMITED), reason_tag(UNAVAILABLE), reason_tag("Odd reason!")) == (
        "rate_limited",
        "unavailable",
        "odd_reason",
    )
