"""ModelbitBatchInferenceOperator end to end: real Airflow (``dag.test()``), the local Modelbit
server, real Parquet, CSV and JSON Lines files.

The server returns batch results sorted by ID, so a chunk's answer is in a different order from
its request whenever the IDs are not already sorted: the output must still follow the input.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest

from airflow_provider_modelbit.emulator.server import RunningEmulator, run_emulator
from airflow_provider_modelbit.exceptions import (
    ModelbitConnectionError,
    ModelbitIncompleteBatch,
    ModelbitInputError,
    ModelbitOutputBusy,
)
from airflow_provider_modelbit.io.chunk_store import CheckpointRecord
from airflow_provider_modelbit.io.ownership import TaskIdentity
from airflow_provider_modelbit.operators.batch import ModelbitBatchInferenceOperator
from tests.airflow_dags import parse_dags, run_dag, task_errors
from tests.operators.flaky_deployment import write_flaky_deployment

# A DAG file building one DAG per JSON spec found beside it: each test writes its own spec.
SPEC_DAGS = """
import json, pathlib
from airflow.sdk import DAG
from airflow_provider_modelbit.operators.batch import ModelbitBatchInferenceOperator

for spec_file in sorted(pathlib.Path(__file__).parent.glob("batch_spec_*.json")):
    with DAG(spec_file.stem, schedule=None) as dag:
        ModelbitBatchInferenceOperator(task_id="score", **json.loads(spec_file.read_text()))
    globals()[spec_file.stem] = dag
