"""Workload 6: a deployment that takes time, behind Modelbit's limits, where concurrency decides throughput.

Each request holds the model ``model_seconds`` plus ``model_seconds_per_row`` per row while it
keeps its place among the requests in flight, and three situations are measured:

- ``capped``: the workspace admits 8 requests in flight (more are refused with 429); the capacity
  limit is ``8 x rows per request / latency``. One client at a time.
- ``quota``: each client's deployment has its own per-minute rate limit and no in-flight cap; the
  four clients run at once (on their own deployments and quotas), starting together shortly before
  a calendar minute ends, so each meets its quota and the next window.
- ``shared``: the in-flight cap of 8 shared by four tasks scoring at once, as four mapped tasks
  of one DAG would; the capacity limit is the same as ``capped``'s, for the four together.

Compared: the batch operator with its defaults (adaptive concurrency up to 16), with a fixed
concurrency of 3 and of 16, and the official client with its defaults (3 threads). The operators
run in this process (the four "mapped tasks" as four threads, each with its own operator, hook and
limiter); the official client runs in its own environment, one process per client. Figures come
from the local server's inspection routes: requests refused, each request's latency as the
server saw it, and how many times the model ran each row (which must be exactly 1).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from airflow_provider_modelbit.defaults import DEFAULT_BATCH_SIZE
from airflow_provider_modelbit.emulator import EmulatorClient
from benchmarks.child_process import WorkloadFailed, run_workload
from benchmarks.datasets import write_feature_table
from benchmarks.environment import BENCHMARK_CONN_ID, WORKLOAD_TIMEOUT_SECONDS, BenchmarkEnvironment
from benchmarks.links_deployment import SCORERS
from benchmarks.sizes import BenchmarkSize, LatencyBoundSize

IN_FLIGHT_CAP = 8
# Official clients start in processes of their own and need a moment to be ready: a run that has
# any starts this far ahead; operators run in threads here and are ready at once.
START_MARGIN_SECONDS = 3.0
THREAD_START_MARGIN_SECONDS = 0.2


@dataclass(frozen=True)
class Variant:
    """One way of scoring: the operator with some concurrency settings, or the official client."""

    name: str
    label: str
    options: Mapping[str, Any] = field(default_factory=dict)
    official: bool = False


VARIANTS = (
    Variant("operator_adaptive", "operator, defaults (adaptive, ceiling 16)"),
    Variant("operator_fixed_3", "operator, fixed 3", {"max_concurrency": 3, "adaptive_concurrency": False}),
    Variant(
        "operator_fixed_16", "operator, fixed 16", {"max_concurrency": 16, "adaptive_concurrency": False}
    ),
    Variant("official_client", "official client, defaults (3 threads)", official=True),
)


@dataclass(frozen=True)
class Task:
    """One client's share of a run: its deployment, table and output."""

    deployment: str
    table: Path
    output: Path


@dataclass
class LatencyBench:
    """What the runs share: the environment, the local server and the size."""

    env: BenchmarkEnvironment
    server: EmulatorClient
    size: LatencyBoundSize
    warm_up: Path

    def request_seconds(self) -> float:
        """How long the model holds a full request."""
        return self.size.model_seconds + self.size.model_seconds_per_row * DEFAULT_BATCH_SIZE

    def capacity_rows_per_second(self) -> float:
        """The in-flight cap's limit: ``8 x rows per request / latency``."""
        return IN_FLIGHT_CAP * DEFAULT_BATCH_SIZE / self.request_seconds()

    def configure(self, *, cap: int | None, per_minute: int | None = None) -> None:
        """Start afresh: no records, the cap, the model time on every scorer, quotas if asked."""
        self.server.reset()
        quotas = {
            f"quota_{number}": {"per_minute": per_minute, "deployments": [f"scorer_{number}"]}
            for number in range(1, SCORERS + 1)
        }
        self.server.configure(max_inflight_requests=cap, rate_limits=quotas if per_minute else {})
        for number in range(1, SCORERS + 1):
            self.server.set_faults(
                model_seconds=self.size.model_seconds,
                model_seconds_per_row=self.size.model_seconds_per_row,
                deployment=f"scorer_{number}",
            )

    def task(self, run: str, number: int, rows: int) -> Task:
        table = write_feature_table(self.env.scratch(f"latency-{rows}.parquet"), rows, seed=number)
        return Task(f"scorer_{number}", table, self.env.scratch(f"latency-{run}-{number}.parquet"))


