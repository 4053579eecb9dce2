"""Inference calls for unit tests of code that names the call it reads an answer of."""

from __future__ import annotations

from airflow_provider_modelbit.hooks.responses import InferenceCall


def call_to(deployment: str = "d", version: str | int = 1, branch: str = "main") -> InferenceCall:
    """A call to ``deployment`` on a local workspace, as the hook builds it."""
    return InferenceCall(
        conn_id="modelbit_default",
        deployment=deployment,
        version=version,
        branch=branch,
        url=f"http://127.0.0.1:9/v1/{deployment}/{version}",
        timeout_seconds=None,
    )
