"""Run every benchmark side by side against one local Modelbit server; print the table, write the
figures (``results/latest.json``), the table (``results/latest.md``) and the chart (``results/latest.png``).

Usually started by ``bash scripts/run_benchmarks.sh``, which first creates the benchmark-only
environment; directly: ``python -m benchmarks.run [--size full|tiny]``. See ``docs/benchmarks.md``.

``--only scoring`` (repeatable: ``--only scoring --only memory``) measures only the workloads named;
a partial run prints its table and writes ``results/partial.json`` and ``results/partial.md``, leaving
the full run's ``latest.*`` and chart as they are.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import time
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any

from airflow_provider_modelbit.emulator import run_emulator
from benchmarks.child_process import REPOSITORY_ROOT
from benchmarks.companions import measure_emulator_throughput, measure_triggers
from benchmarks.environment import BenchmarkEnvironment
from benchmarks.latency_bound import measure_latency_bound
from benchmarks.linked_results import measure_links
from benchmarks.machine import describe_machine
from benchmarks.report_table import render_table
from benchmarks.scoring import SCORING_CLIENTS, measure_memory, measure_scoring
from benchmarks.sizes import SIZES, BenchmarkSize
from benchmarks.targets import check_targets

RESULTS_DIR = REPOSITORY_ROOT / "benchmarks" / "results"
LINKS_DEPLOYMENT_FILE = REPOSITORY_ROOT / "benchmarks" / "links_deployment.py"
DEFAULT_BENCH_PYTHON = REPOSITORY_ROOT / ".venv-bench" / "bin" / "python"
#: The workloads, in the order a full run measures them; the first four share one local server.
SECTIONS = ("scoring", "memory", "links", "latency_bound", "triggers", "emulator_throughput")


def parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    parser.add_argument("--size", choices=sorted(SIZES), default="full", help="tiny keeps CI quick")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR, help="where latest.json/.png go")
    parser.add_argument("--repeats", type=int, default=None, help="rounds per measurement (default: by size)")
    parser.add_argument(
        "--bench-python",
        type=Path,
        default=DEFAULT_BENCH_PYTHON,
        help="the environment with the official client",
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=SECTIONS,
        default=None,
        help="measure only this workload (repeatable); writes partial.json/.md instead of latest.*",
    )
    return parser.parse_args(argv)


def _progress(message: str) -> None:
    print(f"[benchmarks {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _measure_section(results: dict[str, Any], name: str, measure: Callable[[], dict[str, Any]]) -> None:
    # One broken workload must not throw away the others' figures from a long run: it is recorded
    # as failed (and the run exits non-zero), the rest carries on.
    try:
        results[name] = measure()
    except Exception as error:
        _progress(f"{name} FAILED: {error}")
        results[name] = {"status": f"failed: {error}"}
        results.setdefault("failed_sections", []).append(name)


def measure_everything(
    size: BenchmarkSize, bench_python: Path, work_dir: Path, only: Collection[str] = SECTIONS
) -> dict[str, Any]:
    """The workloads named in ``only`` (every one by default) at ``size``; the figures as stored in
    ``latest.json`` (targets not yet checked)."""
    results: dict[str, Any] = {
        "size": size.name,
        "repeats": size.repeats,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": describe_machine(),
    }

    def section(name: str, message: str, measure: Callable[[], dict[str, Any]]) -> None:
        if name in only:
            _progress(message)
            _measure_section(results, name, measure)

    with run_emulator(mode="process", deployments_file=str(LINKS_DEPLOYMENT_FILE)) as emulator:
        env = BenchmarkEnvironment(Path(sys.executable), bench_python, emulator.url, work_dir)
        clients = len(SCORING_CLIENTS)
        scoring = f"batch scoring, {size.scoring_rows:,} rows, {size.repeats} round(s) of {clients} clients"
        section("scoring", scoring, lambda: measure_scoring(env, size))
        memory = f"peak memory at {size.memory_rows[0]:,} and {size.memory_rows[1]:,} rows"
        section("memory", memory, lambda: measure_memory(env, size))
        links = f"links, about {size.link_document_bytes / 1e6:,.1f} MB"
        section("links", links, lambda: measure_links(env, size))
        latency = "latency-bound: in-flight cap, per-minute quota, four tasks sharing the cap"
        section("latency_bound", latency, lambda: measure_latency_bound(env, size))
    section("triggers", "callback triggers waiting in one event loop", lambda: measure_triggers(env, size))
    section("emulator_throughput", "local server throughput", lambda: measure_emulator_throughput(size))
    return results


def _draw_chart(bench_python: Path, results_json: Path, chart_png: Path) -> None:
    command = [str(bench_python), "-m", "benchmarks.chart", str(results_json), str(chart_png)]
    subprocess.run(command, cwd=REPOSITORY_ROOT, check=True, timeout=300)


def main(argv: Sequence[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    size = SIZES[arguments.size]
    if arguments.repeats is not None:
        size = dataclasses.replace(size, repeats=arguments.repeats)
    results_dir: Path = arguments.results_dir
    only = arguments.only or SECTIONS
    results = measure_everything(size, arguments.bench_python, results_dir / "tmp" / size.name, only)
    results["targets"] = check_targets(results)
    results_dir.mkdir(parents=True, exist_ok=True)
    # A partial run has no figures for the chart's other panels, and must not replace the full run's.
    stem = "partial" if arguments.only else "latest"
    results_json = results_dir / f"{stem}.json"
    results_json.write_text(json.dumps(results, indent=2) + "\n")
    if not arguments.only:
        _draw_chart(arguments.bench_python, results_json, results_dir / "latest.png")
    table = render_table(results)
    (results_dir / f"{stem}.md").write_text(table)
    print(table)
    _progress(
        f"figures in {results_json}" + ("" if arguments.only else f", chart in {results_dir / 'latest.png'}")
    )
    return 1 if results.get("failed_sections") else 0


if __name__ == "__main__":
    sys.exit(main())
