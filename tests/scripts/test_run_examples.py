"""The main-job command: every example DAG runs end to end, the report says so, nothing is left running.

The end-to-end tests run ``scripts/run_examples.py`` as a subprocess on a small table, against the
real local Modelbit server, the real callback receiver and real ``airflow dags test`` runs.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

REPOSITORY = Path(__file__).resolve().parents[2]
SCRIPT = REPOSITORY / "scripts" / "run_examples.py"
sys.path.insert(0, str(SCRIPT.parent))

from run_examples import (  # noqa: E402
    RUN_FOLDER_MARKER,
    DagOutcome,
    ExamplesError,
    ModelbitEndpoints,
    OutputFile,
    RunFolder,
    decode_xcom,
    render_report,
    select_dag_ids,
)

# Each example file holds a DAG named like the file (a file may hold more, e.g. an Asset consumer).
EXAMPLE_DAG_IDS = sorted(path.stem for path in (REPOSITORY / "dags_examples").glob("modelbit_*.py"))
SMALL_ROWS = 1_500
SMALL_PARTITIONS = 3


def run_script(*arguments: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *arguments],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPOSITORY,
        check=False,
    )


def started_urls(folder: RunFolder) -> list[str]:
    """The URLs the local Modelbit server and the receiver reported when they were ready."""
    return [path.read_text().strip() for path in sorted(folder.logs.glob("*.url"))]


def is_listening(url: str) -> bool:
    address = urlsplit(url)
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex((address.hostname or "127.0.0.1", address.port or 80)) == 0


@pytest.fixture(scope="module")
def finished_run(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[subprocess.CompletedProcess[str], RunFolder]:
    """One full run of every example on a small table, shared by the end-to-end assertions."""
    folder = RunFolder(tmp_path_factory.mktemp("examples") / "run")
    result = run_script(
        "--rows", str(SMALL_ROWS), "--partitions", str(SMALL_PARTITIONS), "--run-folder", str(folder.root)
    )
    return result, folder


@pytest.mark.slow
class TestEndToEnd:
    """``run_examples.py`` on a small table (about 3 minutes on two idle cores: Airflow starts per DAG)."""

    def test_exits_zero_and_reports_every_dag_as_success(
        self, finished_run: tuple[subprocess.CompletedProcess[str], RunFolder]
    ) -> None:
        result, _ = finished_run
        assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
        report = result.stdout
        summary = re.search(r"Modelbit examples: (\d+)/(\d+) DAG runs succeeded", report)
        assert summary and summary.group(1) == summary.group(2), report
        for dag_id in EXAMPLE_DAG_IDS:
            assert any(line.split()[:2] == [dag_id, "success"] for line in report.splitlines()), dag_id

    def test_output_parquet_files_hold_every_customer(
        self, finished_run: tuple[subprocess.CompletedProcess[str], RunFolder]
    ) -> None:
        """Whole-table DAGs score every customer; the partitioned DAG scores each once across its files."""
        _, folder = finished_run
        outputs = sorted((folder.data / "scores").rglob("*.parquet"))
        assert outputs, f"no Parquet output under {folder.data / 'scores'}"
        customers = pq.read_table(folder.data / "churn" / "customers.parquet").column("customer_id")
        total = sum(pq.read_metadata(path).num_rows for path in outputs)
        assert total % SMALL_ROWS == 0 and total >= SMALL_ROWS
        for path in outputs:
            table = pq.read_table(path)
            assert table.num_rows > 0, path
            assert set(table.column(table.column_names[0]).to_pylist()) <= set(customers.to_pylist())

    def test_report_previews_outputs_and_points_at_logs(
        self, finished_run: tuple[subprocess.CompletedProcess[str], RunFolder]
    ) -> None:
        result, folder = finished_run
        assert "Outputs of " in result.stdout
        assert "Logs:" in result.stdout
        for dag_id in EXAMPLE_DAG_IDS:
            assert (folder.logs / f"{dag_id}.log").stat().st_size > 0

    def test_stops_everything_it_started(
        self, finished_run: tuple[subprocess.CompletedProcess[str], RunFolder]
    ) -> None:
        _, folder = finished_run
        urls = started_urls(folder)
        assert len(urls) == 2, "expected the Modelbit server and the receiver to have started"
        assert not any(is_listening(url) for url in urls)

    def test_api_key_and_secret_stay_out_of_the_report(
        self, finished_run: tuple[subprocess.CompletedProcess[str], RunFolder]
    ) -> None:
        result, _ = finished_run
        assert "demo:" not in result.stdout + result.stderr
        assert "callback_secret" not in result.stdout + result.stderr


class TestFailuresAndInterrupts:
    def test_unknown_dag_fails_clearly_and_stops_the_servers(self, tmp_path: Path) -> None:
        folder = RunFolder(tmp_path / "run")
        result = run_script("--rows", "10", "--only", "no_such_dag", "--run-folder", str(folder.root))
        assert result.returncode == 2
        assert "no_such_dag" in result.stderr and "modelbit_single_inference" in result.stderr
        assert not any(is_listening(url) for url in started_urls(folder))

    def test_interrupt_stops_the_servers(self, tmp_path: Path) -> None:
        """Ctrl-C while Airflow is being set up: exit 130, the servers it started are gone."""
        folder = RunFolder(tmp_path / "run")
        process = subprocess.Popen(
            [sys.executable, str(SCRIPT), "--rows", "10", "--run-folder", str(folder.root)],
            cwd=REPOSITORY,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            deadline = time.monotonic() + 120
            while len(started_urls(folder)) < 2 and time.monotonic() < deadline and process.poll() is None:
                time.sleep(0.2)
            urls = started_urls(folder)
            assert len(urls) == 2, "the servers did not start"
            os.kill(process.pid, signal.SIGINT)
            _, stderr = process.communicate(timeout=60)
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()
        assert process.returncode == 130, stderr
        assert not any(is_listening(url) for url in urls)


class TestRunFolder:
    def test_recreate_empties_a_folder_it_created(self, tmp_path: Path) -> None:
        folder = RunFolder(tmp_path / "run")
        folder.recreate()
        (folder.data / "old.parquet").write_bytes(b"old")
        folder.recreate()
        assert not (folder.data / "old.parquet").exists()
        assert (folder.root / RUN_FOLDER_MARKER).exists()

    def test_refuses_to_delete_a_folder_it_did_not_create(self, tmp_path: Path) -> None:
        (tmp_path / "precious.txt").write_text("keep me")
        with pytest.raises(ExamplesError, match=r"not created by run_examples\.py"):
            RunFolder(tmp_path).recreate()
        assert (tmp_path / "precious.txt").exists()


class TestModelbitEndpoints:
    def test_connection_json_is_the_modelbit_connection(self) -> None:
        endpoints = ModelbitEndpoints("http://127.0.0.1:1", "demo:key", "s3cret", "http://127.0.0.1:2")
        assert json.loads(endpoints.connection_json()) == {
            "conn_type": "modelbit",
            "host": "http://127.0.0.1:1",
            "password": "demo:key",
            "extra": {"callback_secret": "s3cret", "callback_base_url": "http://127.0.0.1:2"},
        }

    def test_no_callback_url_before_the_receiver_runs(self) -> None:
        endpoints = ModelbitEndpoints("http://127.0.0.1:1", "demo:key", "s3cret")
        assert "callback_base_url" not in json.loads(endpoints.connection_json())["extra"]


class TestSelectDagIds:
    @pytest.mark.parametrize(
        ("only", "selected"),
        [([], ["a", "b", "c"]), (["c", "a"], ["a", "c"]), (["b"], ["b"])],
    )
    def test_keeps_example_order(self, only: list[str], selected: list[str]) -> None:
        assert select_dag_ids(["a", "b", "c"], only) == selected

    def test_unknown_dag_names_the_known_ones(self) -> None:
        with pytest.raises(ExamplesError, match=r"\['x'\].*\['a', 'b'\]"):
            select_dag_ids(["a", "b"], ["x"])


class TestDecodeXcom:
    @pytest.mark.parametrize(
        ("stored", "value"),
        [
            ('{"path": "/p", "rows": 3}', {"path": "/p", "rows": 3}),
            (json.dumps(json.dumps({"rows": 3})), {"rows": 3}),
            ("not json", "not json"),
            (b"[1, 2]", [1, 2]),
        ],
    )
    def test_decodes_stored_json(self, stored: str | bytes, value: object) -> None:
        assert decode_xcom(stored) == value


class TestReport:
    def test_lists_each_dag_with_state_rows_and_a_preview(self, tmp_path: Path) -> None:
        scores = tmp_path / "scores.parquet"
        pq.write_table(pa.table({"id": ["C1", "C2", "C3", "C4"], "result": [0.1, 0.2, 0.3, 0.4]}), scores)
        outcomes = [
            DagOutcome(
                "nightly",
                "success",
                12.34,
                tmp_path / "nightly.log",
                {"success": 2},
                [OutputFile("score", str(scores), 4)],
            ),
            DagOutcome("broken", "failed", 1.0, tmp_path / "broken.log", {"success": 1, "failed": 1}),
        ]
        report = render_report(outcomes, RunFolder(tmp_path))
        assert "1/2 DAG runs succeeded" in report
        assert any(line.split() == ["nightly", "success", "12.3", "2/2", "4"] for line in report.splitlines())
        assert any(line.split() == ["broken", "failed", "1.0", "1/2", "-"] for line in report.splitlines())
        assert "C3" in report and "C4" not in report  # the first rows only
        assert str(tmp_path / "broken.log") in report
