"""
ModelbitInferenceOperator, run by real Airflow (``dag.test()``) against the local Modelbit server.

Each test builds a small DAG around the operator, runs it, and looks at what a user would see:
the value a downstream task receives through XCom, the Parquet file at ``output_path``, or the
failed task and the error it carries.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest import mock
from urllib.parse import parse_qs, urlsplit

import httpx
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from airflow.sdk import BaseOperator, task

from airflow_provider_modelbit.defaults import DEFAULT_BATCH_SIZE
from airflow_provider_modelbit.emulator import RunningEmulator
from airflow_provider_modelbit.exceptions import (
    ModelbitAuthError,
    ModelbitBadRequest,
    ModelbitConnectionError,
    ModelbitDeploymentError,
    ModelbitError,
    ModelbitIncompleteBatch,
    ModelbitInputError,
    ModelbitLinkExpired,
    ModelbitNotFound,
    ModelbitOutputError,
    ModelbitTimeout,
    ModelbitTransportError,
)
from airflow_provider_modelbit.hooks.modelbit import ModelbitHook
from airflow_provider_modelbit.operators import ModelbitInferenceOperator
from tests.airflow_dags import NOT_RECEIVED, TaskOutcome, parse_dags, run_dag, run_task

API_KEY = "k-inference:c2VjcmV0LXZhbHVl+/="
EXAMPLE_DAG = Path(__file__).resolve().parents[2] / "dags_examples" / "modelbit_single_inference.py"
CUSTOMERS = pd.DataFrame(
    {"tenure_months": [3, 18, 40], "monthly_spend": [19.0, 42.5, 99.9], "plan": ["free", "pro", "pro"]}
)


# ---------------------------------------------------------------------- harness


def run_inference(**operator_kwargs: Any) -> TaskOutcome:
    """Run one ModelbitInferenceOperator task with these arguments."""
    return run_task(lambda: ModelbitInferenceOperator(task_id="score", **operator_kwargs))


def assert_failed(outcome: TaskOutcome, error_type: type[BaseException], *fragments: str) -> None:
    assert outcome.state == "failed"
    assert isinstance(outcome.error, error_type), repr(outcome.error)
    for fragment in fragments:
        assert fragment in str(outcome.error)
    assert API_KEY not in str(outcome.error)
    assert API_KEY not in repr(outcome.error)


def files_in(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.rglob("*")) if folder.exists() else []


def request_links(server: RunningEmulator, deployment: str, chunks: list[Any]) -> list[str]:
    """Ask the server for one results link per chunk, as a webhook delivery would carry them."""
    urls = []
    for chunk in chunks:
        answer = httpx.post(
            f"{server.url}/v1/{deployment}/latest",
            json={"data": chunk, "response_format": "links"},
            headers={"Authorization": API_KEY},
        )
        urls.append(answer.json()["data"])
    return urls


def expired_link(server: RunningEmulator, chunk: list[Any]) -> str:
    """A results link for ``chunk`` that has already expired."""
    server.client.configure(link_expiry_seconds=0.001)
    [url] = request_links(server, "doubler", [chunk])
    expires = int(parse_qs(urlsplit(url).query)["expires"][0])
    time.sleep(max(0.0, expires - time.time() + 0.05))
    return url


# ---------------------------------------------------------------------- definition


class TestOperatorDefinition:
    """How the operator is declared: templating, keyword-only arguments, nothing done at parse time."""

    def test_templated_fields(self) -> None:
        """deployment, data, version, branch, output_path and the connection id are templated."""
        assert set(ModelbitInferenceOperator.template_fields) == {
            "deployment",
            "data",
            "version",
            "branch",
            "output_path",
            "modelbit_conn_id",
        }
        assert ModelbitInferenceOperator.template_fields_renderers["data"] in ("py", "json")

    def test_arguments_are_keyword_only(self) -> None:
        with pytest.raises(TypeError):
            ModelbitInferenceOperator("score", "doubler", 10)  # type: ignore[misc]

    @pytest.mark.parametrize(("configured", "expected"), [("True", True), ("False", False)])
    def test_deferrable_defaults_to_operators_default_deferrable(
        self, monkeypatch: pytest.MonkeyPatch, configured: str, expected: bool
    ) -> None:
        """The default is read from [operators] default_deferrable when the module is imported."""
        import importlib

        import airflow_provider_modelbit.operators.inference as module

        monkeypatch.setenv("AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE", configured)
        reloaded = importlib.reload(module)
        try:
            operator = reloaded.ModelbitInferenceOperator(task_id="score", deployment="d", data=1)
            assert operator.deferrable is expected
        finally:
            monkeypatch.delenv("AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE")
            importlib.reload(module)

    def test_constructing_looks_up_no_connection(self) -> None:
        """Validation waits for execute: a DAG file builds operators without any connection."""
        with mock.patch.object(ModelbitHook, "get_connection", side_effect=AssertionError("looked up")):
            operator = ModelbitInferenceOperator(
                task_id="score", deployment="", data=[[1]], response_format="nonsense"
            )
        assert operator.response_format == "nonsense"


class TestDeferrableMode:
    """deferrable=True takes the webhook path (tested end to end in test_deferrable.py)."""

    def test_submits_asynchronously_and_needs_the_callback_settings(self, server: RunningEmulator) -> None:
        """Without callback_base_url the task fails with advice, having sent no synchronous request."""
        outcome = run_inference(deployment="doubler", data=21, deferrable=True)
        assert_failed(outcome, ModelbitConnectionError, "callback_base_url", "deferrable=False")
        assert server.client.requests() == [], "nothing is sent before the callback settings are checked"

    def test_uses_the_same_chunks_as_the_synchronous_path(self) -> None:
        rows = [[index, index] for index in range(DEFAULT_BATCH_SIZE + 1)]
        operator = ModelbitInferenceOperator(
            task_id="score", deployment="doubler", data=rows, deferrable=True
        )
        assert list(operator._callback_payloads()) == list(operator._iter_chunks())
        assert [len(chunk) for chunk in operator._callback_payloads()] == [DEFAULT_BATCH_SIZE, 1]

    @pytest.mark.parametrize("deferrable", [False, True])
    def test_repeated_batch_row_ids_are_refused_alike_on_both_paths(
        self, deferrable: bool, server: RunningEmulator
    ) -> None:
        """The deferred path reads the input as the synchronous one does: same check, same message."""
        outcome = run_inference(deployment="doubler", data=[[3, 1], [3, 2]], deferrable=deferrable)
        assert_failed(outcome, ModelbitInputError, "Row ID 3 appears more than once (again at row 1)")
        assert server.client.requests() == []


# ---------------------------------------------------------------------- repeated index

REPEATED_INDEX = pd.DataFrame({"x": [1, 2, 3]}, index=[5, 5, 4])
REPEATED_INDEX_RESULTS = [[5, {"x": 1}], [5, {"x": 2}], [4, {"x": 3}]]


def sent_rows(server: RunningEmulator, deployment: str, since: int = 0) -> list[Any]:
    """The ``data`` of each inference request to ``deployment`` the server recorded after ``since``."""
    records = server.client.requests()[since:]
    return [json.loads(r["body"])["data"] for r in records if r["path"].startswith(f"/v1/{deployment}/")]


class TestRepeatedIndex:
    """A DataFrame whose index repeats goes out as Modelbit's client (and the hook) sends it."""

    @pytest.mark.parametrize("response_format", [None, "links"])
    def test_sent_as_the_hook_sends_it_and_scored_in_input_order(
        self, response_format: str | None, server: RunningEmulator, tmp_path: Path
    ) -> None:
        server.client.configure(sort_results_by_id=True)
        assert ModelbitHook().get_inference("echo", REPEATED_INDEX) == REPEATED_INDEX_RESULTS
        hook_rows = sent_rows(server, "echo")
        runs_before, requests_before = server.client.runs("echo"), len(server.client.requests())
        outcome = run_inference(deployment="echo", data=REPEATED_INDEX, response_format=response_format)
        assert outcome.state == "success", outcome.error
        assert outcome.value == REPEATED_INDEX_RESULTS
        assert (
            sent_rows(server, "echo", requests_before)
            == hook_rows
            == [[[5, {"x": 1}], [5, {"x": 2}], [4, {"x": 3}]]]
        )
        runs = server.client.runs("echo")
        assert {key: runs[key] - runs_before[key] for key in runs} == {"5": 2, "4": 1}

    def test_written_to_parquet_in_input_order(self, server: RunningEmulator, tmp_path: Path) -> None:
        server.client.configure(sort_results_by_id=True)
        output = tmp_path / "scores.parquet"
        outcome = run_inference(deployment="echo", data=REPEATED_INDEX, output_path=str(output))
        assert outcome.value["rows"] == 3, outcome.error
        assert pq.read_table(output).to_pylist() == [
            {"id": row_id, "result": result} for row_id, result in REPEATED_INDEX_RESULTS
        ]


