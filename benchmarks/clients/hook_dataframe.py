"""What a ``@task`` user calls: ``ModelbitHook.get_inference`` on a DataFrame, Parquet out.

The same job as the official client's measured run, with only the scoring call changed: the table
is read into a DataFrame with pandas, scored with the hook's defaults (batch size, bytes, adaptive
concurrency) against ``echo``, and the ``[[id, result], ...]`` rows are written as Parquet the way
the official client's are, so the two figures differ by the scoring call alone. The scoring call
itself (DataFrame in, rows out) is timed too, as ``scoring_call_seconds``.

Usage: ``python -m benchmarks.clients.hook_dataframe INPUT OUTPUT --warm-up SMALL_INPUT --conn-id CONN_ID``
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd

from airflow_provider_modelbit.hooks.modelbit import ModelbitHook
from benchmarks.clients.report import SCORING_CALL_SECONDS, client_arguments, measured, report


def score_with_hook(hook: ModelbitHook, input_path: Path, output_path: Path) -> tuple[int, float]:
    """
    Read the table into a DataFrame, score it with the hook, write the results as Parquet.

    :return: the rows scored, and the seconds the scoring call took.
    """
    frame = pd.read_parquet(input_path)
    started = time.perf_counter()
    rows = hook.get_inference("echo", frame)
    call_seconds = time.perf_counter() - started
    results = pd.DataFrame.from_records([row[1] for row in rows])
    results.insert(0, "id", [row[0] for row in rows])
    results.to_parquet(output_path, index=False)
    return len(results), call_seconds


def main() -> None:
    parser = client_arguments(__doc__)
    parser.add_argument("--conn-id", required=True)
    arguments = parser.parse_args()
    hook = ModelbitHook(arguments.conn_id)
    score_with_hook(hook, arguments.warm_up, arguments.output)
    with measured() as measurement:
        measurement.rows, measurement.details[SCORING_CALL_SECONDS] = score_with_hook(
            hook, arguments.input, arguments.output
        )
    report(measurement)


if __name__ == "__main__":
    main()
