"""The usual alternative for a links-mode result: download the whole document, parse it at once with
orjson, then write Parquet.

Usage: ``python -m benchmarks.clients.links_whole LINK_URL OUTPUT``
"""

from __future__ import annotations

import argparse
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import requests

from benchmarks.clients.report import measured, report

_DOWNLOAD_TIMEOUT_SECONDS = 300


def load_link_whole_to_parquet(link_url: str, output_path: Path) -> int:
    """Fetch ``link_url`` into memory, parse it whole, write Parquet; returns the row count."""
    response = requests.get(link_url, timeout=_DOWNLOAD_TIMEOUT_SECONDS)
    response.raise_for_status()
    rows = orjson.loads(response.content)
    if isinstance(rows, dict):
        rows = rows["data"]
    table = pa.table({"id": [row[0] for row in rows], "result": [row[1] for row in rows]})
    pq.write_table(table, output_path)
    return table.num_rows


def _import_lazily_loaded_modules() -> None:
    # pyarrow imports pandas on its first conversion of Python objects: pay for that before the
    # measured section, as every scoring client does with its warm-up.
    import pandas  # noqa: F401


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("link_url")
    parser.add_argument("output", type=Path)
    arguments = parser.parse_args()
    _import_lazily_loaded_modules()
    with measured() as measurement:
        measurement.rows = load_link_whole_to_parquet(arguments.link_url, arguments.output)
    report(measurement)


if __name__ == "__main__":
    main()