"""

ROWS = 20
# IDs in descending order: sorting by ID reverses every chunk's answer.
KEYS = [f"k{ROWS - i:03d}" for i in range(ROWS)]
TABLE = pa.table({"key": KEYS, "x": list(range(ROWS)), "segment": ["a", "b"] * (ROWS // 2)})


@pytest.fixture(scope="module")
def dags_folder() -> Path:
    """The Airflow DAGs folder with the spec-driven DAG file, and an initialised metadata database."""
    from airflow.utils.db import initdb

    initdb()
    folder = Path(os.environ["AIRFLOW_HOME"]) / "dags"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "batch_specs.py").write_text(SPEC_DAGS)
    return folder


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningEmulator]:
    """The local Modelbit server answering batches sorted by ID, with the ``flaky`` deployment."""
    folder = tmp_path_factory.mktemp("deployments")
    deployments = write_flaky_deployment(folder)
    with run_emulator(sort_results_by_id=True, deployments_file=str(deployments)) as running:
        previous = os.environ.get("AIRFLOW_CONN_MODELBIT_DEFAULT")
        os.environ["AIRFLOW_CONN_MODELBIT_DEFAULT"] = json.dumps(
            {"conn_type": "modelbit", "host": running.url}
        )
        yield running
        if previous is None:
            os.environ.pop("AIRFLOW_CONN_MODELBIT_DEFAULT", None)
        else:
            os.environ["AIRFLOW_CONN_MODELBIT_DEFAULT"] = previous


@pytest.fixture
def run_batch(dags_folder: Path, server: RunningEmulator, request: pytest.FixtureRequest) -> Iterator[Any]:
    """Run the operator with the given arguments in a one-task DAG with ``dag.test()``; return its state."""
    dag_id = "batch_spec_" + re.sub(r"\W+", "_", request.node.name)[:120]
    spec_file = dags_folder / f"{dag_id}.json"

    def run(**arguments: Any) -> str:
        spec_file.write_text(json.dumps({"max_concurrency": 2, **arguments}))
        return str(run_dag(parse_dags(dags_folder).dags[dag_id]).state)

    yield run
    spec_file.unlink(missing_ok=True)


def echo_spec(tmp_path: Path, input_path: Path | str, **overrides: Any) -> dict[str, Any]:
    return {
        "deployment": "echo",
        "input_path": str(input_path),
        "output_path": str(tmp_path / "out" / "scores.parquet"),
        "id_column": "key",
        "columns": ["x"],
        "argument_style": "positional",
        "batch_size": 3,
        **overrides,
    }


def write_input(tmp_path: Path, kind: str, table: pa.Table = TABLE) -> Path:
    if kind == "parquet":
        pq.write_table(table, tmp_path / "in.parquet", row_group_size=7)
        return tmp_path / "in.parquet"
    if kind == "parquet directory":
        (tmp_path / "in").mkdir()
        for number, start in enumerate(range(0, table.num_rows, 8)):
            pq.write_table(table.slice(start, 8), tmp_path / "in" / f"part-{number}.parquet")
        return tmp_path / "in"
    if kind == "csv":
        pa_csv.write_csv(table, tmp_path / "in.csv")
        return tmp_path / "in.csv"
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(row) + "\n" for row in table.to_pylist()))
    return tmp_path / "in.jsonl"


def read_output(tmp_path: Path) -> pa.Table:
    return pq.read_table(tmp_path / "out" / "scores.parquet")


class TestScoring:
    @pytest.mark.parametrize("kind", ["parquet", "parquet directory", "csv", "jsonl"])
    def test_each_input_format_gives_one_row_per_input_in_order(
        self, kind: str, tmp_path: Path, run_batch: Any
    ) -> None:
        assert run_batch(**echo_spec(tmp_path, write_input(tmp_path, kind))) == "success"
        output = read_output(tmp_path)
        assert output.column_names == ["key", "result"]
        assert output.column("key").to_pylist() == KEYS
        assert output.column("result").to_pylist() == list(range(ROWS))

    def test_multi_chunk_answers_sorted_by_id_are_matched_back(
        self, tmp_path: Path, run_batch: Any, server: RunningEmulator
    ) -> None:
        """Seven chunks, each answered in reverse order, with two requests in flight."""
        assert run_batch(**echo_spec(tmp_path, write_input(tmp_path, "parquet"))) == "success"
        assert read_output(tmp_path).column("result").to_pylist() == list(range(ROWS))
        assert set(server.client.runs("echo")) >= set(KEYS)

    def test_row_positions_are_the_ids_without_id_column(self, tmp_path: Path, run_batch: Any) -> None:
        spec = echo_spec(tmp_path, write_input(tmp_path, "parquet"), id_column=None)
        assert run_batch(**spec) == "success"
        output = read_output(tmp_path)
        assert output.column("id").to_pylist() == list(range(ROWS))
        assert output.column("result").to_pylist() == list(range(ROWS))

    def test_object_style_sends_one_object_per_row(self, tmp_path: Path, run_batch: Any) -> None:
        spec = echo_spec(
            tmp_path, write_input(tmp_path, "parquet"), columns=["x", "segment"], argument_style="object"
        )
        assert run_batch(**spec) == "success"
        assert read_output(tmp_path).column("result").to_pylist()[:2] == [
            {"x": 0, "segment": "a"},
            {"x": 1, "segment": "b"},
        ]

    def test_passthrough_and_expanded_result_columns(self, tmp_path: Path, run_batch: Any) -> None:
        spec = echo_spec(
            tmp_path,
            write_input(tmp_path, "parquet"),
            columns=["x", "segment"],
            argument_style="object",
            passthrough_columns=["segment"],
            expand_result=True,
        )
        assert run_batch(**spec) == "success"
        output = read_output(tmp_path)
        assert output.column_names == ["key", "result_x", "result_segment", "segment"]
        assert output.column("result_x").to_pylist() == list(range(ROWS))
        assert output.column("segment").to_pylist() == TABLE.column("segment").to_pylist()

    def test_empty_input_gives_an_empty_file_with_the_columns(self, tmp_path: Path, run_batch: Any) -> None:
        spec = echo_spec(
            tmp_path, write_input(tmp_path, "parquet", TABLE.slice(0, 0)), passthrough_columns=["segment"]
        )
        assert run_batch(**spec) == "success"
        output = read_output(tmp_path)
        assert output.num_rows == 0
        assert output.schema.names == ["key", "result", "segment"]
        assert output.schema.field("key").type == pa.string()

    def test_a_hive_partitioned_folder_scores_as_its_rows_in_one_file_do(
        self, tmp_path: Path, run_batch: Any, server: RunningEmulator
    ) -> None:
        """``date=.../part-0.parquet`` folders: every row scored once, output as a clean run of one file."""
        days = ["2024-01-01"] * 5 + ["2024-01-02"] * 4 + ["2024-01-03"] * 3
        keys = [f"hive-{i:02d}" for i in range(len(days))]
        rows = pa.table({"key": keys, "x": list(range(len(days))), "date": days})
        for day in sorted(set(days)):
            folder = tmp_path / "partitioned" / f"date={day}"
            folder.mkdir(parents=True)
            pq.write_table(
                rows.filter(pc.equal(rows.column("date"), day)).drop_columns(["date"]),
                folder / "part-0.parquet",
            )
        (tmp_path / "partitioned" / "_SUCCESS").write_text("")
        pq.write_table(rows, tmp_path / "clean.parquet")
        outputs = {}
        for name in ("partitioned", "clean"):
            source = tmp_path / name if name == "partitioned" else tmp_path / "clean.parquet"
            spec = echo_spec(tmp_path / f"{name}-run", source, passthrough_columns=["date"])
            assert run_batch(**spec) == "success"
            outputs[name] = read_output(tmp_path / f"{name}-run")
            if name == "partitioned":
                assert {key: server.client.runs("echo")[key] for key in keys} == dict.fromkeys(keys, 1)
        assert outputs["partitioned"].to_pylist() == outputs["clean"].to_pylist()
        assert outputs["partitioned"].schema.remove_metadata() == outputs["clean"].schema.remove_metadata()
        assert outputs["partitioned"].column("result").to_pylist() == list(range(len(days)))
        assert {key: server.client.runs("echo")[key] for key in keys} == dict.fromkeys(keys, 2)

    def test_csv_ids_keep_leading_zeros_and_column_types_keep_a_zip_code_text(
        self, tmp_path: Path, run_batch: Any, server: RunningEmulator
    ) -> None:
        """``007`` and ``7`` are two IDs, and the model receives the zip code ``"02134"``, not ``2134``."""
        (tmp_path / "in.csv").write_text("key,zip,x\n007,02134,1\n7,10001,2\n00123,90210,3\n")
        spec = echo_spec(
            tmp_path,
            tmp_path / "in.csv",
            columns=["zip", "x"],
            argument_style="object",
            column_types={"zip": "str"},
        )
        assert run_batch(**spec) == "success"
        output = read_output(tmp_path)
        assert output.column("key").to_pylist() == ["007", "7", "00123"]
        assert output.column("result").to_pylist() == [
            {"zip": "02134", "x": 1},
            {"zip": "10001", "x": 2},
            {"zip": "90210", "x": 3},
        ]
        assert set(server.client.runs("echo")) >= {"007", "7", "00123"}

    def test_a_header_only_csv_gives_the_schema_of_a_full_day_with_result_schema(
        self, tmp_path: Path, run_batch: Any
    ) -> None:
        """Daily partitions agree: a day without rows has the columns and types of a day with rows."""
        schemas = []
        for day, text in (("full", "key,zip,x\n007,02134,1\n"), ("empty", "key,zip,x\n")):
            (tmp_path / f"{day}.csv").write_text(text)
            spec = echo_spec(
                tmp_path,
                tmp_path / f"{day}.csv",
                output_path=str(tmp_path / "out" / f"{day}.parquet"),
                columns=["zip", "x"],
                argument_style="object",
                passthrough_columns=["zip"],
                column_types={"zip": "str", "x": "int"},
                expand_result=True,
                result_schema={"zip": "str", "x": "int"},
            )
            assert run_batch(**spec) == "success"
            schemas.append(pq.read_schema(tmp_path / "out" / f"{day}.parquet").remove_metadata())
        assert schemas[0] == schemas[1]
        assert schemas[1].names == ["key", "result_zip", "result_x", "zip"]
        assert schemas[1].types == [pa.string(), pa.string(), pa.int64(), pa.string()]


VALIDATION_CASES = {
    "missing column": ({"columns": ["x", "age"]}, TABLE),
    "duplicate ID": ({}, TABLE.set_column(0, "key", pa.array([*KEYS[:-1], KEYS[0]]))),
    "null ID": ({}, TABLE.set_column(0, "key", pa.array([*KEYS[:-1], None]))),
    "binary column": (
        {"columns": ["x", "photo"]},
        TABLE.append_column("photo", pa.array([b"\x89PNG"] * ROWS)),
    ),
    "missing pass-through column": ({"passthrough_columns": ["region"]}, TABLE),
}


class TestValidation:
    @pytest.mark.parametrize("case", VALIDATION_CASES)
    def test_invalid_input_fails_before_any_request_and_leaves_no_output(
        self, case: str, tmp_path: Path, run_batch: Any, server: RunningEmulator
    ) -> None:
        overrides, table = VALIDATION_CASES[case]
        spec = echo_spec(tmp_path, write_input(tmp_path, "parquet", table), deployment="doubler", **overrides)
        assert run_batch(**spec) == "failed"
        assert server.client.runs("doubler") == {}
        assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []

    @pytest.mark.parametrize(
        ("overrides", "message"),
        [
            ({"columns": ["x", "age"]}, "has no column 'age'"),
            ({}, "ID 'k020' appears more than once in column 'key'"),
            ({"columns": ["x", "photo"]}, "Column 'photo' of input .* has type binary"),
        ],
    )
    def test_messages_name_the_column_or_row(
        self, overrides: dict[str, Any], message: str, tmp_path: Path
    ) -> None:
        table = TABLE.set_column(0, "key", pa.array([*KEYS[:-1], KEYS[0]])).append_column(
            "photo", pa.array([b"\x00"] * ROWS)
        )
        spec = echo_spec(tmp_path, write_input(tmp_path, "parquet", table), **overrides)
        operator = ModelbitBatchInferenceOperator(task_id="score", **spec)
        with pytest.raises(ValueError, match=message):
            operator.execute({})


class TestResume:
    def test_a_retry_scores_only_unfinished_chunks_and_writes_the_same_file(
        self, tmp_path: Path, run_batch: Any, server: RunningEmulator, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """
        x=13 fails once, in chunk 4 of 7; one request at a time so chunks 0-3 finish first. The
        task's retry (same task instance, try 2) reuses them; a new DAG run would not.
        """
        input_path = write_input(tmp_path, "parquet")
        spec = echo_spec(
            tmp_path, input_path, deployment="flaky", max_concurrency=1, retries=1, retry_delay=0
        )
        assert run_batch(**spec) == "success"
        assert "Resuming: 4 chunk(s) finished by an earlier try are reused." in capsys.readouterr().out
        runs = server.client.runs("flaky")
        finished_first = KEYS[:12]
        assert all(runs[key] == 1 for key in finished_first), runs
        assert not (tmp_path / "out" / "scores.parquet.checkpoint").exists()

        uninterrupted = tmp_path / "uninterrupted"
        uninterrupted.mkdir()
        assert run_batch(**echo_spec(uninterrupted, input_path)) == "success"
        assert read_output(tmp_path).equals(read_output(uninterrupted))

    def test_a_checkpoint_from_other_settings_is_discarded(
        self, tmp_path: Path, run_batch: Any, server: RunningEmulator
    ) -> None:
        checkpoint = tmp_path / "out" / "scores.parquet.checkpoint"
        checkpoint.mkdir(parents=True)
        (checkpoint / "manifest.json").write_text(json.dumps({"batch_size": 99}))
        pq.write_table(pa.table({"junk": [1]}), checkpoint / "chunk-00000000.arrow")
        assert run_batch(**echo_spec(tmp_path, write_input(tmp_path, "parquet"))) == "success"
        assert read_output(tmp_path).column("result").to_pylist() == list(range(ROWS))


class TestReturnValue:
    def test_returns_location_and_counts_not_results(self, tmp_path: Path, server: RunningEmulator) -> None:
        spec = echo_spec(tmp_path, write_input(tmp_path, "parquet"))
        summary = ModelbitBatchInferenceOperator(task_id="score", **spec).execute({})
        assert set(summary) == {"path", "rows", "chunks", "seconds", "rows_per_second", "concurrency"}
        assert (summary["rows"], summary["chunks"]) == (ROWS, 7)
        concurrency = summary["concurrency"]
        assert concurrency["mode"] == "adaptive" and concurrency["ceiling"] == spec.get("max_concurrency", 16)
        assert 1 <= concurrency["final"] <= concurrency["highest"] <= concurrency["ceiling"]
        assert summary["path"] == f"file://{tmp_path}/out/scores.parquet"


class TestDeferrableMode:
    """deferrable=True submits each chunk asynchronously (end to end in test_deferrable.py)."""

    def test_checks_the_input_then_needs_the_callback_settings(
        self, tmp_path: Path, server: RunningEmulator
    ) -> None:
        """The input is checked first; without callback_base_url nothing is sent and nothing written."""
        spec = echo_spec(tmp_path, write_input(tmp_path, "parquet"), deferrable=True)
        sent_before = len(server.client.requests())
        with pytest.raises(ModelbitConnectionError, match="callback_base_url"):
            ModelbitBatchInferenceOperator(task_id="score", **spec).execute({"ti": _TaskInstance()})
        assert len(server.client.requests()) == sent_before
        assert not (tmp_path / "out").exists()

    def test_invalid_input_fails_before_the_callback_settings_are_read(self, tmp_path: Path) -> None:
        spec = echo_spec(tmp_path, write_input(tmp_path, "parquet"), columns=["missing"], deferrable=True)
        with pytest.raises(ModelbitInputError, match="missing"):
            ModelbitBatchInferenceOperator(task_id="score", **spec).execute({"ti": _TaskInstance()})


class _TaskInstance:
    """The task-instance fields the deferred path reads to name its callback job."""

    dag_id, task_id, run_id, map_index = "dag", "score", "manual__1", -1


class TestConstruction:
    @pytest.mark.parametrize(
        ("arguments", "message"),
        [
            ({"argument_style": "kwargs"}, "argument_style must be one of"),
            ({"batch_size": 0}, "batch_size must be"),
        ],
    )
    def test_invalid_settings_fail_when_the_dag_is_parsed(
        self, arguments: dict[str, Any], message: str
    ) -> None:
        with pytest.raises(ValueError, match=message):
            ModelbitBatchInferenceOperator(
                task_id="score",
                deployment="d",
                input_path="in.parquet",
                output_path="out.parquet",
                **arguments,
            )

    def test_asset_is_added_to_outlets(self) -> None:
        operator = ModelbitBatchInferenceOperator(
            task_id="score",
            deployment="d",
            input_path="in.parquet",
            output_path="o.parquet",
            asset="churn_scores",
        )
        assert [outlet.name for outlet in operator.outlets] == ["churn_scores"]

    def test_templated_fields(self) -> None:
        assert set(ModelbitBatchInferenceOperator.template_fields) == {
            "deployment", "input_path", "output_path", "version",
            "branch", "modelbit_conn_id", "columns", "id_column",
        }  # fmt: skip


def task_context(run_id: str, try_number: int = 1) -> dict[str, Any]:
    """The identity part of a task's context, for operator executions run side by side in threads."""
    ti = SimpleNamespace(
        dag_id="nightly", task_id="score", run_id=run_id, map_index=-1, try_number=try_number
    )
    return {"ti": ti}


