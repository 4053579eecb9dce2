"""The official Modelbit client (``modelbit`` 0.44.3): ``get_inference`` on the DataFrame, Parquet out.

Runs in the benchmark-only environment ``.venv-bench`` (see ``requirements-official-client.txt``).

Pointing the client at the local server: ``modelbit.get_inference`` always builds
``https://{workspace}.{region}.modelbit.com/v1/...``; its only override (a ``region`` containing
``:5000``) still puts the workspace name in front of the host, which does not resolve locally. So
:func:`redirect_to_local_server` wraps the client's own pooled session's ``post`` to swap that base
URL for the local server's, and changes nothing else: same session and retry adapters, headers,
body encoding, chunking (3,000 rows / 20 MB) and concurrency (3 requests in flight).

Usage: ``python -m benchmarks.clients.official_client INPUT OUTPUT --warm-up SMALL_INPUT --url BASE_URL``
``[--deployment NAME] [--start-at EPOCH_SECONDS]`` (the latency-bound runs name their deployment and
start several clients at one moment).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from benchmarks.clients.report import SCORING_CALL_SECONDS, client_arguments, measured, report

WORKSPACE = "bench"
REGION = "us-east-2.aws"
OFFICIAL_BASE_URL = f"https://{WORKSPACE}.{REGION}.modelbit.com"


def redirect_to_local_server(local_base_url: str) -> None:
    """Send the official client's inference requests to ``local_base_url`` instead of modelbit.com."""
    from modelbit.api import inference_api

    session = inference_api._session
    original_post: Callable[..., Any] = session.post

    def post_to_local_server(url: str, **kwargs: Any) -> Any:
        return original_post(url.replace(OFFICIAL_BASE_URL, local_base_url.rstrip("/"), 1), **kwargs)

    session.post = post_to_local_server


def score_with_official_client(
    input_path: Path, output_path: Path, deployment: str = "echo"
) -> tuple[int, float]:
    """
    Read the table into a DataFrame, score it with ``get_inference``, write the results as Parquet.

    :return: the rows scored, and the seconds the scoring call (DataFrame in, rows out) took.
    """
    import modelbit

    frame = pd.read_parquet(input_path)
    started = time.perf_counter()
    answer = modelbit.get_inference(
        deployment=deployment, data=frame, region=REGION, workspace=WORKSPACE, branch="main"
    )
    call_seconds = time.perf_counter() - started
    ids = [row[0] for row in answer["data"]]
    results = pd.DataFrame.from_records([row[1] for row in answer["data"]])
    results.insert(0, "id", ids)
    results.to_parquet(output_path, index=False)
    return len(results), call_seconds


def main() -> None:
    parser = client_arguments(__doc__)
    parser.add_argument("--url", required=True, help="the local server's base URL")
    parser.add_argument("--deployment", default="echo", help="the deployment of the measured run")
    parser.add_argument("--start-at", type=float, default=None, help="epoch seconds to start measuring at")
    arguments = parser.parse_args()
    redirect_to_local_server(arguments.url)
    score_with_official_client(arguments.warm_up, arguments.output)  # echo: answers at once
    if arguments.start_at is not None:
        time.sleep(max(0.0, arguments.start_at - time.time()))
    with measured() as measurement:
        measurement.details["started_at"] = time.time()
        measurement.rows, measurement.details[SCORING_CALL_SECONDS] = score_with_official_client(
            arguments.input, arguments.output, arguments.deployment
        )
        measurement.details["finished_at"] = time.time()
    report(measurement)


if __name__ == "__main__":
    main()