# ---------------------------------------------------------------------- XCom output


class TestXComOutput:
    """Without output_path the result reaches downstream tasks through XCom."""

    @pytest.mark.parametrize(
        ("operator_kwargs", "expected"),
        [
            pytest.param({"deployment": "doubler", "data": 10}, 20, id="single scalar"),
            pytest.param(
                {"deployment": "echo", "data": {"age": 31, "plan": "pro"}},
                {"age": 31, "plan": "pro"},
                id="single object",
            ),
            pytest.param(
                {"deployment": "echo", "data": [1, "two", 3.0]}, [1, "two", 3.0], id="positional arguments"
            ),
            pytest.param(
                {"deployment": "doubler", "data": [[1, 10], ["b", 11]]},
                [[1, 20], ["b", 22]],
                id="batch rows",
            ),
            pytest.param({"deployment": "doubler", "data": []}, [], id="empty batch"),
            pytest.param(
                {"deployment": "versioned", "data": 5}, {"version": 3, "input": 5}, id="latest version"
            ),
            pytest.param(
                {"deployment": "versioned", "data": 5, "version": 1},
                {"version": 1, "input": 5},
                id="pinned version",
            ),
            pytest.param(
                {"deployment": "versioned", "data": 5, "version": "official"},
                {"version": 2, "input": 5},
                id="alias",
            ),
            pytest.param(
                {"deployment": "versioned", "data": 5, "branch": "dev"},
                {"branch": "dev", "version": 1, "input": 5},
                id="branch",
            ),
        ],
    )
    def test_result_reaches_downstream(
        self, server: RunningEmulator, operator_kwargs: dict[str, Any], expected: Any
    ) -> None:
        outcome = run_inference(**operator_kwargs)
        assert outcome.state == "success"
        assert outcome.value == expected

    def test_dataframe_built_in_the_dag(self, server: RunningEmulator) -> None:
        """Each DataFrame row is scored once, and the result rows carry the index as ID."""
        outcome = run_inference(deployment="churn_scorer", data=CUSTOMERS)
        assert outcome.state == "success"
        assert [row[0] for row in outcome.value] == [0, 1, 2]
        assert all(0.0 <= row[1] <= 1.0 for row in outcome.value)
        assert server.client.runs("churn_scorer") == {"0": 1, "1": 1, "2": 1}

    def test_column_types_send_an_integer_zip_code_as_text(self, server: RunningEmulator) -> None:
        """The equivalent of the batch operator's column_types, for a DataFrame's columns."""
        frame = pd.DataFrame({"zip": [2134, 10001]}, index=["a", "b"])
        outcome = run_inference(deployment="echo", data=frame, column_types={"zip": "str"})
        assert outcome.state == "success"
        assert outcome.value == [["a", {"zip": "2134"}], ["b", {"zip": "10001"}]]

    def test_dataframe_from_an_upstream_task(self, server: RunningEmulator) -> None:
        """An upstream task's DataFrame, passed as its XComArg, is scored like one built in the DAG."""
        built_in_dag = run_inference(deployment="churn_scorer", data=CUSTOMERS)

        def build() -> BaseOperator:
            @task
            def load_customers() -> pd.DataFrame:
                return CUSTOMERS.copy()

            return ModelbitInferenceOperator(
                task_id="score", deployment="churn_scorer", data=load_customers()
            )

        assert run_task(build).value == built_in_dag.value

    def test_rows_templated_from_xcom_as_native_objects(self, server: RunningEmulator) -> None:
        """With render_template_as_native_obj=True a pulled list stays a list of batch rows."""

        def build() -> BaseOperator:
            @task
            def make_rows() -> list[list[Any]]:
                return [["a", 1], ["b", 2]]

            rows = make_rows()
            operator = ModelbitInferenceOperator(
                task_id="score", deployment="doubler", data="{{ ti.xcom_pull(task_ids='make_rows') }}"
            )
            rows >> operator
            return operator

        outcome = run_task(build, render_template_as_native_obj=True)
        assert outcome.value == [["a", 2], ["b", 4]]

    def test_rows_templated_as_text_are_sent_as_one_string(self, server: RunningEmulator) -> None:
        """Without native rendering a template gives text, which Modelbit receives as one input."""

        def build() -> BaseOperator:
            @task
            def make_rows() -> list[list[Any]]:
                return [["a", 1]]

            rows = make_rows()
            operator = ModelbitInferenceOperator(
                task_id="score", deployment="echo", data="{{ ti.xcom_pull(task_ids='make_rows') }}"
            )
            rows >> operator
            return operator

        assert run_task(build).value == "[['a', 1]]"

    def test_batch_results_follow_input_order_when_the_server_sorts_them(
        self, server: RunningEmulator
    ) -> None:
        server.client.configure(sort_results_by_id=True)
        outcome = run_inference(deployment="doubler", data=[["c", 1], ["a", 2], ["b", 3]])
        assert outcome.value == [["c", 2], ["a", 4], ["b", 6]]

    def test_batch_larger_than_one_request(self, server: RunningEmulator) -> None:
        """Rows beyond one request's worth are split into several requests and come back whole."""
        rows = [[index, index] for index in range(DEFAULT_BATCH_SIZE + 5)]
        outcome = run_inference(deployment="doubler", data=rows)
        assert outcome.value == [[index, 2 * index] for index in range(DEFAULT_BATCH_SIZE + 5)]
        assert len(server.client.requests()) >= 2

    def test_result_too_large_for_xcom_fails_pointing_at_output_path(self, server: RunningEmulator) -> None:
        outcome = run_inference(deployment="echo", data="x" * 200, max_xcom_bytes=100)
        assert_failed(outcome, ModelbitError, "too large to return through XCom", "output_path", "'echo'")
        assert outcome.value is NOT_RECEIVED


