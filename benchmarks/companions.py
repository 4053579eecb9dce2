"""Workloads 4 and 5, measured by their own modules and merged into this run's results.

``benchmarks/trigger_scale.py`` (1,000 callback triggers waiting in one event loop) and
``benchmarks/emulator_throughput.py`` (rows/s the local server answers) own how those figures are
taken; this module runs them at the size of the run, repeats them for a spread, and names the
figures the way ``latest.json`` does. Neither needs the shared local server.
"""

from __future__ import annotations

import json
import subprocess
from typing import Any

from benchmarks.child_process import REPOSITORY_ROOT, WorkloadFailed
from benchmarks.environment import BenchmarkEnvironment
from benchmarks.sizes import BenchmarkSize
from benchmarks.summaries import summarize

COMPANION_REPEATS = 3
_OUTPUT_TAIL_CHARS = 3_000
# (rows per request, seconds per measurement, connections) of the throughput measurement.
_THROUGHPUT_LOAD = {"full": (5_000, 10.0, 2), "tiny": (500, 1.0, 2)}
# (triggers, poll interval s, CPU measurement window s, seconds over which deliveries land).
_TRIGGER_LOAD = {"full": (1_000, 1.0, 10.0, 5.0), "tiny": (50, 0.2, 1.0, 0.5)}


def measure_emulator_throughput(size: BenchmarkSize) -> dict[str, Any]:
    """Rows per second the local server answers through ``echo``, wall clock and per server CPU-second."""
    from benchmarks import emulator_throughput

    rows_per_request, seconds, connections = _THROUGHPUT_LOAD[size.name]
    wall_rates: list[float] = []
    cpu_rates: list[float] = []
    for _round in range(min(size.repeats, COMPANION_REPEATS)):
        with emulator_throughput.emulator_process() as (url, pid):
            wall_rate, cpu_rate = emulator_throughput.measure(
                url, pid, rows_per_request, seconds, connections
            )
        wall_rates.append(wall_rate)
        if cpu_rate is not None:
            cpu_rates.append(cpu_rate)
    return {
        "rows_per_request": rows_per_request,
        "connections": connections,
        "rows_per_second": summarize(wall_rates),
        **({"rows_per_server_cpu_second": summarize(cpu_rates)} if cpu_rates else {}),
    }


def _trigger_scale_run(env: BenchmarkEnvironment, load: tuple[int, float, float, float]) -> dict[str, Any]:
    triggers, poll_interval, idle_seconds, spread = load
    output = env.scratch("trigger-scale.json")
    output.unlink(missing_ok=True)
    arguments = [
        *("--triggers", str(triggers), "--poll-interval", str(poll_interval)),
        *("--idle-seconds", str(idle_seconds), "--spread", str(spread), "--json", str(output)),
    ]
    command = [str(env.main_python), "-m", "benchmarks.trigger_scale", *arguments]
    finished = subprocess.run(
        command, cwd=REPOSITORY_ROOT, env=env.child_env(), capture_output=True, text=True, timeout=600
    )
    if finished.returncode != 0 or not output.exists():
        raise WorkloadFailed(
            f"benchmarks.trigger_scale exited with status {finished.returncode}. Its last output:\n"
            f"{(finished.stdout + finished.stderr)[-_OUTPUT_TAIL_CHARS:]}"
        )
    return json.loads(output.read_text())


def measure_triggers(env: BenchmarkEnvironment, size: BenchmarkSize) -> dict[str, Any]:
    """Memory added, CPU while waiting and delivery-to-event latency of many waiting triggers.

    Each round runs ``benchmarks/trigger_scale.py`` in a fresh process, so the memory it adds is
    the triggers' alone.
    """
    load = _TRIGGER_LOAD[size.name]
    runs = [_trigger_scale_run(env, load) for _round in range(min(size.repeats, COMPANION_REPEATS))]
    poll_interval = load[1]
    return {
        "triggers": load[0],
        "poll_interval_seconds": poll_interval,
        "memory_added_mb": summarize([run["memory_added_mb"] for run in runs]),
        "cpu_while_waiting_pct_of_one_core": summarize(
            [run["cpu_while_waiting_pct_of_one_core"] for run in runs]
        ),
        "delivery_to_event_p50_seconds": summarize([run["delivery_to_event_p50_s"] for run in runs]),
        "delivery_to_event_p99_seconds": summarize([run["delivery_to_event_p99_s"] for run in runs]),
        "p50_vs_poll_interval": summarize([run["delivery_to_event_p50_s"] / poll_interval for run in runs]),
        "p99_vs_poll_interval": summarize([run["delivery_to_event_p99_s"] / poll_interval for run in runs]),
    }
