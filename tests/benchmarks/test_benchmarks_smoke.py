"""
The benchmarks keep working: ``bash scripts/run_benchmarks.sh --size tiny`` runs every workload
and writes every figure, the chart and the table; targets are judged as the docs describe.

Timings are not judged here — the tiny size measures nothing meaningful; it proves the machinery.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks.child_process import WorkloadFailed, run_workload
from benchmarks.summaries import paired_ratios, summarize
from benchmarks.targets import TARGETS, Target, check_targets

REPOSITORY_ROOT = Path(__file__).resolve().parents[2]
TINY_RUN_TIMEOUT_SECONDS = 900

EVERY_FIGURE = [
    ("machine", "cpu_model"),
    ("machine", "cores"),
    ("machine", "python"),
    ("machine", "airflow"),
    *[
        ("scoring", "clients", client, figure)
        for client in ("operator", "hook_dataframe", "official_client", "per_row_loop", "floor")
        for figure in ("rows_per_second", "cpu_seconds_per_million_rows", "peak_rss_bytes")
    ],
    ("scoring", "ratios", "operator_vs_official_client_rows_per_second"),
    ("scoring", "ratios", "hook_dataframe_vs_official_client_rows_per_second"),
    *[
        ("scoring", "clients", client, "scoring_call_rows_per_second")
        for client in ("hook_dataframe", "official_client")
    ],
    ("scoring", "ratios", "hook_dataframe_vs_official_client_scoring_call_rows_per_second"),
    ("scoring", "ratios", "operator_vs_per_row_loop_rows_per_second"),
    ("scoring", "ratios", "operator_vs_floor_cpu_per_row"),
    ("memory", "peak_rss_bytes_small"),
    ("memory", "peak_rss_bytes_large"),
    ("memory", "large_vs_small_peak_rss"),
    ("links", "document_bytes"),
    ("links", "streamed", "seconds"),
    ("links", "streamed", "peak_rss_above_baseline_bytes"),
    ("links", "whole", "seconds"),
    ("links", "whole", "peak_rss_above_baseline_bytes"),
    ("triggers", "memory_added_mb"),
    ("triggers", "cpu_while_waiting_pct_of_one_core"),
    ("triggers", "delivery_to_event_p50_seconds"),
    ("triggers", "delivery_to_event_p99_seconds"),
    ("emulator_throughput", "rows_per_second"),
    *[target.figure for target in TARGETS],
]


def _figure(results: dict[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = results
    for key in path:
        assert isinstance(value, dict) and key in value, f"latest.json lacks {'.'.join(path)}"
        value = value[key]
    return value


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path, str]:
    """One tiny run through the documented command: the JSON, the results folder and the printed table."""
    results_dir = tmp_path_factory.mktemp("benchmark-results")
    env = {**os.environ, "VENV": sys.prefix}
    finished = subprocess.run(
        ["bash", "scripts/run_benchmarks.sh", "--size", "tiny", "--results-dir", str(results_dir)],
        cwd=REPOSITORY_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=TINY_RUN_TIMEOUT_SECONDS,
    )
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    return json.loads((results_dir / "latest.json").read_text()), results_dir, finished.stdout


@pytest.mark.slow
@pytest.mark.timeout(TINY_RUN_TIMEOUT_SECONDS + 60)
class TestTinyRun:
    @pytest.mark.parametrize("path", EVERY_FIGURE, ids=".".join)
    def test_the_json_holds_the_figure(
        self, tiny_run: tuple[dict[str, Any], Path, str], path: tuple[str, ...]
    ):
        """Every figure the issue asks for is in latest.json, with a number (a summary's median counts)."""
        value = _figure(tiny_run[0], path)
        number = value["median"] if isinstance(value, dict) and "median" in value else value
        assert isinstance(number, int | float | str) and number != ""

    def test_every_target_is_judged(self, tiny_run: tuple[dict[str, Any], Path, str]):
        """Each target has a measured value and a PASS or MISS verdict, none left unmeasured."""
        targets = tiny_run[0]["targets"]
        assert [target["name"] for target in targets] == [target.name for target in TARGETS]
        assert {target["verdict"] for target in targets} <= {"PASS", "MISS"}

    def test_the_chart_is_a_png(self, tiny_run: tuple[dict[str, Any], Path, str]):
        assert (tiny_run[1] / "latest.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    def test_the_table_prints_every_target_with_its_verdict(self, tiny_run: tuple[dict[str, Any], Path, str]):
        table = tiny_run[2]
        for target in tiny_run[0]["targets"]:
            assert f"| {target['name']} | {target['target']} |" in table
        assert "Machine:" in table


class TestTarget:
    SCORING = {"scoring": {"ratios": {"speedup": {"median": 2.5, "low": 1.0, "high": 3.0, "runs": []}}}}

    @pytest.mark.parametrize(
        ("comparison", "limit", "verdict"),
        [
            (">=", 2.5, "PASS"),
            (">=", 2.6, "MISS"),
            ("<=", 2.5, "PASS"),
            ("<=", 2.4, "MISS"),
            ("<", 2.5, "MISS"),
            ("<", 2.6, "PASS"),
        ],
    )
    def test_the_median_is_compared_with_the_limit(self, comparison: str, limit: float, verdict: str):
        target = Target("speed-up", ("scoring", "ratios", "speedup"), comparison, limit, "x")
        checked = target.check(self.SCORING)
        assert (checked["measured"], checked["verdict"]) == (2.5, verdict)

    def test_a_scale_converts_the_stored_figure_to_the_unit(self):
        target = Target("memory", ("links", "bytes"), "<=", 250, " MB", scale=1e-6)
        checked = target.check({"links": {"bytes": 260_000_000}})
        assert (checked["measured"], checked["verdict"], checked["target"]) == (260.0, "MISS", "<= 250 MB")

    def test_an_absent_figure_is_not_measured_rather_than_passed(self):
        checked = Target("speed-up", ("scoring", "absent"), ">=", 2, "x").check(self.SCORING)
        assert (checked["measured"], checked["verdict"]) == (None, "NOT MEASURED")

    def test_check_targets_judges_every_target_in_order(self):
        assert [checked["name"] for checked in check_targets({})] == [target.name for target in TARGETS]


class TestSummaries:
    def test_summarize_keeps_median_spread_and_runs(self):
        assert summarize([3.0, 1.0, 2.0]) == {"median": 2.0, "low": 1.0, "high": 3.0, "runs": [3.0, 1.0, 2.0]}

    def test_summarize_refuses_an_empty_figure(self):
        with pytest.raises(ValueError, match="no runs"):
            summarize([])

    def test_ratios_pair_runs_of_the_same_round(self):
        """Round by round, not median over median: a slow round slows both clients of that round."""
        ratios = paired_ratios([10.0, 40.0, 20.0], [5.0, 10.0, 20.0])
        assert ratios["runs"] == [2.0, 4.0, 1.0]
        assert ratios["median"] == 2.0

    def test_ratios_refuse_unpaired_runs(self):
        with pytest.raises(ValueError, match="pair"):
            paired_ratios([1.0], [1.0, 2.0])


class TestOnly:
    """``--only`` measures the named workloads alone, beside (never over) the full run's results."""

    @pytest.mark.timeout(300)
    def test_only_the_named_workload_is_measured_into_partial_results(self, tmp_path: Path):
        from benchmarks.run import main

        status = main(["--size", "tiny", "--only", "emulator_throughput", "--results-dir", str(tmp_path)])
        results = json.loads((tmp_path / "partial.json").read_text())
        assert status == 0
        assert results["emulator_throughput"]["rows_per_second"]["median"] > 0
        assert not {"scoring", "memory", "links", "latency_bound", "triggers"} & results.keys()
        verdicts = {target["name"]: target["verdict"] for target in results["targets"]}
        assert verdicts["hook DataFrame path (DataFrame in, rows out): rows/s vs the official client"] == (
            "NOT MEASURED"
        )
        assert (tmp_path / "partial.md").exists()
        assert not (tmp_path / "latest.json").exists() and not (tmp_path / "latest.png").exists()

    def test_an_unknown_workload_is_refused(self, capsys: pytest.CaptureFixture[str]):
        from benchmarks.run import parse_arguments

        with pytest.raises(SystemExit):
            parse_arguments(["--only", "scorng"])
        assert "invalid choice: 'scorng'" in capsys.readouterr().err


class TestFailedWorkload:
    def test_a_failed_client_is_one_line_naming_its_last_error(self):
        """A client process that dies is named in one table cell by its last line, not its whole output."""
        with pytest.raises(WorkloadFailed) as failed:
            run_workload(Path(sys.executable), "benchmarks.no_such_workload", [], dict(os.environ), 60)
        summary = failed.value.summary()
        assert "\n" not in summary
        assert summary.startswith("Benchmark workload benchmarks.no_such_workload exited with status 1")
        assert summary.endswith("No module named benchmarks.no_such_workload")


def test_the_floor_writes_parquet_as_the_operator_does() -> None:
    from airflow_provider_modelbit.io import result_writer
    from benchmarks.clients import floor

    assert floor.DICTIONARY_PAGE_BYTES == result_writer.DICTIONARY_PAGE_BYTES