# ------------------------------------------------------------------ one client


def _operator(variant: Variant, task: Task, start_at: float) -> dict[str, Any]:
    from airflow_provider_modelbit.operators.batch import ModelbitBatchInferenceOperator

    operator = ModelbitBatchInferenceOperator(
        task_id=f"score_{task.deployment}",
        deployment=task.deployment,
        input_path=str(task.table),
        output_path=str(task.output),
        modelbit_conn_id=BENCHMARK_CONN_ID,
        deferrable=False,
        **variant.options,
    )
    time.sleep(max(0.0, start_at - time.time()))
    started_at = time.time()
    summary = operator.execute(context={})
    return {
        "rows": summary["rows"],
        "started_at": started_at,
        "finished_at": time.time(),
        "concurrency": summary["concurrency"],
    }


def _official_client(bench: LatencyBench, task: Task, start_at: float) -> dict[str, Any]:
    arguments = [str(task.table), str(task.output), "--warm-up", str(bench.warm_up)]
    arguments += [
        "--url",
        bench.env.emulator_url,
        "--deployment",
        task.deployment,
        "--start-at",
        str(start_at),
    ]
    report = run_workload(
        bench.env.bench_python,
        "benchmarks.clients.official_client",
        arguments,
        bench.env.child_env(),
        WORKLOAD_TIMEOUT_SECONDS,
    )
    details = report["details"]
    return {
        "rows": report["rows"],
        "started_at": details["started_at"],
        "finished_at": details["finished_at"],
    }


def _run_at_once(
    bench: LatencyBench, jobs: list[tuple[Variant, Task]], start_at: float
) -> list[dict[str, Any]]:
    """Run every (variant, task) at ``start_at``, each in its own thread (official: its own process)."""

    def run(job: tuple[Variant, Task]) -> dict[str, Any]:
        variant, task = job
        started_at = time.time()
        try:
            if variant.official:
                return _official_client(bench, task, start_at)
            return _operator(variant, task, start_at)
        except Exception as error:  # a client that gives up is a result too: its rows are not scored
            return {
                "rows": 0,
                "started_at": started_at,
                "finished_at": time.time(),
                "failed": (error.summary() if isinstance(error, WorkloadFailed) else str(error))[:300],
            }

    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        return list(pool.map(run, jobs))


# ------------------------------------------------------------------ figures


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else 0.0


def _server_figures(bench: LatencyBench, tasks: list[Task]) -> dict[str, Any]:
    """Requests, refusals, latencies and model runs per row of ``tasks``, from the inspection routes."""
    deployments = {task.deployment for task in tasks}
    records = [
        record
        for record in bench.server.requests()
        if record["path"].split("/")[2:3] and record["path"].split("/")[2] in deployments
    ]
    answered = [record["seconds"] for record in records if record["status"] == 200]
    refused = sum(1 for record in records if record["status"] == 429)
    runs = [count for task in tasks for count in bench.server.runs(task.deployment).values()]
    return {
        "requests": len(records),
        "refused": refused,
        "refused_pct": 100.0 * refused / len(records) if records else 0.0,
        "rows_run": len(runs),
        "runs_per_row_max": max(runs, default=0),
        "runs_per_row_min": min(runs, default=0),
        "latency_p50_seconds": _percentile(answered, 0.5),
        "latency_p99_seconds": _percentile(answered, 0.99),
    }


def _figures(bench: LatencyBench, tasks: list[Task], reports: list[dict[str, Any]]) -> dict[str, Any]:
    rows = sum(report["rows"] for report in reports)
    # Runs per row are counted over the rows the clients scored: a client that failed scored none.
    # From the first start (a client late to start on a loaded machine is not counted against it).
    seconds = max(report["finished_at"] for report in reports) - min(
        report["started_at"] for report in reports
    )
    figures = _server_figures(bench, tasks)
    figures.update(
        rows=rows,
        seconds=round(seconds, 2),
        rows_per_second=rows / seconds,
        rows_not_run_exactly_once=_not_run_once(bench, tasks, rows),
        capacity_fraction=rows / seconds / bench.capacity_rows_per_second(),
        load=os.getloadavg()[0],
    )
    concurrency = [report["concurrency"] for report in reports if report.get("concurrency")]
    if concurrency:
        figures["concurrency_final"] = [summary["final"] for summary in concurrency]
    failures = [report["failed"] for report in reports if "failed" in report]
    if failures:
        figures["failed"] = f"{len(failures)} of {len(reports)} failed: {failures[0]}"
    print(f"[latency-bound] {_summary_line(figures)}", file=sys.stderr, flush=True)
    return figures


