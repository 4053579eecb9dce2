"""How ModelbitCallbackTrigger scales: 1,000 triggers waiting at once in one event loop.

Measures the memory the waiting triggers add (RSS), the CPU the loop uses while they wait,
and the time from a delivery landing in the callback store to its trigger's event (p50/p99).

    python benchmarks/trigger_scale.py [--triggers 1000] [--poll-interval 1.0] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import statistics
import tempfile
import threading
import time
from typing import Any

from airflow_provider_modelbit.callbacks.store import CallbackStore
from airflow_provider_modelbit.triggers.callback import ModelbitCallbackTrigger


def rss_bytes() -> int:
    """Resident set size of this process, from /proc (Linux)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def _wait_for_event(trigger: ModelbitCallbackTrigger, seen_at: dict[str, float]) -> None:
    async for event in trigger.run():
        seen_at[event.payload["job_id"]] = time.monotonic()


def _deliver_all(
    store: CallbackStore, job_ids: list[str], spread: float, landed_at: dict[str, float]
) -> None:
    """Write one delivery per job at random moments over ``spread`` seconds, as the receiver would."""
    schedule = sorted((random.uniform(0, spread), job_id) for job_id in job_ids)
    started = time.monotonic()
    for offset, job_id in schedule:
        time.sleep(max(0.0, started + offset - time.monotonic()))
        store.put_delivery(job_id, 0, f"batch-{job_id}", [b'{"data": 1}'])
        landed_at[job_id] = time.monotonic()


async def measure(
    store: CallbackStore, triggers: int, poll_interval: float, idle_seconds: float, spread: float
) -> dict[str, Any]:
    job_ids = [f"job-{n}" for n in range(triggers)]
    gc.collect()
    rss_before = rss_bytes()
    seen_at: dict[str, float] = {}
    deadline = time.time() + 3600
    waiting = [
        asyncio.create_task(
            _wait_for_event(
                ModelbitCallbackTrigger(
                    job_id=job_id, chunks=[0], store_location=store.location,
                    deadline=deadline, poll_interval=poll_interval,
                ),
                seen_at,
            )
        )
        for job_id in job_ids
    ]  # fmt: skip
    await asyncio.sleep(2 * poll_interval)  # every trigger registered and scanned at least once
    gc.collect()
    rss_waiting = rss_bytes()
    cpu_started, wall_started = time.process_time(), time.monotonic()
    await asyncio.sleep(idle_seconds)
    cpu_used = time.process_time() - cpu_started
    wall = time.monotonic() - wall_started

    landed_at: dict[str, float] = {}
    writer = threading.Thread(target=_deliver_all, args=(store, job_ids, spread, landed_at))
    writer.start()
    await asyncio.wait_for(asyncio.gather(*waiting), timeout=spread + 30 * poll_interval + 60)
    writer.join()
    latencies = sorted(seen_at[job_id] - landed_at[job_id] for job_id in job_ids)
    return {
        "triggers": triggers,
        "poll_interval_s": poll_interval,
        "memory_added_mb": round((rss_waiting - rss_before) / 2**20, 2),
        "cpu_while_waiting_pct_of_one_core": round(100 * cpu_used / wall, 2),
        "idle_window_s": round(wall, 2),
        "delivery_to_event_p50_s": round(statistics.median(latencies), 3),
        "delivery_to_event_p99_s": round(latencies[int(0.99 * (len(latencies) - 1))], 3),
        "delivery_to_event_max_s": round(latencies[-1], 3),
    }


def main() -> None:
    # One start and one end line per trigger would drown the figures.
    from airflow.sdk.log import configure_logging

    configure_logging(log_level="WARNING")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--triggers", type=int, default=1000)
    parser.add_argument("--poll-interval", type=float, default=1.0)
    parser.add_argument("--idle-seconds", type=float, default=10.0, help="CPU measurement window")
    parser.add_argument("--spread", type=float, default=5.0, help="seconds over which deliveries land")
    parser.add_argument("--json", dest="json_path", default=None, help="also write the figures here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="modelbit-trigger-scale-") as folder:
        figures = asyncio.run(
            measure(CallbackStore(folder), args.triggers, args.poll_interval, args.idle_seconds, args.spread)
        )
    for name, value in figures.items():
        print(f"{name:36} {value}")
    targets = {
        "memory < 50 MB": figures["memory_added_mb"] < 50,
        "CPU < 5% of one core": figures["cpu_while_waiting_pct_of_one_core"] < 5,
        "p99 < 2x poll interval": figures["delivery_to_event_p99_s"] < 2 * args.poll_interval,
    }
    for target, met in targets.items():
        print(f"{target:36} {'met' if met else 'NOT met'}")
    if args.json_path:
        with open(args.json_path, "w") as out:
            json.dump({**figures, "targets": targets}, out, indent=2)


if __name__ == "__main__":
    main()
