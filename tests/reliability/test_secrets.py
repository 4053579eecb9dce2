"""No secret leaves the connection: an end-to-end run with a distinctive API key and callback secret,
then every place Airflow and the provider write to is searched for them.

One DAG, run with ``dag.test()`` against the key-checking local Modelbit server and a real
callback receiver: a single inference, batch rows with a templated deployment, a table scored to
Parquet, a deferred (async-callback) inference, and a task whose deployment raises. Then the
console and captured logs, every file under AIRFLOW_HOME (task logs and the SQLite database
bytes), the XCom, rendered-template and trigger rows, the callback store, the outputs and the
error raised are searched: the key and the secret must occur nowhere.

A server that echoes the request can also carry a webhook URL's token, a credential for one
chunk's delivery: a deferred task whose submission is refused with the URL quoted must leave
that token nowhere either.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from airflow.sdk import DAG

from airflow_provider_modelbit.emulator.server import RunningEmulator
from airflow_provider_modelbit.exceptions import ModelbitBadRequest
from airflow_provider_modelbit.operators.batch import ModelbitBatchInferenceOperator
from airflow_provider_modelbit.operators.inference import ModelbitInferenceOperator
from tests.airflow_dags import fresh_dag, run_dag, task_errors
from tests.reliability.conftest import RunningReceiver, files_under, leaked_secrets


def build_dag(tmp_path: Path) -> DAG:
    table_path = tmp_path / "customers.parquet"
    pq.write_table(pa.table({"key": ["a", "b", "c"], "x": [1, 2, 3]}), table_path)
    with fresh_dag("reliability_secrets") as dag:
        ModelbitInferenceOperator(task_id="single", deployment="doubler", data=21)
        ModelbitInferenceOperator(task_id="rows", deployment="{{ 'doub' ~ 'ler' }}", data=[[1, 1], [2, 2]])
        ModelbitBatchInferenceOperator(
            task_id="table",
            deployment="doubler",
            input_path=str(table_path),
            output_path=str(tmp_path / "out" / "scores.parquet"),
            id_column="key",
            columns=["x"],
            argument_style="positional",
        )
        # A lost delivery fails the task in under a minute instead of after the default margins.
        ModelbitInferenceOperator(
            task_id="deferred",
            deployment="doubler",
            data=[[1, 5]],
            deferrable=True,
            timeout_seconds=30,
            callback_delivery_margin=15,
            callback_poll_interval=0.5,
        )
        ModelbitInferenceOperator(task_id="failing", deployment="raiser", data=1)
    return dag


def stored_rows(dag_id: str) -> dict[str, list[str]]:
    """The XCom values, rendered template fields and trigger kwargs the run left in the database."""
    from airflow.models.renderedtifields import RenderedTaskInstanceFields
    from airflow.models.trigger import Trigger
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        xcoms = session.scalars(select(XComModel).where(XComModel.dag_id == dag_id)).all()
        rendered = session.scalars(
            select(RenderedTaskInstanceFields).where(RenderedTaskInstanceFields.dag_id == dag_id)
        ).all()
        triggers = session.scalars(select(Trigger)).all()
        return {
            "xcom": [repr(xcom.value) for xcom in xcoms],
            "rendered": [repr(row.rendered_fields) for row in rendered],
            "triggers": [repr(trigger.kwargs) for trigger in triggers],
        }


@pytest.fixture
def wired(
    airflow_db: None,
    emulator: RunningEmulator,
    receiver: RunningReceiver,
    use_connection: Callable[..., None],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The connection reaches the local server and the receiver; every log level is captured."""
    caplog.set_level(logging.DEBUG)
    use_connection(emulator.url, callback_base_url=receiver.base_url)
    # Operator, trigger and receiver must share one callback store.
    monkeypatch.setenv("AIRFLOW__MODELBIT__CALLBACK_STORE", receiver.store.location)