class TestDestinationCheckedFirst:
    """Every destination refusal comes before the first request and leaves nothing behind."""

    @pytest.mark.parametrize(
        ("case", "message"),
        [
            ("output is the input", "output_path .* is the input table itself"),
            ("output is a directory", "output_path .* is a directory"),
            ("output under a file", "output_path .* cannot be created: .* is a file"),
            ("filesystem package missing", "output_path gs://no-bucket/scores.parquet: .*gcsfs"),
            ("pass-through clashes with result", "passthrough_columns names 'result'"),
            ("pass-through clashes with id", "passthrough_columns names 'id'"),
            ("invalid deployment name", "Deployment name 'no such' is invalid"),
        ],
    )
    def test_refused_before_any_request_with_nothing_left_behind(
        self, case: str, message: str, tmp_path: Path, server: RunningEmulator
    ) -> None:
        table = TABLE.append_column("result", pa.array(["old"] * ROWS)).append_column("id", pa.array(KEYS))
        input_path = write_input(tmp_path, "parquet", table)
        spec = echo_spec(tmp_path, input_path)
        output = Path(spec["output_path"])
        if case == "output is the input":
            spec["output_path"] = str(input_path)
        elif case == "output is a directory":
            output.mkdir(parents=True)
        elif case == "output under a file":
            (tmp_path / "blocker").write_text("a file")
            spec["output_path"] = str(tmp_path / "blocker" / "scores.parquet")
        elif case == "filesystem package missing":
            spec["output_path"] = "gs://no-bucket/scores.parquet"
        elif case == "pass-through clashes with result":
            spec["passthrough_columns"] = ["result"]
        elif case == "pass-through clashes with id":
            spec.update(id_column=None, passthrough_columns=["id"])
        else:
            spec["deployment"] = "no such"
        before = sorted(tmp_path.rglob("*"))
        server.client.reset()
        with pytest.raises(ModelbitInputError, match=message):
            ModelbitBatchInferenceOperator(task_id="score", **spec).execute({})
        assert server.client.requests() == []
        assert sorted(tmp_path.rglob("*")) == before
        assert pq.read_table(input_path).equals(table)


