"""The provider's way: ``ModelbitBatchInferenceOperator.execute`` on the table, Parquet out.

The operator is built as a DAG would build it (default batch size, bytes and concurrency; the
``echo`` deployment; one object per row, as the official client sends a DataFrame) and its
``execute`` runs with a minimal context. That is the whole worker-side code path — input checks,
reading, chunking, requests, checkpointing and the atomic Parquet write — without the fixed cost of
a scheduler round trip or ``dag.test()``'s database setup, which does not grow with the table and
would blur a per-row figure.

Usage: ``python -m benchmarks.clients.operator_batch INPUT OUTPUT --warm-up SMALL_INPUT --conn-id CONN_ID``
"""

from __future__ import annotations

import shutil
from pathlib import Path

from airflow_provider_modelbit.operators.batch import ModelbitBatchInferenceOperator
from benchmarks.clients.report import client_arguments, measured, report


def _remove_earlier_output(output_path: Path) -> None:
    # A checkpoint left by an interrupted earlier run would be reused and skip work.
    output_path.unlink(missing_ok=True)
    shutil.rmtree(output_path.with_name(output_path.name + ".checkpoint"), ignore_errors=True)


def score_with_operator(input_path: Path, output_path: Path, conn_id: str) -> int:
    """Run the batch operator over ``input_path`` into ``output_path``; returns the rows written."""
    operator = ModelbitBatchInferenceOperator(
        task_id="score_table",
        deployment="echo",
        input_path=str(input_path),
        output_path=str(output_path),
        modelbit_conn_id=conn_id,
        deferrable=False,
    )
    summary = operator.execute(context={})
    return int(summary["rows"])


def main() -> None:
    parser = client_arguments(__doc__)
    parser.add_argument("--conn-id", required=True)
    arguments = parser.parse_args()
    _remove_earlier_output(arguments.output)
    score_with_operator(arguments.warm_up, arguments.output, arguments.conn_id)
    with measured() as measurement:
        measurement.rows = score_with_operator(arguments.input, arguments.output, arguments.conn_id)
    report(measurement)


if __name__ == "__main__":
    main()
