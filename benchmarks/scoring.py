"""Workloads 1 and 2: batch scoring side by side with the alternatives, and peak memory as the table grows.

Every client runs in its own process against the same local server, one client after the other
within each round, so that all of them see the same machine conditions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.child_process import run_workload
from benchmarks.clients.report import SCORING_CALL_SECONDS
from benchmarks.datasets import write_feature_table
from benchmarks.environment import BENCHMARK_CONN_ID, WORKLOAD_TIMEOUT_SECONDS, BenchmarkEnvironment
from benchmarks.sizes import BenchmarkSize
from benchmarks.summaries import paired_ratios, summarize

# Rows per request for the floor: the same as the operator's default, so both do the same JSON work.
FLOOR_BATCH_SIZE = 3_000
MEMORY_REPEATS = 3
WARM_UP_ROWS = 1_000


@dataclass(frozen=True)
class ScoringClient:
    """One way of scoring the table: its module, and which environment runs it."""

    name: str
    module: str
    uses_bench_python: bool = False


SCORING_CLIENTS = (
    ScoringClient("operator", "benchmarks.clients.operator_batch"),
    ScoringClient("hook_dataframe", "benchmarks.clients.hook_dataframe"),
    ScoringClient("official_client", "benchmarks.clients.official_client", uses_bench_python=True),
    ScoringClient("per_row_loop", "benchmarks.clients.per_row_loop"),
    ScoringClient("floor", "benchmarks.clients.floor"),
)


def _arguments(
    client: ScoringClient, env: BenchmarkEnvironment, size: BenchmarkSize, table: Path
) -> list[str]:
    output = str(env.scratch(f"scored-{client.name}.parquet"))
    common = [str(table), output, "--warm-up", str(warm_up_table(env))]
    if client.name in ("operator", "hook_dataframe"):
        return [*common, "--conn-id", BENCHMARK_CONN_ID]
    if client.name == "official_client":
        return [*common, "--url", env.emulator_url]
    if client.name == "per_row_loop":
        url = f"{env.emulator_url.rstrip('/')}/v1/echo/latest"
        return [*common, "--url", url, "--rows", str(size.per_row_sample)]
    return [*common, "--batch-size", str(FLOOR_BATCH_SIZE)]


def warm_up_table(env: BenchmarkEnvironment) -> Path:
    """The small table every client scores once, unmeasured, before its measured run."""
    return write_feature_table(env.scratch(f"features-{WARM_UP_ROWS}.parquet"), WARM_UP_ROWS, seed=11)


def _run_client(
    client: ScoringClient, env: BenchmarkEnvironment, size: BenchmarkSize, table: Path
) -> dict[str, Any]:
    python = env.bench_python if client.uses_bench_python else env.main_python
    arguments = _arguments(client, env, size, table)
    return run_workload(python, client.module, arguments, env.child_env(), WORKLOAD_TIMEOUT_SECONDS)


def _client_figures(reports: list[dict[str, Any]]) -> dict[str, Any]:
    figures = {
        "rows_measured": reports[0]["rows"],
        "rows_per_second": summarize([r["rows"] / r["wall_seconds"] for r in reports]),
        "cpu_seconds_per_million_rows": summarize([r["cpu_seconds"] / r["rows"] * 1e6 for r in reports]),
        "peak_rss_bytes": summarize([r["peak_rss_bytes"] for r in reports]),
    }
    if all(SCORING_CALL_SECONDS in r["details"] for r in reports):
        # A DataFrame client's scoring call alone: DataFrame in, rows out, no Parquet either side.
        call_rates = [r["rows"] / r["details"][SCORING_CALL_SECONDS] for r in reports]
        figures["scoring_call_rows_per_second"] = summarize(call_rates)
    return figures


def _ratios(figures: dict[str, dict[str, Any]]) -> dict[str, Any]:
    def runs(client: str, figure: str) -> list[float]:
        return figures[client][figure]["runs"]

    return {
        "operator_vs_official_client_rows_per_second": paired_ratios(
            runs("operator", "rows_per_second"), runs("official_client", "rows_per_second")
        ),
        "hook_dataframe_vs_official_client_rows_per_second": paired_ratios(
            runs("hook_dataframe", "rows_per_second"), runs("official_client", "rows_per_second")
        ),
        "hook_dataframe_vs_official_client_scoring_call_rows_per_second": paired_ratios(
            runs("hook_dataframe", "scoring_call_rows_per_second"),
            runs("official_client", "scoring_call_rows_per_second"),
        ),
        "operator_vs_per_row_loop_rows_per_second": paired_ratios(
            runs("operator", "rows_per_second"), runs("per_row_loop", "rows_per_second")
        ),
        "operator_vs_floor_cpu_per_row": paired_ratios(
            runs("operator", "cpu_seconds_per_million_rows"), runs("floor", "cpu_seconds_per_million_rows")
        ),
    }


def measure_scoring(env: BenchmarkEnvironment, size: BenchmarkSize) -> dict[str, Any]:
    """Score the same table with every client, ``size.repeats`` rounds; figures, spreads and ratios."""
    table = write_feature_table(env.scratch(f"features-{size.scoring_rows}.parquet"), size.scoring_rows)
    reports: dict[str, list[dict[str, Any]]] = {client.name: [] for client in SCORING_CLIENTS}
    for _round in range(size.repeats):
        for client in SCORING_CLIENTS:
            reports[client.name].append(_run_client(client, env, size, table))
    figures = {name: _client_figures(client_reports) for name, client_reports in reports.items()}
    return {"rows": size.scoring_rows, "clients": figures, "ratios": _ratios(figures)}


def measure_memory(env: BenchmarkEnvironment, size: BenchmarkSize) -> dict[str, Any]:
    """Peak RSS of the operator's code path at two table sizes, each run in a fresh process."""
    small_rows, large_rows = size.memory_rows
    tables = [write_feature_table(env.scratch(f"features-{rows}.parquet"), rows) for rows in size.memory_rows]
    peaks: dict[int, list[float]] = {small_rows: [], large_rows: []}
    baselines: list[float] = []
    for _round in range(min(size.repeats, MEMORY_REPEATS)):
        for rows, table in zip(size.memory_rows, tables, strict=True):
            report = _run_client(SCORING_CLIENTS[0], env, size, table)
            peaks[rows].append(report["peak_rss_bytes"])
            baselines.append(report["baseline_rss_bytes"])
    return {
        "small_rows": small_rows,
        "large_rows": large_rows,
        "baseline_rss_bytes": summarize(baselines),
        "peak_rss_bytes_small": summarize(peaks[small_rows]),
        "peak_rss_bytes_large": summarize(peaks[large_rows]),
        "large_vs_small_peak_rss": paired_ratios(peaks[large_rows], peaks[small_rows]),
    }
