"""Where the hook's DataFrame path spends its CPU: ``ModelbitHook.get_inference`` on a table, profiled.

Scores a ``ROWS`` x 8 feature table (the scoring benchmark's) with the hook's defaults against the
local server's ``echo`` deployment, run in its own process so its CPU is not counted, under
:mod:`cProfile`. The requests run in the hook's worker threads, which a profiler of the calling
thread does not see, so each thread's work (``ModelbitHook._infer_chunk``) is profiled on its own
and the profiles are added to the calling thread's. Each profiler counts its thread's CPU time
(:func:`time.thread_time`), not wall time: waiting for answers or for the GIL costs no CPU, and CPU
per row is what the targets judge.

Usage: ``python -m benchmarks.profile_hook_dataframe [--rows 200000] [--top 25]``
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

CONN_ID = "modelbit_profile"


def _profiled_threads(profiles: list[cProfile.Profile]) -> None:
    """Profile every chunk the hook's worker threads score, each call with its own profiler."""
    from airflow_provider_modelbit.hooks.modelbit import ModelbitHook

    original: Callable[..., Any] = ModelbitHook._infer_chunk
    lock = threading.Lock()

    def infer_chunk(*args: Any, **kwargs: Any) -> Any:
        profile = cProfile.Profile(time.thread_time)
        profile.enable()
        try:
            return original(*args, **kwargs)
        finally:
            profile.disable()
            with lock:
                profiles.append(profile)

    ModelbitHook._infer_chunk = infer_chunk  # type: ignore[method-assign]


def profile(rows: int, top: int) -> str:
    """Score the table once unmeasured, then once profiled; the report as text."""
    import pandas as pd

    from airflow_provider_modelbit.emulator import run_emulator
    from airflow_provider_modelbit.hooks.modelbit import ModelbitHook
    from benchmarks.datasets import write_feature_table

    with tempfile.TemporaryDirectory() as scratch, run_emulator(mode="process") as emulator:
        connection = json.dumps({"conn_type": "modelbit", "host": emulator.url})
        os.environ[f"AIRFLOW_CONN_{CONN_ID.upper()}"] = connection
        frame = pd.read_parquet(write_feature_table(Path(scratch) / "features.parquet", rows))
        hook = ModelbitHook(CONN_ID)
        hook.get_inference("echo", frame.head(1_000))  # connection set-up and lazy imports
        threads: list[cProfile.Profile] = []
        _profiled_threads(threads)
        main = cProfile.Profile(time.thread_time)
        started, cpu_started = time.perf_counter(), time.process_time()
        main.enable()
        scored = hook.get_inference("echo", frame)
        main.disable()
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    out = io.StringIO()
    print(
        f"{len(scored):,} rows in {wall:.2f} s wall, {cpu:.2f} s CPU of this process "
        f"({rows / wall:,.0f} rows/s); {len(threads)} chunk(s) profiled in worker threads.",
        file=out,
    )
    stats = pstats.Stats(main, stream=out)
    for thread in threads:
        stats.add(thread)
    stats.sort_stats("tottime").print_stats(top)
    return out.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--top", type=int, default=25)
    arguments = parser.parse_args()
    print(profile(arguments.rows, arguments.top))


if __name__ == "__main__":
    main()
