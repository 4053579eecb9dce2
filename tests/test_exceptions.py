"""Which errors end a task at once and which keep Airflow's retries.

Permanent errors (bad input, a refused key, a missing deployment or version, a request Modelbit
rejects) are ``AirflowFailException`` subclasses, so a task with ``retries=3`` fails on its first try; a
transient error (a 503 storm) uses every try. Both are run through real Airflow (``dag.test()``)
against the local Modelbit server, whose request log counts what was sent.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from functools import cached_property

import pytest

from airflow_provider_modelbit import exceptions
from airflow_provider_modelbit.emulator.server import RunningEmulator, run_emulator
from airflow_provider_modelbit.hooks.modelbit import ModelbitHook
from airflow_provider_modelbit.hooks.retries import RetryPolicy
from airflow_provider_modelbit.operators.inference import ModelbitInferenceOperator
from airflow_provider_modelbit.version_compat import AirflowFailException
from tests.airflow_dags import fresh_dag, run_dag, task_errors

API_KEY = "mbkFAILFAST01:right-key"
PERMANENT = [
    exceptions.ModelbitInputError,
    exceptions.ModelbitConnectionError,
    exceptions.ModelbitAuthError,
    exceptions.ModelbitNotFound,
    exceptions.ModelbitBadRequest,
    exceptions.ModelbitPayloadTooLarge,
    exceptions.ModelbitOutputError,
]
TRANSIENT = [
    exceptions.ModelbitError,
    exceptions.ModelbitRateLimited,
    exceptions.ModelbitDeploymentError,
    exceptions.ModelbitTimeout,
    exceptions.ModelbitTransportError,
    exceptions.ModelbitLinkExpired,
    exceptions.ModelbitIncompleteBatch,
    exceptions.ModelbitCallbackError,
    # Another run holds the output: a later try may find it free.
    exceptions.ModelbitOutputBusy,
]
TASK_RETRIES = 3
# Two attempts per request inside a try, quickly: the test is about the task's tries.
HOOK_RETRIES = RetryPolicy(max_attempts=2, initial_wait=0.01, max_wait=0.05, max_total_wait=1.0)


class TestClassification:
    @pytest.mark.parametrize("error", PERMANENT, ids=lambda error: error.__name__)
    def test_permanent_errors_end_the_task(self, error: type[Exception]) -> None:
        assert issubclass(error, AirflowFailException)
        assert issubclass(error, exceptions.ModelbitPermanentError)

    @pytest.mark.parametrize("error", TRANSIENT, ids=lambda error: error.__name__)
    def test_transient_errors_keep_the_retries(self, error: type[Exception]) -> None:
        assert not issubclass(error, AirflowFailException)

    def test_every_error_is_classified(self) -> None:
        defined = {
            value
            for value in vars(exceptions).values()
            if isinstance(value, type) and issubclass(value, exceptions.ModelbitError)
        }
        assert defined == {*PERMANENT, *TRANSIENT, exceptions.ModelbitPermanentError}

    def test_a_permanent_error_pickles_with_its_details(self) -> None:
        import pickle

        error = exceptions.ModelbitAuthError("refused", deployment="doubler", status=401)
        copy = pickle.loads(pickle.dumps(error))
        assert isinstance(copy, AirflowFailException)
        assert (copy.deployment, copy.status) == ("doubler", 401)


class _QuickRetryInference(ModelbitInferenceOperator):
    @cached_property
    def hook(self) -> ModelbitHook:
        return ModelbitHook(self.modelbit_conn_id, retry_policy=HOOK_RETRIES)


@pytest.fixture(scope="module")
def keyed_server() -> Iterator[RunningEmulator]:
    with run_emulator(require_api_keys=True, api_keys=(API_KEY,)) as server:
        yield server


def _use_key(monkeypatch: pytest.MonkeyPatch, server: RunningEmulator, key: str) -> None:
    document = {"conn_type": "modelbit", "host": server.url, "password": key}
    monkeypatch.setenv("AIRFLOW_CONN_MODELBIT_DEFAULT", json.dumps(document))


def _run_scoring(deployment: str = "doubler") -> tuple[object, BaseException | None]:
    with fresh_dag("fail_fast") as dag:
        _QuickRetryInference(
            task_id="score",
            deployment=deployment,
            data=21,
            retries=TASK_RETRIES,
            retry_delay=timedelta(seconds=0),
        )
    with task_errors() as errors:
        run = run_dag(dag)
    return run.get_task_instance("score"), errors.get("score")


class TestTaskTries:
    def test_a_refused_key_fails_on_the_first_try(
        self, airflow_db: None, keyed_server: RunningEmulator, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        keyed_server.client.reset()
        _use_key(monkeypatch, keyed_server, "mbkFAILFAST01:wrong-key")

        task, error = _run_scoring()

        assert str(task.state) == "failed"
        assert task.try_number == 1
        assert isinstance(error, exceptions.ModelbitAuthError)
        assert [request.get("status") for request in keyed_server.client.requests()] == [401]

    def test_an_unknown_deployment_fails_on_the_first_try(
        self, airflow_db: None, keyed_server: RunningEmulator, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        keyed_server.client.reset()
        _use_key(monkeypatch, keyed_server, API_KEY)

        task, error = _run_scoring("no_such_deployment")

        assert (str(task.state), task.try_number) == ("failed", 1)
        assert isinstance(error, exceptions.ModelbitNotFound)
        assert len(keyed_server.client.requests()) == 1

    def test_a_503_storm_uses_every_retry(
        self, airflow_db: None, keyed_server: RunningEmulator, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        keyed_server.client.reset()
        keyed_server.client.set_faults(error_rate=1.0, error_statuses=(503,))
        _use_key(monkeypatch, keyed_server, API_KEY)

        task, error = _run_scoring()

        tries = TASK_RETRIES + 1
        assert (str(task.state), task.try_number) == ("failed", tries)
        assert not isinstance(error, AirflowFailException)
        statuses = [request.get("status") for request in keyed_server.client.requests()]
        assert statuses == [503] * (tries * HOOK_RETRIES.max_attempts)
        assert keyed_server.client.runs("doubler") == {}


class TestLocated:
    def test_a_located_copy_keeps_its_class_and_attributes_and_names_where(self) -> None:
        from airflow_provider_modelbit.exceptions import ModelbitDeploymentError

        error = ModelbitDeploymentError("boom", deployment="d", version=3, status=500, traceback="tb")
        located = error.located("chunk 2 (input rows 20 to 29)")
        assert type(located) is ModelbitDeploymentError
        assert located.message == "boom [chunk 2 (input rows 20 to 29)]" == str(located)
        assert (located.deployment, located.version, located.status, located.traceback) == (
            "d",
            3,
            500,
            "tb",
        )
        assert error.message == "boom"


class TestErrorClassByName:
    """A trigger event names an error by class; the task raises that class, and nothing else."""

    @pytest.mark.parametrize("error", [*PERMANENT, *TRANSIENT], ids=lambda error: error.__name__)
    def test_every_provider_error_comes_back_by_name(self, error: type[exceptions.ModelbitError]) -> None:
        assert exceptions.modelbit_error_class(error.__name__, exceptions.ModelbitCallbackError) is error

    @pytest.mark.parametrize("name", [None, "", "AirflowException", "ValueError", "os", 42])
    def test_anything_else_is_the_default(self, name: object) -> None:
        found = exceptions.modelbit_error_class(name, exceptions.ModelbitCallbackError)
        assert found is exceptions.ModelbitCallbackError