# ---------------------------------------------------------------------- Parquet output


class TestParquetOutput:
    """With output_path the results are written as Parquet and the task returns a summary."""

    @pytest.mark.parametrize(
        ("where", "message"),
        [
            ("directory", "output_path .* is a directory"),
            ("under a file", "output_path .* cannot be created: .* is a file"),
            ("gs://no-bucket/out.parquet", "output_path gs://no-bucket/out.parquet: .*gcsfs"),
        ],
    )
    def test_an_unusable_output_path_is_refused_before_any_request(
        self, where: str, message: str, server: RunningEmulator, tmp_path: Path
    ) -> None:
        (tmp_path / "directory").mkdir()
        (tmp_path / "blocker").write_text("a file")
        output = {
            "directory": str(tmp_path / "directory"),
            "under a file": str(tmp_path / "blocker" / "o.parquet"),
        }
        operator = ModelbitInferenceOperator(
            task_id="score", deployment="doubler", data=[[1, 10]], output_path=output.get(where, where)
        )
        with pytest.raises(ModelbitOutputError, match=message):
            operator.execute({})
        assert server.client.requests() == []
        assert files_in(tmp_path) == ["blocker", "directory"]

    @pytest.mark.parametrize(
        ("operator_kwargs", "id_type", "result_type", "expected_rows"),
        [
            pytest.param(
                {"deployment": "doubler", "data": [[1, 10], [2, 11]]},
                pa.int64(),
                pa.int64(),
                [{"id": 1, "result": 20}, {"id": 2, "result": 22}],
                id="integers",
            ),
            pytest.param(
                {"deployment": "echo", "data": [["a", 0.5], ["b", 2]]},
                pa.string(),
                pa.float64(),
                [{"id": "a", "result": 0.5}, {"id": "b", "result": 2.0}],
                id="string IDs, mixed numbers as double",
            ),
            pytest.param(
                {"deployment": "versioned", "data": [[1, "x"]], "version": "official"},
                pa.int64(),
                pa.struct([("version", pa.int64()), ("input", pa.string())]),
                [{"id": 1, "result": {"version": 2, "input": "x"}}],
                id="objects as structs",
            ),
            pytest.param(
                {"deployment": "echo", "data": [[1, [1, 2]], [2, None]]},
                pa.int64(),
                pa.list_(pa.int64()),
                [{"id": 1, "result": [1, 2]}, {"id": 2, "result": None}],
                id="lists and nulls",
            ),
            pytest.param(
                {"deployment": "doubler", "data": 21},
                pa.int64(),
                pa.int64(),
                [{"id": 0, "result": 42}],
                id="single input is one row with id 0",
            ),
        ],
    )
    def test_results_typed_as_arrow(
        self,
        server: RunningEmulator,
        tmp_path: Path,
        operator_kwargs: dict[str, Any],
        id_type: pa.DataType,
        result_type: pa.DataType,
        expected_rows: list[dict[str, Any]],
    ) -> None:
        output = tmp_path / "scores.parquet"
        outcome = run_inference(output_path=str(output), **operator_kwargs)
        table = pq.read_table(output)
        assert table.schema.field("id").type == id_type
        assert table.schema.field("result").type == result_type
        assert table.to_pylist() == expected_rows
        assert outcome.value == {
            "path": f"file://{output}",
            "rows": len(expected_rows),
            "bytes": output.stat().st_size,
        }

    def test_dataframe_scores_as_double(self, server: RunningEmulator, tmp_path: Path) -> None:
        output = tmp_path / "churn.parquet"
        run_inference(deployment="churn_scorer", data=CUSTOMERS, output_path=str(output))
        table = pq.read_table(output)
        assert table.column("id").to_pylist() == [0, 1, 2]
        assert table.schema.field("result").type == pa.float64()

    @pytest.mark.parametrize(
        "result_schema", [None, {"score": "float", "label": "str"}], ids=["undeclared", "declared"]
    )
    def test_an_empty_input_writes_the_schema_of_a_full_one(
        self, result_schema: dict[str, str] | None, server: RunningEmulator, tmp_path: Path
    ) -> None:
        """Daily outputs agree in schema: the declared result type, else null; the index's ID type."""
        frame = pd.DataFrame({"score": [0.5, 0.25], "label": ["a", "b"]})
        full, empty = tmp_path / "full.parquet", tmp_path / "empty.parquet"
        for data, output in [(frame, full), (frame.iloc[:0], empty)]:
            outcome = run_inference(
                deployment="echo", data=data, output_path=str(output), result_schema=result_schema
            )
            assert outcome.state == "success", outcome.error
        assert pq.read_table(empty).num_rows == 0
        assert server.client.runs("echo") == {"0": 1, "1": 1}
        declared = pa.struct([("score", pa.float64()), ("label", pa.string())])
        assert pq.read_schema(full).field("result").type == declared
        if result_schema is None:
            assert pq.read_schema(empty) == pa.schema([("id", pa.int64()), ("result", pa.null())])
        else:
            assert (
                pq.read_schema(empty)
                == pq.read_schema(full)
                == pa.schema([("id", pa.int64()), ("result", declared)])
            )

    def test_an_empty_batch_with_a_result_schema(self, server: RunningEmulator, tmp_path: Path) -> None:
        """Rows ``[]`` carry no ID type; the result still has the declared type."""
        output = tmp_path / "scores.parquet"
        outcome = run_inference(
            deployment="echo", data=[], output_path=str(output), result_schema={"score": "float"}
        )
        assert outcome.value["rows"] == 0
        assert pq.read_schema(output) == pa.schema(
            [("id", pa.null()), ("result", pa.struct([("score", pa.float64())]))]
        )
        assert server.client.requests() == []

    def test_a_result_field_not_in_result_schema_fails_naming_it(
        self, server: RunningEmulator, tmp_path: Path
    ) -> None:
        output = tmp_path / "scores.parquet"
        outcome = run_inference(
            deployment="echo",
            data=[[1, {"score": 0.5, "extra": 1}]],
            output_path=str(output),
            result_schema={"score": "float"},
        )
        assert_failed(outcome, ModelbitInputError, "field(s) 'extra', which result_schema does not list")
        assert not output.exists()

    def test_object_storage_url(self, server: RunningEmulator, tmp_path: Path) -> None:
        """output_path may be any ObjectStoragePath URL; file:// needs no extra connection."""
        output = tmp_path / "nested" / "scores.parquet"
        outcome = run_inference(deployment="doubler", data=[[1, 1]], output_path=f"file://{output}")
        assert outcome.value["path"] == f"file://{output}"
        assert pq.read_table(output).to_pylist() == [{"id": 1, "result": 2}]

    def test_output_path_is_templated(self, server: RunningEmulator, tmp_path: Path) -> None:
        outcome = run_inference(
            deployment="doubler", data=[[1, 1]], output_path=str(tmp_path / "{{ task.task_id }}.parquet")
        )
        assert outcome.value["path"] == f"file://{tmp_path}/score.parquet"


