"""Workload 3: a large links-mode result to Parquet, streamed by the provider versus loaded whole."""

from __future__ import annotations

import json
from typing import Any

import requests

from benchmarks.child_process import run_workload
from benchmarks.environment import WORKLOAD_TIMEOUT_SECONDS, BenchmarkEnvironment
from benchmarks.links_deployment import embedder
from benchmarks.sizes import BenchmarkSize
from benchmarks.summaries import paired_ratios, summarize

LINK_REPEATS = 3
_LINK_REQUEST_TIMEOUT_SECONDS = 300
_DOWNLOAD_PIECE_BYTES = 1 << 20
LINK_CLIENTS = {"streamed": "benchmarks.clients.links_streamed", "whole": "benchmarks.clients.links_whole"}


def _rows_for(document_bytes: int) -> int:
    # A typical row, encoded compactly as the server does, tells how many rows make the wanted size
    # (an odd seed: round seeds give short numbers and too many rows).
    typical_row_bytes = len(json.dumps([188_889, embedder(188_889.0)], separators=(",", ":")))
    return max(1, document_bytes // typical_row_bytes)


def request_link(emulator_url: str, document_bytes: int) -> tuple[str, int]:
    """Ask the local server's ``embedder`` for a links answer of about ``document_bytes``; URL and rows."""
    rows = _rows_for(document_bytes)
    body = {"data": [[index, float(index)] for index in range(rows)], "response_format": "links"}
    response = requests.post(
        f"{emulator_url.rstrip('/')}/v1/embedder/latest", json=body, timeout=_LINK_REQUEST_TIMEOUT_SECONDS
    )
    response.raise_for_status()
    answer = response.json()
    if "error" in answer:
        raise RuntimeError(f"The local server could not build the linked result: {answer['error']}")
    return answer["data"], rows


def _document_size(link_url: str) -> int:
    with requests.get(link_url, stream=True, timeout=_LINK_REQUEST_TIMEOUT_SECONDS) as response:
        response.raise_for_status()
        return sum(len(piece) for piece in response.iter_content(_DOWNLOAD_PIECE_BYTES))


def _run(env: BenchmarkEnvironment, name: str, link_url: str) -> dict[str, Any]:
    arguments = [link_url, str(env.scratch(f"link-{name}.parquet"))]
    module = LINK_CLIENTS[name]
    return run_workload(env.main_python, module, arguments, env.child_env(), WORKLOAD_TIMEOUT_SECONDS)


def _figures(reports: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "seconds": summarize([r["wall_seconds"] for r in reports]),
        "cpu_seconds": summarize([r["cpu_seconds"] for r in reports]),
        "peak_rss_above_baseline_bytes": summarize(
            [r["peak_rss_bytes"] - r["baseline_rss_bytes"] for r in reports]
        ),
    }


def measure_links(env: BenchmarkEnvironment, size: BenchmarkSize) -> dict[str, Any]:
    """Time and memory above the process baseline for both ways of turning the link into Parquet."""
    link_url, rows = request_link(env.emulator_url, size.link_document_bytes)
    reports: dict[str, list[dict[str, Any]]] = {name: [] for name in LINK_CLIENTS}
    for _round in range(min(size.repeats, LINK_REPEATS)):
        for name in LINK_CLIENTS:
            reports[name].append(_run(env, name, link_url))
    figures = {name: _figures(client_reports) for name, client_reports in reports.items()}
    memory_runs = [figures[name]["peak_rss_above_baseline_bytes"]["runs"] for name in ("whole", "streamed")]
    return {
        "rows": rows,
        "document_bytes": _document_size(link_url),
        **figures,
        "whole_vs_streamed_peak_rss": paired_ratios(*memory_runs),
    }