def _summary_line(figures: Mapping[str, Any]) -> str:
    fraction = figures.get("capacity_fraction")
    return (
        f"{figures['rows']:,} rows in {figures['seconds']} s, "
        f"{'' if fraction is None else f'{fraction:.2f} of capacity, '}"
        f"{figures['refused']} of {figures['requests']} refused, runs per row "
        f"{figures['runs_per_row_min']}-{figures['runs_per_row_max']}, "
        f"final {figures.get('concurrency_final')}"
        f"{', ' + figures['failed'] if 'failed' in figures else ''}"
    )


def _not_run_once(bench: LatencyBench, tasks: list[Task], rows: int) -> int:
    runs = [count for task in tasks for count in bench.server.runs(task.deployment).values()]
    return sum(1 for count in runs if count != 1) + max(0, rows - len(runs))


# ------------------------------------------------------------------ the three situations


def _measure_capped(bench: LatencyBench) -> dict[str, Any]:
    figures = {}
    for variant in VARIANTS:
        bench.configure(cap=IN_FLIGHT_CAP)
        task = bench.task("capped", 1, bench.size.capped_rows)
        start_at = time.time() + _start_margin([variant])
        reports = _run_at_once(bench, [(variant, task)], start_at)
        figures[variant.name] = _figures(bench, [task], reports)
    return figures


def _measure_shared(bench: LatencyBench) -> dict[str, Any]:
    figures = {}
    for variant in _variants(bench):
        bench.configure(cap=IN_FLIGHT_CAP)
        tasks = [bench.task("shared", number, bench.size.shared_rows) for number in range(1, SCORERS + 1)]
        start_at = time.time() + 2 * _start_margin([variant])
        reports = _run_at_once(bench, [(variant, task) for task in tasks], start_at)
        figures[variant.name] = _figures(bench, tasks, reports)
    return figures


def _measure_quota(bench: LatencyBench) -> dict[str, Any]:
    """The four variants at once, each on its own deployment and quota, from shortly before a minute ends."""
    bench.configure(cap=None, per_minute=bench.size.quota_per_minute)
    tasks = [bench.task("quota", number, bench.size.quota_rows) for number in range(1, SCORERS + 1)]
    variants = _variants(bench)
    start_at = _next_start(bench.size.quota_seconds_before_minute, 2 * _start_margin(variants))
    reports = _run_at_once(bench, list(zip(variants, tasks, strict=False)), start_at)
    figures = {}
    for variant, task, report in zip(variants, tasks, reports, strict=False):
        figures[variant.name] = _figures(bench, [task], [report])
        del figures[variant.name]["capacity_fraction"]  # the quota, not the cap, bounds this run
    return figures


def _variants(bench: LatencyBench) -> tuple[Variant, ...]:
    """Every variant, or only the defaults where the size keeps the quota and shared runs short."""
    return VARIANTS if bench.size.compare_everywhere else VARIANTS[:1]


def _start_margin(variants: list[Variant] | tuple[Variant, ...]) -> float:
    return (
        START_MARGIN_SECONDS if any(variant.official for variant in variants) else THREAD_START_MARGIN_SECONDS
    )