# ---------------------------------------------------------------------- links


class TestLinks:
    """response_format="links": results come back as a download link, streamed to their destination."""

    @pytest.mark.parametrize(
        ("operator_kwargs", "expected"),
        [
            pytest.param({"deployment": "versioned", "data": 7}, {"version": 3, "input": 7}, id="single"),
            pytest.param(
                {"deployment": "doubler", "data": [["b", 1], ["a", 2]]}, [["b", 2], ["a", 4]], id="batch"
            ),
        ],
    )
    def test_to_xcom(self, server: RunningEmulator, operator_kwargs: dict[str, Any], expected: Any) -> None:
        server.client.configure(sort_results_by_id=True)
        outcome = run_inference(response_format="links", **operator_kwargs)
        assert outcome.value == expected

    def test_link_results_read_for_xcom_stop_at_max_xcom_bytes(self, server: RunningEmulator) -> None:
        """A links document bound for XCom is refused once the download passes max_xcom_bytes."""
        operator = ModelbitInferenceOperator(
            task_id="score", deployment="echo", data=[[1, "x" * 500]], max_xcom_bytes=100
        )
        [url] = request_links(server, "echo", [[[1, "x" * 500]]])
        with pytest.raises(ModelbitError, match="too large to return through XCom"):
            operator._write_link_results({}, [url])  # type: ignore[arg-type]

    def test_link_results_read_for_xcom_follow_input_order(self, server: RunningEmulator) -> None:
        server.client.configure(sort_results_by_id=True)
        rows = [["c", 1], ["a", 2]]
        operator = ModelbitInferenceOperator(task_id="score", deployment="doubler", data=rows)
        assert operator._write_link_results({}, request_links(server, "doubler", [rows])) == [  # type: ignore[arg-type]
            ["c", 2],
            ["a", 4],
        ]

    def test_link_with_missing_rows_is_refused(self, server: RunningEmulator, tmp_path: Path) -> None:
        """A links document lacking an input ID fails, naming the missing ID, and writes nothing."""
        operator = ModelbitInferenceOperator(
            task_id="score",
            deployment="doubler",
            data=[[1, 1], [2, 2]],
            output_path=str(tmp_path / "out.parquet"),
        )
        urls = request_links(server, "doubler", [[[1, 1]]])
        with pytest.raises(ModelbitIncompleteBatch, match=r"missing IDs \[2\] \(1\)"):
            operator._write_link_results({}, urls)  # type: ignore[arg-type]
        assert files_in(tmp_path) == []

    def test_batch_to_parquet_in_input_order(self, server: RunningEmulator, tmp_path: Path) -> None:
        """Several links (one per request) are streamed into one file, rows in input order."""
        server.client.configure(sort_results_by_id=True)
        count = DEFAULT_BATCH_SIZE + 3
        rows = [[f"id-{count - index:05d}", index] for index in range(count)]
        output = tmp_path / "scores.parquet"
        outcome = run_inference(
            deployment="doubler", data=rows, response_format="links", output_path=str(output)
        )
        table = pq.read_table(output)
        assert outcome.value["rows"] == count
        assert table.column("id").to_pylist() == [row[0] for row in rows]
        assert table.column("result").to_pylist() == [2 * row[1] for row in rows]
        assert table.schema.field("result").type == pa.int64()

    def test_single_to_parquet(self, server: RunningEmulator, tmp_path: Path) -> None:
        output = tmp_path / "one.parquet"
        run_inference(deployment="versioned", data=7, response_format="links", output_path=str(output))
        assert pq.read_table(output).to_pylist() == [{"id": 0, "result": {"version": 3, "input": 7}}]

    def test_links_from_deliveries_to_parquet(self, server: RunningEmulator, tmp_path: Path) -> None:
        """
        The output side of links deliveries on the deferred path: a link per chunk, streamed to one file.

        IDs mixing numbers and strings come back as themselves, in input order.
        """
        server.client.configure(sort_results_by_id=True)
        rows = [[f"r{9 - index}" if index % 2 else 9 - index, index] for index in range(10)]
        output = tmp_path / "delivered.parquet"
        operator = ModelbitInferenceOperator(
            task_id="score", deployment="doubler", data=rows, output_path=str(output)
        )
        urls = request_links(server, "doubler", list(operator._iter_chunks()))
        summary = operator._write_link_results({}, urls)  # type: ignore[arg-type]
        assert summary["rows"] == 10
        stored_ids = pq.read_table(output).column("id").to_pylist()
        assert [json.loads(row_id) for row_id in stored_ids] == [row[0] for row in rows]


