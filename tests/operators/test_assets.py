"""An operator's ``asset=`` is an outlet, and a successful run's asset event names the output.

The inference operator's Parquet output is run through real Airflow (``dag.test()``) against the
local Modelbit server, and its asset event read back from the metadata database.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest
from airflow.sdk import Asset

from airflow_provider_modelbit.emulator import RunningEmulator
from airflow_provider_modelbit.exceptions import ModelbitInputError
from airflow_provider_modelbit.operators import ModelbitInferenceOperator
from airflow_provider_modelbit.operators.assets import as_asset, with_asset_outlet
from tests.airflow_dags import run_task

API_KEY = "mbkASSETS01:key"


class TestOutlets:
    def test_an_asset_uri_becomes_an_asset_added_to_the_outlets(self) -> None:
        kept = Asset("kept")
        kwargs = with_asset_outlet({"outlets": [kept]}, "scores")
        assert kwargs["outlets"] == [kept, Asset("scores")]
        assert as_asset(kept) is kept
        assert with_asset_outlet({}, None) == {}

    def test_the_inference_operator_declares_its_asset(self, tmp_path: Path) -> None:
        operator = ModelbitInferenceOperator(
            task_id="score", deployment="doubler", data=[[1, 1]], output_path=str(tmp_path), asset="scores"
        )
        assert operator.outlets == [Asset("scores")]

    def test_an_asset_without_output_path_is_refused(self) -> None:
        with pytest.raises(ModelbitInputError, match="needs output_path"):
            ModelbitInferenceOperator(task_id="score", deployment="doubler", data=1, asset="scores")


class TestAssetEvent:
    def test_a_successful_run_emits_the_output_path_and_rows(
        self, server: RunningEmulator, tmp_path: Path
    ) -> None:
        from airflow.models.asset import AssetEvent
        from airflow.utils.session import create_session

        output = tmp_path / "scores.parquet"
        uri = f"file://{output}"
        outcome = run_task(
            lambda: ModelbitInferenceOperator(
                task_id="score",
                deployment="doubler",
                data=[[1, 1], [2, 2]],
                output_path=str(output),
                asset=uri,
            )
        )

        assert outcome.state == "success"
        assert pq.read_table(output).num_rows == 2
        with create_session() as session:
            events = [event for event in session.query(AssetEvent).all() if event.asset.uri == uri]
            extras = [event.extra for event in events]
        assert extras == [{"path": uri, "rows": 2}]  # the path the task returns