def _next_start(seconds_before_minute: float | None, margin: float) -> float:
    """A start time ``margin`` ahead or later, ``seconds_before_minute`` before a calendar minute ends."""
    earliest = time.time() + margin
    if seconds_before_minute is None:
        return earliest
    start = (earliest // 60 + 1) * 60 - seconds_before_minute
    return start if start >= earliest else start + 60


# ------------------------------------------------------------------ the workload


@contextmanager
def _in_process_clients(env: BenchmarkEnvironment) -> Iterator[None]:
    """The benchmark connection for operators run in this process; their per-request logs kept quiet."""
    saved = dict(os.environ)
    os.environ.update(env.child_env())
    quiet = logging.getLogger("airflow.task")
    level = quiet.level
    quiet.setLevel(logging.WARNING)
    try:
        yield
    finally:
        quiet.setLevel(level)
        os.environ.clear()
        os.environ.update(saved)


def _ratio(figures: Mapping[str, Any], run: str, figure: str) -> float:
    return figures[run]["operator_adaptive"][figure] / figures[run]["official_client"][figure]


def measure_latency_bound(env: BenchmarkEnvironment, size: BenchmarkSize) -> dict[str, Any]:
    """Every variant in the three situations; the figures the targets read, and the machine's load."""
    latency = size.latency_bound
    warm_up = write_feature_table(env.scratch("features-1000.parquet"), 1_000, seed=11)
    figures: dict[str, Any] = {
        "model_seconds": latency.model_seconds,
        "model_seconds_per_row": latency.model_seconds_per_row,
        "rows_per_request": DEFAULT_BATCH_SIZE,
        "in_flight_cap": IN_FLIGHT_CAP,
        "quota_per_minute": latency.quota_per_minute,
        "load_before": os.getloadavg()[0],
    }
    with EmulatorClient(env.emulator_url) as server, _in_process_clients(env):
        bench = LatencyBench(env, server, latency, warm_up)
        figures["capacity_rows_per_second"] = bench.capacity_rows_per_second()
        _warm_up_operator(bench)
        steps: tuple[tuple[str, Callable[[LatencyBench], dict[str, Any]]], ...] = (
            ("capped", _measure_capped),
            ("quota", _measure_quota),
            ("shared", _measure_shared),
        )
        for name, measure in steps:
            figures[name] = measure(bench)
        server.reset()
    figures["adaptive_vs_official_client_capped"] = _ratio(figures, "capped", "rows_per_second")
    figures["rows_not_run_exactly_once"] = sum(
        run["rows_not_run_exactly_once"]
        for name in ("capped", "quota", "shared")
        for run in figures[name].values()
    )
    figures["load_after"] = os.getloadavg()[0]
    return figures


def _warm_up_operator(bench: LatencyBench) -> None:
    """Import and connect once, unmeasured, as every other workload does before its measured run."""
    bench.configure(cap=None)
    task = Task("echo", bench.warm_up, bench.env.scratch("latency-warm-up.parquet"))
    _operator(VARIANTS[0], task, time.time())


def main(argv: list[str] | None = None) -> int:
    """Run this workload alone and print its table and targets (the full run is ``benchmarks.run``)."""
    import argparse
    import json

    from airflow_provider_modelbit.emulator import run_emulator
    from benchmarks.report_table import latency_bound_lines
    from benchmarks.run import DEFAULT_BENCH_PYTHON, LINKS_DEPLOYMENT_FILE, RESULTS_DIR
    from benchmarks.sizes import SIZES
    from benchmarks.targets import LATENCY_BOUND_TARGETS

    parser = argparse.ArgumentParser(prog="python -m benchmarks.latency_bound", description=__doc__)
    parser.add_argument("--size", choices=sorted(SIZES), default="full")
    parser.add_argument("--bench-python", type=Path, default=DEFAULT_BENCH_PYTHON)
    arguments = parser.parse_args(argv)
    work_dir = RESULTS_DIR / "tmp" / arguments.size
    with run_emulator(mode="process", deployments_file=str(LINKS_DEPLOYMENT_FILE)) as emulator:
        env = BenchmarkEnvironment(Path(sys.executable), arguments.bench_python, emulator.url, work_dir)
        figures = measure_latency_bound(env, SIZES[arguments.size])
    results = {"latency_bound": figures}
    print(json.dumps(figures, indent=2, default=str), file=sys.stderr)
    print("\n".join(latency_bound_lines(figures)))
    print("\n| target | wanted | measured | |\n|---|---:|---:|---|")
    for target in (target.check(results) for target in LATENCY_BOUND_TARGETS):
        print(
            f"| {target['name']} | {target['target']} | {target['measured']:,.2f}{target['unit']} | "
            f"**{target['verdict']}** |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