class TestOneWriterPerOutput:
    """Two runs writing one output_path at once: the second fails clearly or waits; never a short file."""

    @pytest.fixture
    def slow_echo(self, server: RunningEmulator) -> Iterator[RunningEmulator]:
        server.client.reset()
        server.client.set_faults(latency_seconds=0.5, deployment="echo")
        yield server
        server.client.clear_faults()

    def start_first_run(self, spec: dict[str, Any]) -> tuple[threading.Thread, dict[str, Any]]:
        outcome: dict[str, Any] = {}

        def run() -> None:
            operator = ModelbitBatchInferenceOperator(task_id="score", **spec)
            outcome["summary"] = operator.execute(task_context("scheduled__1"))

        thread = threading.Thread(target=run)
        thread.start()
        owner = Path(spec["output_path"] + ".checkpoint") / "owner.json"
        deadline = time.monotonic() + 60
        while not owner.exists():
            assert time.monotonic() < deadline and thread.is_alive(), "the first run never claimed the output"
            time.sleep(0.05)
        return thread, outcome

    def test_a_second_run_fails_at_once_naming_the_first_and_the_output_stays_complete(
        self, tmp_path: Path, slow_echo: RunningEmulator
    ) -> None:
        spec = echo_spec(tmp_path, write_input(tmp_path, "parquet"), max_concurrency=1)
        thread, outcome = self.start_first_run(spec)
        second = ModelbitBatchInferenceOperator(task_id="score", **spec)
        with pytest.raises(ModelbitOutputBusy, match="run 'scheduled__1'"):
            second.execute(task_context("manual__2"))
        thread.join(timeout=120)
        assert outcome["summary"]["rows"] == ROWS
        assert read_output(tmp_path).column("key").to_pylist() == KEYS
        assert set(slow_echo.client.runs("echo").values()) == {1}

    def test_a_second_run_that_may_wait_scores_everything_itself_after_the_first(
        self, tmp_path: Path, slow_echo: RunningEmulator
    ) -> None:
        spec = echo_spec(tmp_path, write_input(tmp_path, "parquet"), max_concurrency=1)
        thread, outcome = self.start_first_run(spec)
        second = ModelbitBatchInferenceOperator(task_id="score", output_wait_seconds=120, **spec)
        summary = second.execute(task_context("manual__2"))
        thread.join(timeout=120)
        assert outcome["summary"]["rows"] == summary["rows"] == ROWS
        assert read_output(tmp_path).column("key").to_pylist() == KEYS
        # Each run scored every row itself: a run never reuses another run's chunks.
        assert set(slow_echo.client.runs("echo").values()) == {2}
        assert not Path(spec["output_path"] + ".checkpoint").exists()


