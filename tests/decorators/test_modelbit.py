"""``@task.modelbit``: the function returns the input, the task scores it as the operator does.

Runs real Airflow (``dag.test()``) against the local Modelbit server, including the example DAG
written only with ``@task`` and ``@task.modelbit`` and mapped over the partitions of a table.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pendulum
import pyarrow.parquet as pq
import pytest
from airflow.sdk import DAG, task
from example_data import write_example_data

from airflow_provider_modelbit.decorators.modelbit import modelbit_task
from airflow_provider_modelbit.emulator import RunningEmulator
from tests.airflow_dags import parse_dags, run_dag

API_KEY = "mbkDECORATOR01:key"
EXAMPLE = Path(__file__).resolve().parents[2] / "dags_examples" / "modelbit_taskflow_scoring.py"


class TestRegistration:
    def test_airflow_finds_the_decorator_through_the_provider_info(self) -> None:
        from airflow.providers_manager import ProvidersManager

        assert ProvidersManager().taskflow_decorators["modelbit"] is modelbit_task  # as @task does
        assert task.modelbit is modelbit_task

    def test_data_is_the_functions_return_value_not_an_argument(self) -> None:
        with DAG("decorator_refuses_data", schedule=None), pytest.raises(TypeError, match="return value"):

            @task.modelbit(deployment="doubler", data=[1])
            def features() -> int:
                return 1

            features()


class TestScoring:
    def test_single_value_rows_and_mapped_dataframes_score_as_the_operator_does(
        self, server: RunningEmulator, tmp_path: Path
    ) -> None:
        received: dict[str, Any] = {}
        with DAG(
            "decorator_scoring",
            schedule=None,
            start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
        ) as dag:

            @task.modelbit(deployment="doubler")
            def single() -> int:
                return 21

            @task.modelbit(deployment="doubler", version=1)
            def rows(start: int) -> list[list[int]]:
                return [[start + offset, start + offset] for offset in range(3)]

            @task.modelbit(
                deployment="churn_scorer", output_path=str(tmp_path) + "/part-{{ ti.map_index }}.parquet"
            )
            def frame(customers: list[str]) -> pd.DataFrame:
                return pd.DataFrame(
                    {"tenure_months": [3, 30], "monthly_spend": [20.0, 80.0], "plan": ["basic", "pro"]},
                    index=customers,
                )

            @task
            def receive(single: Any, rows: Any, frames: Any) -> None:
                received.update(single=single, rows=list(rows), frames=list(frames))

            receive(
                single(),
                rows.expand(start=[10, 20]),
                frame.expand(customers=[["a", "b"], ["c", "d"]]),
            )

        run = run_dag(dag)

        assert str(run.state) == "success"
        assert received["single"] == 42
        assert received["rows"] == [[[n, 2 * n] for n in (10, 11, 12)], [[n, 2 * n] for n in (20, 21, 22)]]
        assert [summary["rows"] for summary in received["frames"]] == [2, 2]
        assert pq.read_table(tmp_path / "part-1.parquet").column("id").to_pylist() == ["c", "d"]
        assert server.client.runs("doubler") == {str(n): 1 for n in (10, 11, 12, 20, 21, 22)}


class TestExampleDag:
    def test_the_taskflow_example_scores_every_partition_once(
        self, server: RunningEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        data = tmp_path / "data"
        layout = write_example_data(data, rows=60, partitions=3)
        monkeypatch.setenv("MODELBIT_EXAMPLES_DATA", str(data))
        dag = parse_dags(EXAMPLE).dags["modelbit_taskflow_scoring"]

        run = run_dag(dag)

        assert str(run.state) == "success"
        assert [ti.state for ti in run.get_task_instances() if ti.task_id == "churn_features"] == [
            "success"
        ] * 3
        total = run.get_task_instance("total_rows")
        assert str(total.state) == "success"
        scored = sorted((data / "scores" / "taskflow").rglob("part-*.parquet"))
        assert len(scored) == 3
        ids = [row_id for path in scored for row_id in pq.read_table(path).column("id").to_pylist()]
        customers = pq.read_table(layout.customers_file).column("customer_id").to_pylist()
        assert sorted(ids) == sorted(customers)
        assert set(server.client.runs("churn_scorer").values()) == {1}
