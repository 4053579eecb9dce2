"""
Throughput of the local Modelbit server: rows per second through ``echo`` in batches of 8 numbers.

The server runs in its own process (``run_emulator(mode="process")``); the client pre-encodes
one request body and sends it repeatedly over keep-alive connections, reading each answer completely.
Prints rows per wall-clock second and, on Linux, rows per CPU-second of the server process, which is
what one core sustains regardless of other load on the machine.

    .venv/bin/python benchmarks/emulator_throughput.py [--rows-per-request 5000] [--seconds 10]
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import orjson


def request_body(rows: int) -> bytes:
    return orjson.dumps({"data": [[row, *(float(row + k) for k in range(8))] for row in range(rows)]})


def send_until(url: str, body: bytes, deadline: float, counts: list[int]) -> None:
    """Send ``body`` to ``echo`` until ``deadline``; count completed requests."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=60)
    headers = {"content-type": "application/json"}
    while time.monotonic() < deadline:
        connection.request("POST", "/v1/echo/latest", body=body, headers=headers)
        response = connection.getresponse()
        answer = response.read()
        if response.status != 200 or not answer.startswith(b'{"data":[['):
            raise RuntimeError(f"Unexpected answer {response.status}: {answer[:200]!r}")
        counts.append(1)
    connection.close()


@contextlib.contextmanager
def emulator_process() -> Iterator[tuple[str, int]]:
    """The local server in a process of its own: its URL and process ID."""
    from airflow_provider_modelbit.emulator import run_emulator

    with run_emulator(mode="process") as emulator:
        yield emulator.url, emulator.pid


def cpu_seconds(pid: int) -> float | None:
    """User plus system CPU time of a process (Linux), None elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(url: str, pid: int, rows: int, seconds: float, connections: int) -> tuple[float, float | None]:
    body = request_body(rows)
    send_until(url, body, time.monotonic() + 1.0, [])  # warm-up
    counts: list[int] = []
    cpu_before = cpu_seconds(pid)
    started = time.monotonic()
    deadline = started + seconds
    threads = [
        threading.Thread(target=send_until, args=(url, body, deadline, counts)) for _ in range(connections)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    cpu_after = cpu_seconds(pid)
    sent_rows = len(counts) * rows
    cpu_rate = (
        sent_rows / (cpu_after - cpu_before) if cpu_before is not None and cpu_after is not None else None
    )
    return sent_rows / elapsed, cpu_rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows-per-request", type=int, default=5000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=2)
    args = parser.parse_args()
    with emulator_process() as (url, pid):
        wall_rate, cpu_rate = measure(url, pid, args.rows_per_request, args.seconds, args.connections)
    print(f"echo, {args.rows_per_request} rows of 8 numbers per request, {args.connections} connections")
    print(f"{wall_rate:,.0f} rows/s (wall clock)")
    if cpu_rate is not None:
        print(f"{cpu_rate:,.0f} rows/s per server CPU-second (one core)")


if __name__ == "__main__":
    main()