class TestCompleteOrNothing:
    def test_a_forged_short_checkpoint_never_reaches_the_output(
        self, tmp_path: Path, server: RunningEmulator
    ) -> None:
        """A chunk that lost rows is caught before the output is replaced; the old output stays."""
        spec = echo_spec(tmp_path, write_input(tmp_path, "parquet"))
        output = Path(spec["output_path"])
        output.parent.mkdir(parents=True)
        pq.write_table(pa.table({"key": ["yesterday"], "result": [1]}), output)
        previous = output.read_bytes()
        forger = ModelbitBatchInferenceOperator(task_id="score", **spec)
        checkpoint = forger.batch_output.checkpoint
        checkpoint.start(CheckpointRecord.for_work(forger._work(), TaskIdentity()))
        checkpoint.put(0, pa.table({"key": KEYS[:1], "result": [0]}))  # 1 row of chunk 0's 3
        server.client.reset()
        with pytest.raises(ModelbitIncompleteBatch, match="chunk 0 holds 1 results for 3 input rows"):
            ModelbitBatchInferenceOperator(task_id="score", **spec).execute({})
        assert output.read_bytes() == previous
        assert set(server.client.runs("echo")) == set(KEYS[3:])


class TestStopWhenTold:
    @staticmethod
    def sleeper_spec(tmp_path: Path, output: Path) -> dict[str, Any]:
        """A one-row-per-chunk batch: a fast chunk, then three that sleep 60 s, two in flight at once."""
        input_path = tmp_path / "in.parquet"
        pq.write_table(
            pa.table({"key": ["fast", "slow-1", "slow-2", "slow-3"], "x": [0.1, 60.0, 60.0, 60.0]}),
            input_path,
        )
        return {
            "task_id": "score",
            "deployment": "sleeper",
            "input_path": str(input_path),
            "output_path": str(output),
            "id_column": "key",
            "columns": ["x"],
            "argument_style": "positional",
            "batch_size": 1,
            "max_concurrency": 2,
        }

    def test_execution_timeout_ends_the_batch_within_seconds_and_keeps_the_checkpoint(
        self, tmp_path: Path, dags_folder: Path, server: RunningEmulator, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """
        Requests take 60 s; execution_timeout is 8 s. The task ends within 15 s of starting, the
        two requests in flight are abandoned, no further chunk is sent, and the chunk that
        finished stays in the checkpoint for the retry.
        """
        output = tmp_path / "out" / "scores.parquet"
        server.client.reset()

        moments: dict[str, float] = {}

        def build() -> ModelbitBatchInferenceOperator:
            return ModelbitBatchInferenceOperator(
                **self.sleeper_spec(tmp_path, output),
                execution_timeout=timedelta(seconds=8),
                on_execute_callback=lambda context: moments.setdefault("started", time.monotonic()),
                on_failure_callback=lambda context: moments.setdefault("ended", time.monotonic()),
            )

        assert run_task_state(build) == "failed"
        seconds = moments["ended"] - moments["started"]
        print(f"stop report: execution_timeout 8 s, requests of 60 s; the task ended after {seconds:.1f} s")
        assert seconds < 15, f"the task ran {seconds:.1f} s"
        log = capsys.readouterr().out
        assert "with 2 chunk(s) in flight: their requests were abandoned" in log
        sent = [record for record in server.client.requests() if "/sleeper/" in record["path"]]
        assert len(sent) == 3  # the fast chunk and the two in flight; the fourth was never sent
        assert not output.exists()
        checkpoint = output.with_name("scores.parquet.checkpoint")
        assert sorted(path.name for path in checkpoint.glob("chunk-*")) == ["chunk-00000000.arrow"]
        assert not (checkpoint / "owner.json").exists()

    def test_on_kill_abandons_the_requests_in_flight_and_sends_nothing_more(
        self, tmp_path: Path, server: RunningEmulator
    ) -> None:
        """Killed with two 60 s requests in flight, the batch ends in seconds; the finished chunk stays."""
        output = tmp_path / "out" / "scores.parquet"
        server.client.reset()
        operator = ModelbitBatchInferenceOperator(**self.sleeper_spec(tmp_path, output))
        outcome: dict[str, Any] = {}

        def run() -> None:
            try:
                operator.execute({})
            except BaseException as error:
                outcome["error"] = error
            outcome["ended"] = time.monotonic()

        def sleeper_requests() -> list[dict[str, Any]]:
            return [record for record in server.client.requests() if "/sleeper/" in record["path"]]

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 120
        while len(sleeper_requests()) < 3:  # the fast chunk answered, the two slow ones in flight
            assert time.monotonic() < deadline and thread.is_alive(), "the slow requests were never sent"
            time.sleep(0.05)
        killed = time.monotonic()
        operator.on_kill()
        thread.join(timeout=60)
        assert not thread.is_alive(), "the batch kept running after on_kill"
        assert outcome["ended"] - killed < 15
        assert "error" in outcome
        assert len(sleeper_requests()) == 3  # the fourth chunk was never sent
        assert not output.exists()
        checkpoint = output.with_name("scores.parquet.checkpoint")
        assert sorted(path.name for path in checkpoint.glob("chunk-*")) == ["chunk-00000000.arrow"]


def run_task_state(build: Any) -> str:
    """Run one operator in a fresh DAG with ``dag.test()``; return its final state."""
    import pendulum
    from airflow.sdk import DAG

    start = pendulum.datetime(2026, 1, 1, tz="UTC")
    with DAG(f"stop_{time.monotonic_ns()}", schedule=None, start_date=start) as dag:
        operator = build()
    return str(run_dag(dag).get_task_instance(operator.task_id).state)


# A deployment that echoes its argument but holds every request while a gate file exists, so a
# test decides when the first of two overlapping runs may finish.
GATED_DEPLOYMENT = """
import pathlib, time

GATE = pathlib.Path({gate!r})


def gated(x):
    deadline = time.monotonic() + 600
    while GATE.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return x


def register(registry):
    registry.add("gated", gated)
"""

# Runs one stored DAG with dag.test() in a process of its own, as a second Airflow worker would.
DAG_TEST_PROCESS = """
import sys
from tests.airflow_dags import parse_dags, run_dag

run = run_dag(parse_dags(sys.argv[1]).dags[sys.argv[2]])
print("STATE", run.state, run.run_id)
"""


class TestOverlappingDagRuns:
    """Two real DAG runs of the nightly pattern (one fixed output_path) overlap in time."""

    def test_the_second_run_fails_naming_the_first_and_the_first_writes_every_row(
        self, tmp_path: Path, dags_folder: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        gate = tmp_path / "gate"
        gate.touch()
        deployments = tmp_path / "gated.py"
        deployments.write_text(GATED_DEPLOYMENT.format(gate=str(gate)))
        with run_emulator(deployments_file=str(deployments)) as server:
            monkeypatch.setenv(
                "AIRFLOW_CONN_MODELBIT_GATED", json.dumps({"conn_type": "modelbit", "host": server.url})
            )
            spec = echo_spec(tmp_path, write_input(tmp_path, "parquet"), deployment="gated")
            spec_file = dags_folder / "batch_spec_overlap.json"
            arguments = {**spec, "modelbit_conn_id": "modelbit_gated", "max_concurrency": 2}
            spec_file.write_text(json.dumps(arguments))
            try:
                first, owner = self.start_first_run(tmp_path, dags_folder, spec["output_path"])
                try:
                    with task_errors() as errors:
                        second = run_dag(parse_dags(dags_folder).dags["batch_spec_overlap"])
                    assert str(second.get_task_instance("score").state) == "failed"
                    assert isinstance(errors["score"], ModelbitOutputBusy)
                    assert f"run {owner['task']['run_id']!r}" in str(errors["score"])
                    gate.unlink()
                    output, _ = first.communicate(timeout=600)
                finally:
                    gate.unlink(missing_ok=True)
                    first.kill()
                    first.wait(timeout=60)
            finally:
                spec_file.unlink(missing_ok=True)
            assert f"STATE success {owner['task']['run_id']}" in output
            # The refused run sent nothing: every row reached the model once, from the first run.
            assert server.client.runs("gated") == dict.fromkeys(KEYS, 1)
        table = read_output(tmp_path)
        assert table.column("key").to_pylist() == KEYS
        assert table.column("result").to_pylist() == TABLE.column("x").to_pylist()
        assert not Path(spec["output_path"] + ".checkpoint").exists()

    def start_first_run(
        self, tmp_path: Path, dags_folder: Path, output_path: str
    ) -> tuple[subprocess.Popen[str], dict[str, Any]]:
        """Start the first run in a process of its own, on a copy of the metadata database; return it
        once it owns the output, with the owner record it wrote."""
        home = tmp_path / "second-worker-home"
        home.mkdir()
        database = Path(os.environ["AIRFLOW_HOME"]) / "airflow.db"
        with sqlite3.connect(database) as source, sqlite3.connect(home / "airflow.db") as copy:
            source.backup(copy)
        repository = Path(__file__).resolve().parents[2]
        environment = {**os.environ, "AIRFLOW_HOME": str(home), "PYTHONPATH": str(repository)}
        environment.pop("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", None)
        first = subprocess.Popen(
            [sys.executable, "-c", DAG_TEST_PROCESS, str(dags_folder), "batch_spec_overlap"],
            cwd=repository,
            env=environment,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        owner_file = Path(output_path + ".checkpoint") / "owner.json"
        deadline = time.monotonic() + 300
        while not owner_file.exists():
            if first.poll() is not None or time.monotonic() > deadline:
                first.kill()
                raise AssertionError(f"the first run never claimed the output:\n{first.communicate()[0]}")
            time.sleep(0.1)
        return first, json.loads(owner_file.read_text())
