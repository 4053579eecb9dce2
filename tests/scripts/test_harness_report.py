"""The report of an examples run (scripts/harness/report.py)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from harness.outcomes import DagOutcome, OutputFile
from harness.report import render_report


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
        report = render_report(outcomes, tmp_path / "logs")
        assert "1/2 DAG runs succeeded" in report
        assert any(line.split() == ["nightly", "success", "12.3", "2/2", "4"] for line in report.splitlines())
        assert any(line.split() == ["broken", "failed", "1.0", "1/2", "-"] for line in report.splitlines())
        assert "C3" in report and "C4" not in report  # the first rows only
        assert str(tmp_path / "broken.log") in report

    def test_results_of_a_dag_without_files_are_cut_to_the_width(self, tmp_path: Path) -> None:
        outcome = DagOutcome("single", "success", 1.0, tmp_path / "s.log", {"success": 1})
        outcome.results = [("predict", list(range(100)))]
        report = render_report([outcome], tmp_path / "logs")
        line = next(line for line in report.splitlines() if "predict" in line)
        assert line.endswith("...") and len(line.strip()) <= len("predict") + 2 + 80