def leaks(places: dict[str, Any], folders: list[Path], secrets: list[str] | None = None) -> dict[str, Any]:
    """Which ``secrets`` (default: the key and callback secret) are in ``places`` or under ``folders``."""
    files = {str(path): path.read_bytes() for folder in folders for path in files_under(folder)}
    everywhere = {**places, **files}
    search = {} if secrets is None else {"secrets": secrets}
    return {place: found for place, text in everywhere.items() if (found := leaked_secrets(text, **search))}


@pytest.mark.usefixtures("wired")
class TestNoSecretAnywhere:
    def test_end_to_end_run_leaves_no_key_or_secret(
        self,
        emulator: RunningEmulator,
        tmp_path: Path,
        airflow_home: str,
        caplog: pytest.LogCaptureFixture,
        capfd: pytest.CaptureFixture[str],
    ) -> None:
        dag = build_dag(tmp_path)
        with task_errors() as errors:
            run = run_dag(dag)
        console = capfd.readouterr()

        states = {ti.task_id: str(ti.state) for ti in run.get_task_instances()}
        assert states == {
            "single": "success",
            "rows": "success",
            "table": "success",
            "deferred": "success",
            "failing": "failed",
        }, console.out[-5000:]
        assert "ValueError: boom: 1" in str(errors["failing"])

        rows = stored_rows(dag.dag_id)
        assert rows["xcom"], "the run stored no XCom to search"
        home_files = list(files_under(Path(airflow_home)))
        print(
            f"secrets report: {len(home_files)} files under AIRFLOW_HOME searched with the run's output: "
            f"{sorted(str(path.relative_to(airflow_home)) for path in home_files)}"
        )
        places: dict[str, Any] = {
            "console": console.out + console.err,
            "captured logs": caplog.text,
            "error": [str(error) for error in errors.values()] + [repr(vars(e)) for e in errors.values()],
            **rows,
        }
        assert leaks(places, [Path(airflow_home), tmp_path]) == {}
        assert any(r.get("mode") == "async" for r in emulator.client.requests()), "no task was deferred"


@pytest.mark.usefixtures("wired")
class TestEchoedWebhookUrl:
    def test_a_webhook_url_quoted_in_a_refusal_leaves_its_token_nowhere(
        self,
        emulator: RunningEmulator,
        tmp_path: Path,
        airflow_home: str,
        caplog: pytest.LogCaptureFixture,
        capfd: pytest.CaptureFixture[str],
    ) -> None:
        """
        The local server refuses a plain-http webhook with a 400 that quotes the URL (its first
        200 characters, the whole token here): the task fails before deferring with the 400's
        error, and the token is in no log line, message, XCom, trigger row or file.
        """
        emulator.client.configure(allow_http_webhooks=False)
        with fresh_dag("reliability_echo") as dag:
            ModelbitInferenceOperator(
                task_id="deferred", deployment="doubler", data=[[1, 5]], deferrable=True, timeout_seconds=30
            )
        with task_errors() as errors:
            run = run_dag(dag)
        console = capfd.readouterr()

        assert str(run.get_task_instance("deferred").state) == "failed", console.out[-5000:]
        error = errors["deferred"]
        assert isinstance(error, ModelbitBadRequest) and "token=***" in str(error), repr(error)
        webhooks = [
            re.search(r'"response_webhook": ?"([^"]+)"', record["body"] or "")
            for record in emulator.client.requests()
        ]
        urls = [match.group(1) for match in webhooks if match]
        tokens = [url.split("token=", 1)[1] for url in urls]
        assert tokens, "no submission was recorded"
        assert all(url.index(token) + len(token) <= 200 for url, token in zip(urls, tokens, strict=True)), (
            "the server quoted the whole token"
        )
        assert emulator.client.batches() == [] and emulator.client.runs("doubler") == {}

        provider_logs = [r.getMessage() for r in caplog.records if ".emulator" not in r.name]
        places: dict[str, Any] = {
            "console": console.out + console.err,
            "captured logs": provider_logs,  # the local server's own log is not the provider's
            "error": [str(error), repr(vars(error))],
            **stored_rows(dag.dag_id),
        }
        assert leaks(places, [Path(airflow_home), tmp_path], secrets=tokens) == {}