# ---------------------------------------------------------------------- errors


def _wrong_key(server: RunningEmulator, define: Callable[..., str]) -> None:
    define(host=server.url, password="k-wrong:bm90LXRoZS1rZXk=")


def _drop_connections(server: RunningEmulator, define: Callable[..., str]) -> None:
    server.client.set_faults(drop_after_rate=1.0, deployment="doubler")


def _truncate_links(server: RunningEmulator, define: Callable[..., str]) -> None:
    server.client.set_faults(truncate_link_rate=1.0)


ERROR_CASES = [
    pytest.param(
        _wrong_key, {"deployment": "doubler", "data": 1}, ModelbitAuthError, ("API Key",), id="auth"
    ),
    pytest.param(
        None,
        {"deployment": "doubler", "data": 1, "modelbit_conn_id": "modelbit_nowhere"},
        ModelbitConnectionError,
        ("'modelbit_nowhere' is not defined", "AIRFLOW_CONN_MODELBIT_NOWHERE"),
        id="no connection",
    ),
    pytest.param(
        None,
        {"deployment": "no_such_model", "data": 1},
        ModelbitNotFound,
        ("'no_such_model'",),
        id="not found",
    ),
    pytest.param(
        None,
        {"deployment": "versioned", "data": 1, "version": 99},
        ModelbitNotFound,
        ("version 99",),
        id="unknown version",
    ),
    pytest.param(
        None,
        {"deployment": "churn_scorer", "data": [[1, 5]]},
        ModelbitBadRequest,
        ("'churn_scorer'", "HTTP 400"),
        id="bad request",
    ),
    pytest.param(
        None,
        {"deployment": "raiser", "data": 3},
        ModelbitDeploymentError,
        ("'raiser'", "ValueError: boom: 3"),
        id="deployment error",
    ),
    pytest.param(
        None,
        {"deployment": "sleeper", "data": 3, "timeout_seconds": 1},
        ModelbitTimeout,
        ("'sleeper'", "timeout_seconds"),
        id="timeout",
    ),
    pytest.param(
        _drop_connections,
        {"deployment": "doubler", "data": 1},
        ModelbitTransportError,
        ("'doubler'", "connection"),
        id="transport",
    ),
    pytest.param(
        _truncate_links,
        {"deployment": "doubler", "data": [[1, 1]], "response_format": "links"},
        ModelbitIncompleteBatch,
        (),
        id="truncated link",
    ),
    pytest.param(
        None,
        {"deployment": "doubler", "data": [[1, 1], [1, 2]]},
        ModelbitInputError,
        ("Row ID 1 appears more than once (again at row 1) for 'doubler'",),
        id="duplicate IDs",
    ),
    pytest.param(
        None,
        {"deployment": "doubler", "data": 1, "response_format": "csv"},
        ModelbitInputError,
        ("response_format",),
        id="unknown response format",
    ),
]


