"""Opening a job's submission: the connection, as this process reads it, must still serve the job."""

from __future__ import annotations

import pytest

from airflow_provider_modelbit.callbacks.job import CallbackJob, JobRequest
from airflow_provider_modelbit.callbacks.submission import callback_target
from airflow_provider_modelbit.exceptions import ModelbitConnectionError
from airflow_provider_modelbit.hooks.settings import ModelbitSettings

API_KEY = "mi_submission_test_key_0123"
SECRET = "submission-test-secret-0123"
JOB = CallbackJob(
    "mb-submission-t1",
    JobRequest("modelbit_default", "https://acme.modelbit.com", "doubler", "latest", "main", None, 60),
)


def settings(base_url: str) -> ModelbitSettings:
    return ModelbitSettings(
        conn_id="modelbit_default",
        base_url=base_url,
        api_key=API_KEY,
        callback_base_url="https://airflow.example.com/modelbit",
        callback_secret=SECRET,
    )


class TestCallbackTarget:
    def test_the_jobs_workspace_opens_the_submission(self) -> None:
        target = callback_target(settings("https://acme.modelbit.com"), JOB, delivery_margin=30)
        assert (target.base_url, target.timeout_seconds) == ("https://airflow.example.com/modelbit", 60)

    @pytest.mark.parametrize(
        "now",
        ["https://other.modelbit.com", "https://user:pw@other.modelbit.com", "http://acme.modelbit.com"],
    )
    def test_another_workspace_is_refused_naming_both_and_no_secret(self, now: str) -> None:
        """A connection edited, or defined differently in the triggerer: nothing goes elsewhere."""
        with pytest.raises(ModelbitConnectionError) as refused:
            callback_target(settings(now), JOB, delivery_margin=30)
        message = str(refused.value)
        shown = now.replace("user:pw@", "")
        assert f"Connection 'modelbit_default' now points at {shown}" in message
        assert "callback job mb-submission-t1 was submitted to https://acme.modelbit.com" in message
        assert not any(secret in message for secret in (API_KEY, SECRET, "pw@"))
