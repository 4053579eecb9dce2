"""Run one ModelbitBatchInferenceOperator as a worker process would, for the crash tests.

``python batch_worker.py SPEC.json`` builds the operator from the JSON arguments in SPEC.json and
executes it; the connection comes from ``AIRFLOW_CONN_MODELBIT_DEFAULT`` in the environment. The
crash test kills this process with SIGKILL in mid-table, then runs it again as the task's retry.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from airflow_provider_modelbit.operators.batch import ModelbitBatchInferenceOperator


def main(spec_path: str) -> None:
    arguments = json.loads(Path(spec_path).read_text())
    summary = ModelbitBatchInferenceOperator(task_id="score", **arguments).execute({})
    print(json.dumps(summary))


if __name__ == "__main__":
    main(sys.argv[1])