class TestErrors:
    """Each kind of failure fails the task with a message for people, and leaves no output file."""

    @pytest.mark.parametrize(("arrange", "operator_kwargs", "error_type", "fragments"), ERROR_CASES)
    def test_fails_task_with_clear_message_and_no_output(
        self,
        server: RunningEmulator,
        modelbit_connection: Callable[..., str],
        tmp_path: Path,
        arrange: Callable[[RunningEmulator, Callable[..., str]], None] | None,
        operator_kwargs: dict[str, Any],
        error_type: type[BaseException],
        fragments: tuple[str, ...],
    ) -> None:
        if arrange is not None:
            arrange(server, modelbit_connection)
        output_dir = tmp_path / "out"
        outcome = run_inference(output_path=str(output_dir / "scores.parquet"), **operator_kwargs)
        assert_failed(outcome, error_type, *fragments)
        assert files_in(output_dir) == []

    def test_truncated_link_on_the_way_to_xcom(self, server: RunningEmulator) -> None:
        server.client.set_faults(truncate_link_rate=1.0)
        outcome = run_inference(deployment="doubler", data=[[1, 1]], response_format="links")
        assert_failed(outcome, ModelbitIncompleteBatch)

    @pytest.mark.parametrize("to_parquet", [True, False], ids=["to parquet", "to xcom"])
    def test_expired_link_is_reported_as_expired(
        self, server: RunningEmulator, tmp_path: Path, to_parquet: bool
    ) -> None:
        """A link downloaded after its expiry fails as expired (deferred path: links from deliveries)."""
        output_dir = tmp_path / "out"
        operator = ModelbitInferenceOperator(
            task_id="score",
            deployment="doubler",
            data=[[1, 1]],
            output_path=str(output_dir / "scores.parquet") if to_parquet else None,
        )
        with pytest.raises(ModelbitLinkExpired) as raised:
            operator._write_link_results({}, [expired_link(server, [[1, 1]])])  # type: ignore[arg-type]
        assert API_KEY not in str(raised.value)
        assert files_in(output_dir) == []

    def test_existing_output_is_kept_when_the_task_fails(
        self, server: RunningEmulator, tmp_path: Path
    ) -> None:
        output = tmp_path / "scores.parquet"
        output.write_bytes(b"yesterday's scores")
        outcome = run_inference(deployment="raiser", data=1, output_path=str(output))
        assert outcome.state == "failed"
        assert output.read_bytes() == b"yesterday's scores"
        assert files_in(tmp_path) == ["scores.parquet"]


