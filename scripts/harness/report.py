"""The report of an examples run: each DAG's state, duration and rows, the outputs' first rows, the logs."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from pathlib import Path

from harness.outcomes import DagOutcome, OutputFile

PREVIEW_ROWS = 3
RESULT_WIDTH = 80


def render_report(outcomes: Sequence[DagOutcome], logs_folder: Path) -> str:
    """The whole report; ``logs_folder`` is where the servers' and Airflow's own logs are."""
    succeeded = sum(outcome.succeeded for outcome in outcomes)
    lines = ["", f"Modelbit examples: {succeeded}/{len(outcomes)} DAG runs succeeded", ""]
    lines += render_summary(outcomes)
    for outcome in outcomes:
        if outcome.outputs:
            lines += ["", f"Outputs of {outcome.dag_id}:"]
            for output in outcome.outputs:
                lines += [f"  {line}" for line in render_output_preview(output)]
        elif outcome.results:
            lines += ["", f"Results of {outcome.dag_id} (XCom):"]
            lines += [f"  {line}" for line in render_results(outcome)]
    lines += render_placements(outcomes)
    lines += ["", "Logs:"]
    lines += [f"  {outcome.dag_id:<32} {display_path(str(outcome.log_file))}" for outcome in outcomes]
    lines.append(f"  {'servers and Airflow':<32} {display_path(str(logs_folder))}/")
    return "\n".join(lines)


def render_summary(outcomes: Sequence[DagOutcome]) -> list[str]:
    lines = [f"{'DAG':<32} {'STATE':<9} {'SECONDS':>7} {'TASKS OK':>8} {'ROWS SCORED':>11}"]
    for outcome in outcomes:
        done = outcome.task_states.get("success", 0)
        total = sum(outcome.task_states.values())
        rows = "-" if outcome.rows_scored is None else f"{outcome.rows_scored:,}"
        tasks = f"{done}/{total}" if total else "-"
        lines.append(f"{outcome.dag_id:<32} {outcome.state:<9} {outcome.seconds:>7.1f} {tasks:>8} {rows:>11}")
    return lines


def render_placements(outcomes: Sequence[DagOutcome]) -> list[str]:
    """Which worker ran each mapped task, which triggerer each deferred task's trigger (production shape)."""
    lines: list[str] = []
    for outcome in outcomes:
        mapped = [(task, host) for task, host in outcome.workers if task.endswith("]")]
        if mapped:
            hosts = sorted({host for _, host in mapped})
            lines += ["", f"Workers of the mapped tasks of {outcome.dag_id} ({len(hosts)} workers):"]
            lines += [f"  {task:<28} {host}" for task, host in mapped]
        if outcome.triggerers:
            lines += ["", f"Triggerers of the deferred tasks of {outcome.dag_id}:"]
            lines += [f"  {task:<28} {host}" for task, host in outcome.triggerers]
    return lines


def render_output_preview(output: OutputFile) -> list[str]:
    """The output's location, row count and first rows, read back from the Parquet file."""
    lines = [f"{output.task}: {display_path(output.path)} ({output.rows:,} rows)"]
    local = output.path.removeprefix("file://")
    if not Path(local).is_file():
        return [*lines, "    (not a local file; not previewed)"]
    import pyarrow.parquet as pq

    head = pq.ParquetFile(local).read_row_group(0).slice(0, PREVIEW_ROWS).to_pandas()
    preview = head.to_string(index=False, max_colwidth=40)
    return [*lines, *(f"    {line}" for line in preview.splitlines())]


def render_results(outcome: DagOutcome) -> list[str]:
    """Return values of a DAG that wrote no files, one line each, cut to the terminal width."""
    width = max(len(task) for task, _ in outcome.results)
    lines = []
    for task, value in outcome.results:
        text = json.dumps(value, default=str)
        text = text if len(text) <= RESULT_WIDTH else text[: RESULT_WIDTH - 3] + "..."
        lines.append(f"{task:<{width}}  {text}")
    return lines


def display_path(path: str) -> str:
    with contextlib.suppress(ValueError):
        return str(Path(path.removeprefix("file://")).relative_to(Path.cwd()))
    return path


__all__ = ["render_report"]
