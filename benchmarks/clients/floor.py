"""The floor: read the Parquet table, encode and decode the same JSON a batch request carries, write
Parquet — with no HTTP at all. No client can use less CPU per row than this for the same work.

The Parquet file is written with the operator's dictionary page limit (``io/result_writer.py``;
the provider is not imported here, so the figure is not a heavier process's): the same file, not
one cheaper or dearer to encode.

Usage: ``python -m benchmarks.clients.floor INPUT OUTPUT --warm-up SMALL_INPUT --batch-size N``
"""

from __future__ import annotations

from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks.clients.report import client_arguments, measured, report

# io/result_writer.py: DICTIONARY_PAGE_BYTES (tests/benchmarks checks they agree).
DICTIONARY_PAGE_BYTES = 64 * 1024


def _round_trip(batch: pa.RecordBatch, first_id: int) -> list[list[object]]:
    rows = [[first_id + offset, record] for offset, record in enumerate(batch.to_pylist())]
    request_body = orjson.dumps({"data": rows})
    # The echo deployment answers with the same rows, so decoding the request body is decoding the response.
    return orjson.loads(request_body)["data"]


def score_without_http(input_path: Path, output_path: Path, batch_size: int) -> int:
    """Stream ``input_path`` through the JSON round trip into ``output_path``; returns the row count."""
    writer: pq.ParquetWriter | None = None
    rows_done = 0
    for batch in pq.ParquetFile(input_path).iter_batches(batch_size=batch_size):
        returned = _round_trip(batch, rows_done)
        table = pa.table({"id": [row[0] for row in returned], "result": [row[1] for row in returned]})
        writer = writer or pq.ParquetWriter(
            output_path, table.schema, dictionary_pagesize_limit=DICTIONARY_PAGE_BYTES
        )
        writer.write_table(table)
        rows_done += len(returned)
    if writer is not None:
        writer.close()
    return rows_done


def main() -> None:
    parser = client_arguments(__doc__)
    parser.add_argument("--batch-size", type=int, required=True)
    arguments = parser.parse_args()
    score_without_http(arguments.warm_up, arguments.output, arguments.batch_size)
    with measured() as measurement:
        measurement.rows = score_without_http(arguments.input, arguments.output, arguments.batch_size)
    report(measurement)


if __name__ == "__main__":
    main()