# ---------------------------------------------------------------------- example DAG


class TestExampleDag:
    """dags_examples/modelbit_single_inference.py parses offline and runs against the local server."""

    def _parse(self) -> Any:
        bag = parse_dags(EXAMPLE_DAG)
        assert bag.import_errors == {}
        return bag.dags["modelbit_single_inference"]

    def test_parses_without_connection_lookup(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.delenv("AIRFLOW_CONN_MODELBIT_DEFAULT", raising=False)
        with mock.patch(
            "airflow.sdk.bases.hook.BaseHook.get_connection",
            side_effect=AssertionError("connection looked up"),
        ) as lookup:
            dag = self._parse()
        lookup.assert_not_called()
        assert dag.schedule == "0 6 * * *"

    def test_runs_end_to_end(self, server: RunningEmulator) -> None:
        dag = self._parse()
        run = run_dag(dag)
        states = {ti.task_id: str(ti.state) for ti in run.get_task_instances()}
        assert set(states.values()) == {"success"}, states
        assert len(server.client.requests()) == 4


class TestTemplatedText:
    """A template can only render text; text that looks like rows is flagged in the task log."""

    @pytest.mark.parametrize(
        ("given", "rendered", "warned"),
        [
            pytest.param("{{ ti.xcom_pull('rows') }}", "[['a', 1]]", True, id="template rendered to a list"),
            pytest.param("{{ ti.xcom_pull('obj') }}", "{'a': 1}", True, id="template rendered to a dict"),
            pytest.param("{{ ds }}", "2026-01-01", False, id="template rendered to plain text"),
            pytest.param("[['a', 1]]", "[['a', 1]]", False, id="literal text is the user's choice"),
        ],
    )
    def test_warns_only_for_templates_rendered_to_list_like_text(
        self, capfd: pytest.CaptureFixture[str], given: str, rendered: str, warned: bool
    ) -> None:
        operator = ModelbitInferenceOperator(task_id="score", deployment="echo", data=given)
        operator.data = rendered  # what template rendering leaves behind
        operator._check_arguments()
        task_log = "".join(capfd.readouterr())
        assert ("render_template_as_native_obj=True" in task_log) is warned
