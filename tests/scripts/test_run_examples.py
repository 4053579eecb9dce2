"""The main-job command: every example DAG runs end to end, the report says so, nothing is left running.

The tests run ``scripts/run_examples.py`` as a subprocess on a small table, against the real local
Modelbit server, the real callback receiver and real ``airflow dags test`` runs (or the real
services). The interrupt tests stop it the ways a person or a machine does — Ctrl-C to its process
group, SIGTERM, ``kill -9`` — at a chosen moment, and check that every process it had started is
gone. Every wait is on a condition, with timeouts sized for a busy two-core machine.
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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pyarrow.parquet as pq
import pytest
from harness.examples import ModelbitEndpoints
from harness.layout import RunLayout

REPOSITORY = Path(__file__).resolve().parents[2]
SCRIPT = REPOSITORY / "scripts" / "run_examples.py"
DATABASE_CACHE = REPOSITORY / "artifacts" / "cache"
# Each example file holds a DAG named like the file (a file may hold more, e.g. an Asset consumer).
EXAMPLE_DAG_IDS = sorted(path.stem for path in (REPOSITORY / "dags_examples").glob("modelbit_*.py"))
SMALL_ROWS = 1_500
SMALL_PARTITIONS = 3
#: Seconds to reach a moment of the run (servers up, a DAG running) on a busy machine.
SETUP_TIMEOUT = 300.0
#: Seconds the run may take to stop after a signal before the test fails. The run itself allows its
#: processes 4 s between SIGTERM and SIGKILL; the rest is room for a busy machine.
STOP_TIMEOUT = 60.0
# A tiny table, and the migrated database copied from the cache the service tests share.
SMALL_RUN = ("--rows", "200", "--partitions", "2", "--database-cache", str(DATABASE_CACHE))


def run_script(*arguments: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *arguments, "--database-cache", str(DATABASE_CACHE)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPOSITORY,
        check=False,
    )


def layout_of(run_folder: Path) -> RunLayout:
    return RunLayout.in_folder(run_folder, REPOSITORY / "dags_examples")


def started_urls(layout: RunLayout) -> list[str]:
    """The URLs of the local Modelbit server and the receiver, as the run wrote them once they were up."""
    return [path.read_text().strip() for path in sorted(layout.logs_folder.glob("*.url"))]


def is_listening(url: str) -> bool:
    address = urlsplit(url)
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex((address.hostname or "127.0.0.1", address.port or 80)) == 0


def wait_for(condition: Callable[[], bool], what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout:.0f} s: {what}"
        time.sleep(0.2)


# -- processes, read from /proc ------------------------------------------------------------------


def process_table() -> dict[int, tuple[int, str, str]]:
    """pid -> (parent pid, state, start time) of every process."""
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            table[int(entry)] = (int(fields[1]), fields[0], fields[19])
    return table


def descendants(root: int) -> dict[int, str]:
    """The processes below ``root`` (children, theirs, ...), as pid -> start time."""
    table = process_table()
    found: dict[int, str] = {}
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        for pid, (ppid, _, started) in table.items():
            if ppid == parent and pid not in found:
                found[pid] = started
                frontier.append(pid)
    return found


def still_running(processes: dict[int, str]) -> list[int]:
    """The pids of ``processes`` still running: same start time (not a reused pid), not a zombie."""
    table = process_table()
    return sorted(
        pid
        for pid, started in processes.items()
        if pid in table and table[pid][2] == started and table[pid][1] != "Z"
    )


@dataclass
class ExamplesRun:
    """``run_examples.py`` started the way a terminal starts a command: leading its own process group."""

    layout: RunLayout
    process: subprocess.Popen[bytes]
    output: Path
    started: dict[int, str] = field(default_factory=dict)

    def output_text(self) -> str:
        return self.output.read_text(errors="replace")

    def wait_until(self, condition: Callable[[], bool], what: str) -> None:
        """Wait for ``condition`` while remembering every process the run has started so far."""

        def reached() -> bool:
            self.started.update(descendants(self.process.pid))
            assert self.process.poll() is None, f"the run ended before {what}:\n{self.output_text()[-4000:]}"
            return condition()

        wait_for(reached, what, SETUP_TIMEOUT)
        self.started.update(descendants(self.process.pid))

    def task_running(self, dag_id: str) -> bool:
        """Whether ``airflow dags test`` has started running a task of ``dag_id``."""
        log = self.layout.logs_folder / f"{dag_id}.log"
        return log.exists() and "[DAG TEST] running task" in log.read_text(errors="replace")

    def stop_with(self, send: Callable[[], None]) -> float:
        """Send the signal; the seconds until every process the run started has ended."""
        signalled = time.monotonic()
        send()
        wait_for(
            lambda: not still_running(self.started) and self.process.poll() is not None,
            "all stop",
            STOP_TIMEOUT,
        )
        return time.monotonic() - signalled


@pytest.fixture
def examples_run(tmp_path: Path) -> Iterator[Callable[..., ExamplesRun]]:
    runs: list[ExamplesRun] = []

    def start(*arguments: str) -> ExamplesRun:
        layout = layout_of(tmp_path / "run")
        output = tmp_path / "output.txt"
        with output.open("wb") as sink:
            process = subprocess.Popen(
                [sys.executable, str(SCRIPT), *SMALL_RUN, "--run-folder", str(tmp_path / "run"), *arguments],
                cwd=REPOSITORY,
                stdout=sink,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        run = ExamplesRun(layout, process, output)
        runs.append(run)
        return run

    yield start
    for run in runs:  # a failed test must not leave the run behind
        if run.process.poll() is None:
            os.killpg(run.process.pid, signal.SIGKILL)
            run.process.wait(timeout=STOP_TIMEOUT)


# -- a full run ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def finished_run(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[subprocess.CompletedProcess[str], RunLayout]:
    """One full run of every example on a small table, shared by the end-to-end assertions."""
    run_folder = tmp_path_factory.mktemp("examples") / "run"
    result = run_script(
        "--rows", str(SMALL_ROWS), "--partitions", str(SMALL_PARTITIONS), "--run-folder", str(run_folder)
    )
    return result, layout_of(run_folder)


@pytest.mark.slow
class TestEndToEnd:
    """``run_examples.py`` on a small table (about 3 minutes on two idle cores: Airflow starts per DAG)."""

    def test_exits_zero_and_reports_every_dag_as_success(
        self, finished_run: tuple[subprocess.CompletedProcess[str], RunLayout]
    ) -> None:
        result, _ = finished_run
        assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
        report = result.stdout
        summary = re.search(r"Modelbit examples: (\d+)/(\d+) DAG runs succeeded", report)
        assert summary and summary.group(1) == summary.group(2), report
        for dag_id in EXAMPLE_DAG_IDS:
            assert any(line.split()[:2] == [dag_id, "success"] for line in report.splitlines()), dag_id

    def test_output_parquet_files_hold_every_customer(
        self, finished_run: tuple[subprocess.CompletedProcess[str], RunLayout]
    ) -> None:
        """Whole-table DAGs score every customer; the partitioned DAG scores each once across its files."""
        _, layout = finished_run
        outputs = sorted((layout.data / "scores").rglob("*.parquet"))
        assert outputs, f"no Parquet output under {layout.data / 'scores'}"
        customers = pq.read_table(layout.data / "churn" / "customers.parquet").column("customer_id")
        total = sum(pq.read_metadata(path).num_rows for path in outputs)
        assert total % SMALL_ROWS == 0 and total >= SMALL_ROWS
        for path in outputs:
            table = pq.read_table(path)
            assert table.num_rows > 0, path
            assert set(table.column(table.column_names[0]).to_pylist()) <= set(customers.to_pylist())

    def test_report_previews_outputs_and_points_at_logs(
        self, finished_run: tuple[subprocess.CompletedProcess[str], RunLayout]
    ) -> None:
        result, layout = finished_run
        assert "Outputs of " in result.stdout
        assert "Logs:" in result.stdout
        for dag_id in EXAMPLE_DAG_IDS:
            assert (layout.logs_folder / f"{dag_id}.log").stat().st_size > 0

    def test_stops_everything_it_started(
        self, finished_run: tuple[subprocess.CompletedProcess[str], RunLayout]
    ) -> None:
        _, layout = finished_run
        urls = started_urls(layout)
        assert len(urls) == 2, "expected the Modelbit server and the receiver to have started"
        assert not any(is_listening(url) for url in urls)

    def test_api_key_and_secret_stay_out_of_the_report(
        self, finished_run: tuple[subprocess.CompletedProcess[str], RunLayout]
    ) -> None:
        result, _ = finished_run
        assert "demo:" not in result.stdout + result.stderr
        assert "callback_secret" not in result.stdout + result.stderr


# -- failures and interrupts ---------------------------------------------------------------------


class TestFailures:
    def test_unknown_dag_fails_clearly_and_stops_the_servers(self, tmp_path: Path) -> None:
        result = run_script("--rows", "10", "--only", "no_such_dag", "--run-folder", str(tmp_path / "run"))
        assert result.returncode == 2, result.stderr
        assert "no_such_dag" in result.stderr and "modelbit_single_inference" in result.stderr
        assert not any(is_listening(url) for url in started_urls(layout_of(tmp_path / "run")))


class TestInterrupts:
    """Stopped at any moment, the run ends everything it started, quickly, and says so with exit 130."""

    def test_sigterm_during_set_up(self, examples_run: Callable[..., ExamplesRun]) -> None:
        run = examples_run()
        run.wait_until(lambda: len(started_urls(run.layout)) == 2, "the servers are up")
        urls = started_urls(run.layout)
        seconds = run.stop_with(lambda: run.process.send_signal(signal.SIGTERM))
        assert run.process.returncode == 130, run.output_text()[-4000:]
        assert "Interrupted" in run.output_text()
        assert not any(is_listening(url) for url in urls)
        print(f"SIGTERM during set-up: stopped in {seconds:.1f} s, {len(run.started)} processes, none left")

    @pytest.mark.slow
    def test_ctrl_c_to_the_process_group_while_a_dag_runs(
        self, examples_run: Callable[..., ExamplesRun]
    ) -> None:
        """What a terminal does on Ctrl-C: SIGINT to every process of the foreground group."""
        run = examples_run("--only", "modelbit_batch_scoring")
        run.wait_until(lambda: run.task_running("modelbit_batch_scoring"), "a task of the DAG runs")
        seconds = run.stop_with(lambda: os.killpg(run.process.pid, signal.SIGINT))
        assert run.process.returncode == 130, run.output_text()[-4000:]
        print(f"Ctrl-C while a DAG runs: stopped in {seconds:.1f} s, {len(run.started)} processes, none left")

    @pytest.mark.slow
    def test_kill_9_of_the_script_while_a_dag_runs(self, examples_run: Callable[..., ExamplesRun]) -> None:
        """No code of the script runs after SIGKILL: parent-death signals and the watchdog end the rest."""
        run = examples_run("--only", "modelbit_batch_scoring")
        run.wait_until(lambda: run.task_running("modelbit_batch_scoring"), "a task of the DAG runs")
        seconds = run.stop_with(lambda: run.process.send_signal(signal.SIGKILL))
        assert run.process.returncode == -signal.SIGKILL
        print(
            f"kill -9 while a DAG runs: all gone in {seconds:.1f} s, {len(run.started)} processes, none left"
        )

    @pytest.mark.slow
    @pytest.mark.services
    def test_ctrl_c_with_the_services_running(self, examples_run: Callable[..., ExamplesRun]) -> None:
        run = examples_run("--services", "--only", "modelbit_single_inference")
        run.wait_until(
            lambda: "running modelbit_single_inference" in run.output_text(), "the DAG is triggered"
        )
        seconds = run.stop_with(lambda: os.killpg(run.process.pid, signal.SIGINT))
        assert run.process.returncode == 130, run.output_text()[-4000:]
        print(
            f"Ctrl-C with the services: stopped in {seconds:.1f} s, {len(run.started)} processes, none left"
        )


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
