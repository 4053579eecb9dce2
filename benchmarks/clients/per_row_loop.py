"""The naive alternative: one ``requests`` POST per row (a single inference each), then Parquet.

Run on a sample of the table; the runner extrapolates the rate.

Usage: ``python -m benchmarks.clients.per_row_loop INPUT OUTPUT --warm-up SMALL_INPUT --url URL --rows N``
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import requests

from benchmarks.clients.report import client_arguments, measured, report

_REQUEST_TIMEOUT_SECONDS = 30
_WARM_UP_ROWS = 20


def _score_one(session: requests.Session, url: str, record: dict[str, Any]) -> Any:
    response = session.post(url, json={"data": record}, timeout=_REQUEST_TIMEOUT_SECONDS)
    response.raise_for_status()
    body = response.json()
    if "error" in body:
        raise RuntimeError(f"Deployment at {url} failed: {body['error'].splitlines()[-1]}")
    return body["data"]


def score_row_by_row(input_path: Path, output_path: Path, url: str, rows: int) -> int:
    """Score the first ``rows`` rows of ``input_path`` one request at a time; returns the row count."""
    records = pq.read_table(input_path).slice(0, rows).to_pylist()
    with requests.Session() as session:
        results = [_score_one(session, url, record) for record in records]
    pq.write_table(pa.table({"id": list(range(len(results))), "result": results}), output_path)
    return len(results)


def main() -> None:
    parser = client_arguments(__doc__)
    parser.add_argument(
        "--url", required=True, help="the deployment URL, e.g. http://127.0.0.1:8000/v1/echo/latest"
    )
    parser.add_argument("--rows", type=int, required=True)
    arguments = parser.parse_args()
    score_row_by_row(arguments.warm_up, arguments.output, arguments.url, min(arguments.rows, _WARM_UP_ROWS))
    with measured() as measurement:
        measurement.rows = score_row_by_row(arguments.input, arguments.output, arguments.url, arguments.rows)
    report(measurement)


if __name__ == "__main__":
    main()
