"""Bad input, bad settings and bad answers: each fails with a typed error that says what was wrong
and where, carries no secret (message, repr, attributes, logs, console), and leaves nothing at
``output_path``.

Every row of :data:`CASES` is one failure a user or the network can cause. The operators run
against the real local Modelbit server (which requires the distinctive API key), a scripted HTTP
server for answers Modelbit never gives (a non-JSON 200, an answer missing IDs), and a real
callback receiver for webhook deliveries.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from airflow_provider_modelbit.emulator.server import RunningEmulator
from airflow_provider_modelbit.exceptions import (
    ModelbitAuthError,
    ModelbitConnectionError,
    ModelbitDeploymentError,
    ModelbitIncompleteBatch,
    ModelbitInputError,
    ModelbitLinkExpired,
    ModelbitNotFound,
    ModelbitPayloadTooLarge,
    ModelbitTimeout,
    ModelbitTransportError,
)
from airflow_provider_modelbit.hooks.modelbit import ModelbitHook
from airflow_provider_modelbit.operators.batch import ModelbitBatchInferenceOperator
from airflow_provider_modelbit.operators.inference import ModelbitInferenceOperator
from tests.airflow_dags import NEEDS_LOOKUP_OUTSIDE_TASKS
from tests.reliability.conftest import (
    API_KEY,
    CALLBACK_SECRET,
    CONN_ID,
    FAST_RETRIES,
    WRONG_API_KEY,
    RunningReceiver,
    files_under,
    leaked_secrets,
)
from tests.scripted_http import CannedResponse, ScriptedServer


class RejectedDelivery(Exception):
    """The receiver refused a webhook delivery; the message holds its status and answer."""


@dataclass
class Scene:
    """Everything a case may use: the servers, the connection setter and a scratch folder."""

    emulator: RunningEmulator
    scripted: ScriptedServer
    receiver: RunningReceiver
    use_connection: Callable[..., None]
    folder: Path

    @property
    def output(self) -> Path:
        return self.folder / "out" / "scores.parquet"

    def write_table(self, table: pa.Table, name: str = "in.parquet") -> Path:
        path = self.folder / name
        pq.write_table(table, path)
        return path


@dataclass(frozen=True)
class BadInput:
    """
    One failure: what to do, the error it must raise, and what its message must say.

    :param name: the case, as the test id.
    :param run: does the failing thing in a :class:`Scene`.
    :param error: the exception class expected.
    :param message: a regular expression the message must match (what was wrong, and where).
    :param log: a regular expression the captured logs must match, when the log is where details go.
    :param marks: pytest marks of the case.
    """

    name: str
    run: Callable[[Scene], Any]
    error: type[Exception]
    message: str
    log: str | None = None
    marks: tuple[Any, ...] = ()


# --- How the cases act ---------------------------------------------------------------------------


def infer(scene: Scene, data: Any, **arguments: Any) -> Any:
    """Run ModelbitInferenceOperator writing to the scene's output, with fast bounded retries."""
    arguments.setdefault("deployment", "doubler")
    operator = ModelbitInferenceOperator(
        task_id="score", data=data, output_path=str(scene.output), **arguments
    )
    operator.__dict__["hook"] = ModelbitHook(operator.modelbit_conn_id, retry_policy=FAST_RETRIES)
    return operator.execute({})


def score_table(scene: Scene, input_path: Path, **arguments: Any) -> Any:
    """Run ModelbitBatchInferenceOperator on a file, with fast bounded retries."""
    arguments = {"deployment": "doubler", "columns": ["x"], "argument_style": "positional", **arguments}
    operator = ModelbitBatchInferenceOperator(
        task_id="score", input_path=str(input_path), output_path=str(scene.output), **arguments
    )
    operator.__dict__["hook"] = ModelbitHook(
        operator.modelbit_conn_id,
        batch_size=operator.batch_size,
        batch_bytes=operator.batch_bytes,
        max_concurrency=operator.max_concurrency,
        retry_policy=FAST_RETRIES,
    )
    return operator.execute({})


def numbers(rows: int = 4) -> pa.Table:
    return pa.table({"key": [f"r{i}" for i in range(rows)], "x": list(range(rows))})


def with_connection(host: Callable[[Scene], str], password: str | None = API_KEY) -> Callable[[Scene], Any]:
    def run(scene: Scene) -> Any:
        scene.use_connection(host(scene), password)
        return infer(scene, 21)

    return run


def with_faults(data: Any = 21, response_format: str | None = None, **faults: Any) -> Callable[[Scene], Any]:
    def run(scene: Scene) -> Any:
        scene.emulator.client.set_faults(**faults)
        return infer(scene, data, response_format=response_format)

    return run


def json_answer(body: bytes) -> CannedResponse:
    return CannedResponse(200, body, {"Content-Type": "application/json"})


def with_options(action: Callable[[Scene], Any], **options: Any) -> Callable[[Scene], Any]:
    def run(scene: Scene) -> Any:
        scene.emulator.client.configure(**options)
        return action(scene)

    return run


def scripted_answer(answer: CannedResponse, data: Any, **arguments: Any) -> Callable[[Scene], Any]:
    def run(scene: Scene) -> Any:
        scene.scripted.script(answer)
        scene.use_connection(scene.scripted.url)
        return infer(scene, data, **arguments)

    return run


def fresh_link(scene: Scene, expiry_seconds: float) -> str:
    """Ask the server for a results link directly (as Modelbit would hand it out)."""
    scene.emulator.client.configure(link_expiry_seconds=expiry_seconds)
    answer = httpx.post(
        f"{scene.emulator.url}/v1/doubler/latest",
        json={"data": [[1, 1]], "response_format": "links"},
        headers={"Authorization": API_KEY},
        timeout=30,
    )
    return answer.json()["data"]


def answered_with_link(make_link: Callable[[Scene], str]) -> Callable[[Scene], Any]:
    def run(scene: Scene) -> Any:
        link = make_link(scene)
        scene.scripted.script(json_answer(f'{{"data": "{link}"}}'.encode()))
        scene.use_connection(scene.scripted.url)
        return infer(scene, [[1, 1]], response_format="links")

    return run


def expired_link(scene: Scene) -> str:
    link = fresh_link(scene, expiry_seconds=1)
    expires = int(link.split("expires=")[1].split("&")[0])
    time.sleep(max(0.0, expires - time.time()) + 0.05)
    return link


def truncated_link_url(scene: Scene) -> str:
    return fresh_link(scene, expiry_seconds=3600)[:-12]


def deliver(
    job_id: str,
    body: bytes = b'{"data": [[1, 2]]}',
    *,
    url: Callable[[RunningReceiver], str] | None = None,
) -> Callable[[Scene], Any]:
    """Post a webhook delivery to the receiver; raise :class:`RejectedDelivery` unless it is stored."""

    def run(scene: Scene) -> Any:
        # The job is awaited (it has a manifest), so only the checks can keep the delivery out.
        scene.receiver.store.write_manifest(job_id, {"chunks": [0]})
        target = url(scene.receiver) if url else scene.receiver.url(job_id, 0)
        answer = httpx.post(target, content=body, headers={"x-mb-batch-id": "b" * 32}, timeout=30)
        stored = scene.receiver.store.delivered_chunks(job_id)
        if answer.status_code >= 300 or not stored:
            raise RejectedDelivery(
                f"HTTP {answer.status_code}: {answer.text}; stored chunks {sorted(stored)}"
            )
        return answer

    return run


def replayed_into_another_job(receiver: RunningReceiver) -> str:
    issued = receiver.url("job-issued", 0)
    return issued.replace("/job-issued/", "/job-replayed/")


# --- The table -----------------------------------------------------------------------------------

CASES = [
    # The connection
    BadInput(
        "no connection",
        lambda scene: infer(scene, 21, modelbit_conn_id="modelbit_nowhere"),
        ModelbitConnectionError,
        r"Connection 'modelbit_nowhere' is not defined.*AIRFLOW_CONN_MODELBIT_NOWHERE",
        marks=(NEEDS_LOOKUP_OUTSIDE_TASKS,),
    ),
    BadInput(
        "workspace URL without a host",
        with_connection(lambda scene: "https://"),
        ModelbitConnectionError,
        r"Connection 'modelbit_default' has an unusable workspace URL 'https://'",
    ),
    BadInput(
        "workspace URL with another scheme",
        with_connection(lambda scene: "ftp://acme.modelbit.com"),
        ModelbitConnectionError,
        r"unusable workspace URL 'ftp://acme\.modelbit\.com'.*set Host to a full URL",
    ),
    BadInput(
        "workspace URL with a malformed port",
        with_connection(lambda scene: "http://127.0.0.1:99999"),
        ModelbitConnectionError,
        r"unusable workspace URL 'http://127\.0\.0\.1:99999'",
    ),
    BadInput(
        "unreachable host",
        with_connection(lambda scene: "http://127.0.0.1:9"),
        ModelbitTransportError,
        r"Deployment 'doubler' \(version latest\): could not connect to "
        r"http://127\.0\.0\.1:9/v1/doubler/latest .*Workspace URL of connection 'modelbit_default'",
    ),
    BadInput(
        "https workspace URL on a plain-HTTP server",
        with_connection(lambda scene: scene.emulator.url.replace("http://", "https://"), API_KEY),
        ModelbitTransportError,
        r"Deployment 'doubler' \(version latest\): the TLS handshake with "
        r"https://127\.0\.0\.1:\d+/v1/doubler/latest failed before anything was sent; "
        r"if the server speaks plain HTTP, use an http:// Workspace URL",
    ),
    BadInput(
        "wrong API key",
        with_connection(lambda scene: scene.emulator.url, WRONG_API_KEY),
        ModelbitAuthError,
        r"Deployment 'doubler' \(version latest\): Modelbit refused the API key; check the API Key of "
        r"connection 'modelbit_default' \(HTTP 401",
    ),
    BadInput(
        "API key required but missing",
        with_connection(lambda scene: scene.emulator.url, None),
        ModelbitAuthError,
        r"Deployment 'doubler' \(version latest\): Modelbit refused the API key.*HTTP 401",
    ),
    # What is called
    BadInput(
        "unknown deployment",
        lambda scene: infer(scene, 21, deployment="no_such_model"),
        ModelbitNotFound,
        r"Deployment 'no_such_model' \(version latest\): not found; check the deployment name",
    ),
    BadInput(
        "unknown version",
        lambda scene: infer(scene, 21, deployment="versioned", version=99),
        ModelbitNotFound,
        r"Deployment 'versioned' \(version 99\): not found",
    ),
    BadInput(
        "unknown alias",
        lambda scene: infer(scene, 21, deployment="versioned", version="gold"),
        ModelbitNotFound,
        r"Deployment 'versioned' \(version gold\): not found",
    ),
    BadInput(
        "unknown branch",
        lambda scene: infer(scene, 21, deployment="versioned", branch="no-such-branch"),
        ModelbitNotFound,
        r"Deployment 'versioned' \(version latest, branch no-such-branch\): not found",
    ),
    BadInput(
        "deployment name climbing out of the path",
        lambda scene: infer(scene, 21, deployment="../x"),
        ModelbitInputError,
        r"Deployment name '\.\./x' is invalid: use letters, digits and underscores",
    ),
    BadInput(
        "deployment name with spaces",
        lambda scene: infer(scene, 21, deployment="my model"),
        ModelbitInputError,
        r"Deployment name 'my model' is invalid",
    ),
    BadInput(
        "empty deployment name",
        lambda scene: infer(scene, 21, deployment=""),
        ModelbitInputError,
        r"Deployment name '' is invalid",
    ),
    BadInput(
        "version climbing out of the path",
        lambda scene: infer(scene, 21, version="../x"),
        ModelbitInputError,
        r"Version '\.\./x' is invalid",
    ),
    BadInput(
        "branch with spaces",
        lambda scene: infer(scene, 21, branch="my branch"),
        ModelbitInputError,
        r"Branch 'my branch' is invalid",
    ),
    BadInput(
        "timeout_seconds of zero",
        lambda scene: infer(scene, 21, timeout_seconds=0),
        ModelbitInputError,
        r"timeout_seconds=0 is invalid for inference: use a whole number of seconds from 1 to 300",
    ),
    BadInput(
        "timeout_seconds over the sync limit",
        lambda scene: infer(scene, 21, timeout_seconds=301),
        ModelbitInputError,
        r"timeout_seconds=301 is invalid",
    ),
    # The data
    BadInput(
        "single input JSON cannot carry",
        lambda scene: infer(scene, {"when": object()}),
        ModelbitInputError,
        r"Deployment 'doubler' \(version latest\): the input cannot be sent as JSON: the value at key path "
        r"\['when'\] is of type object",
    ),
    BadInput(
        "batch value JSON cannot carry, deep in a row",
        lambda scene: infer(scene, [[1, 2], [7, {"a": [1, {"b": b"raw"}]}]]),
        ModelbitInputError,
        r"Row with ID 7 cannot be sent as JSON: column 'a' at key path \[1\]\['b'\] is of type bytes",
    ),
    BadInput(
        "batch ID beyond 64 bits",
        lambda scene: infer(scene, [[2**70, 1]]),
        ModelbitInputError,
        r"Row with ID 1180591620717411303424 cannot be sent as JSON: the ID is the integer "
        r"1180591620717411303424, outside the 64-bit range JSON readers keep exactly; send it as a string",
    ),
    BadInput(
        "batch row that is not a list",
        lambda scene: infer(scene, [[1, 2], 3]),
        ModelbitInputError,
        r"Batch row 1 for 'doubler' is 3; every row must be a list \[id, \*args\]",
    ),
    BadInput(
        "duplicate batch IDs",
        lambda scene: infer(scene, [[1, 2], [1, 3]]),
        ModelbitInputError,
        r"Row ID 1 appears more than once \(again at row 1\) for 'doubler'",
    ),
    BadInput(
        "null batch ID",
        lambda scene: infer(scene, [[None, 2]]),
        ModelbitInputError,
        r"Row 0 for 'doubler' has ID None",
    ),
    BadInput(
        "missing input column",
        lambda scene: score_table(scene, scene.write_table(numbers()), columns=["x", "age"]),
        ModelbitInputError,
        r"Input table .*in\.parquet has no column 'age'",
    ),
    BadInput(
        "duplicate IDs in a table",
        lambda scene: score_table(
            scene,
            scene.write_table(numbers().set_column(0, "key", pa.array(["a", "b", "a", "c"]))),
            id_column="key",
        ),
        ModelbitInputError,
        r"ID 'a' appears more than once in column 'key'",
    ),
    BadInput(
        "null ID in a table",
        lambda scene: score_table(
            scene,
            scene.write_table(numbers().set_column(0, "key", pa.array(["a", None, "b", "c"]))),
            id_column="key",
        ),
        ModelbitInputError,
        r"column 'key'",
    ),
    BadInput(
        "input file that does not exist",
        lambda scene: score_table(scene, scene.folder / "missing.parquet"),
        ModelbitInputError,
        r"Input table .*missing\.parquet does not exist; check input_path",
    ),
    BadInput(
        "unreadable input file",
        lambda scene: score_table(
            scene, _write_bytes(scene.folder / "garbage.parquet", b"not parquet at all")
        ),
        ModelbitInputError,
        r"garbage\.parquet",
    ),
    BadInput(
        "empty input file",
        lambda scene: score_table(scene, _write_bytes(scene.folder / "empty.csv", b"")),
        ModelbitInputError,
        r"empty\.csv",
    ),
    BadInput(
        "single row over the request size limit",
        lambda scene: score_table(
            scene,
            scene.write_table(pa.table({"x": ["y" * 5000, "z"]})),
            deployment="echo",
            batch_bytes=2048,
        ),
        ModelbitInputError,
        r"2,048.*raise batch_bytes",
    ),
    BadInput(
        "request over the server's body limit",
        with_options(lambda scene: infer(scene, "y" * 10_000, deployment="echo"), max_body_bytes=4096),
        ModelbitPayloadTooLarge,
        r"Deployment 'echo' \(version latest\): the request is too large.*HTTP 413",
    ),
    # What comes back
    BadInput(
        "deployment that raises",
        lambda scene: infer(scene, [[7, 1]], deployment="raiser"),
        ModelbitDeploymentError,
        r"Deployment 'raiser' \(version latest\) raised ValueError: boom: 1",
    ),
    BadInput(
        "deployment that times out",
        lambda scene: infer(scene, 3, deployment="sleeper", timeout_seconds=1),
        ModelbitTimeout,
        r"Deployment 'sleeper' \(version latest\): Timeout: inference exceeded 1 seconds"
        r".*raise timeout_seconds",
    ),
    BadInput(
        "HTML 502 gateway page",
        with_faults(error_rate=1.0, error_statuses=(502,)),
        ModelbitTransportError,
        r"Deployment 'doubler' \(version latest\): bad gateway \(HTTP 502: \d+ bytes of text/html",
        log=r"giving up after 4 attempts",
    ),
    BadInput(
        "non-JSON 200",
        scripted_answer(CannedResponse(200, b"<html>maintenance</html>", {"Content-Type": "text/html"}), 21),
        ModelbitTransportError,
        r"Deployment 'doubler' \(version latest\): HTTP 200 with a body that is not a JSON object",
    ),
    BadInput(
        "answer missing IDs",
        scripted_answer(json_answer(b'{"data": [[1, 2]]}'), [[1, 1], [2, 2]]),
        ModelbitIncompleteBatch,
        r"'doubler'.*2\b",
    ),
    BadInput(
        "expired results link",
        answered_with_link(expired_link),
        ModelbitLinkExpired,
        r"The results link http://127\.0\.0\.1:\d+/_links/\w+\.json answered 403: it expired",
    ),
    BadInput(
        "truncated results link URL",
        answered_with_link(truncated_link_url),
        ModelbitLinkExpired,
        r"The results link .*/_links/\w+\.json answered 403",
    ),
    BadInput(
        "results download cut short",
        with_faults([[i, i] for i in range(2000)], truncate_link_rate=1.0, response_format="links"),
        ModelbitIncompleteBatch,
        r"The results link .*/_links/\w+\.json broke off after [\d,]+ of [\d,]+ bytes",
    ),
    # Webhook deliveries
    BadInput(
        "forged webhook delivery",
        deliver("job-forged", url=lambda r: r.url("job-forged", 0, secret="f" * 32)),
        RejectedDelivery,
        r"HTTP 403: .*Callback token rejected.*stored chunks \[\]",
        log=r"rejected: Callback token does not match job 'job-forged', chunk 0",
    ),
    BadInput(
        "expired webhook delivery",
        deliver("job-expired", url=lambda r: r.url("job-expired", 0, expires_in=-5)),
        RejectedDelivery,
        r"HTTP 403: .*stored chunks \[\]",
        log=r"Callback URL for job 'job-expired', chunk 0 expired at",
    ),
    BadInput(
        "oversized webhook delivery",
        deliver("job-oversized", b'{"data": "' + b"x" * 100_000 + b'"}'),
        RejectedDelivery,
        r"HTTP 413: .*exceeds the 65536-byte limit.*stored chunks \[\]",
    ),
    BadInput(
        "webhook delivery replayed into another job",
        deliver("job-replayed", url=replayed_into_another_job),
        RejectedDelivery,
        r"HTTP 403: .*stored chunks \[\]",
        log=r"does not match job 'job-replayed', chunk 0",
    ),
    BadInput(
        "webhook delivery that is not a Modelbit answer",
        deliver("job-malformed", b"<html>hello</html>"),
        RejectedDelivery,
        r"HTTP 400: .*not valid JSON.*stored chunks \[\]",
    ),
]


def _write_bytes(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path


@pytest.fixture
def scene(
    emulator: RunningEmulator,
    scripted_server: ScriptedServer,
    receiver: RunningReceiver,
    use_connection: Callable[..., None],
    tmp_path: Path,
) -> Scene:
    """The servers, with ``modelbit_default`` pointing at the key-checking local Modelbit server."""
    use_connection(emulator.url)
    return Scene(emulator, scripted_server, receiver, use_connection, tmp_path)


class TestBadInput:
    def test_there_are_at_least_25_cases(self) -> None:
        assert len(CASES) >= 25
        assert len({case.name for case in CASES}) == len(CASES)

    @pytest.mark.parametrize("case", [pytest.param(case, id=case.name, marks=case.marks) for case in CASES])
    def test_fails_clearly_without_secrets_or_output(
        self,
        case: BadInput,
        scene: Scene,
        caplog: pytest.LogCaptureFixture,
        capfd: pytest.CaptureFixture[str],
    ) -> None:
        """Typed error; message says what and where; no key or secret anywhere; nothing at output_path."""
        caplog.set_level(logging.DEBUG)
        with pytest.raises(case.error) as raised:
            case.run(scene)
        error = raised.value
        assert raised.match(case.message)
        console = capfd.readouterr()
        # Task and hook loggers print through Airflow's structlog to the console; the rest reach caplog.
        logs = "\n".join([caplog.text, console.out, console.err])
        if case.log is not None:
            assert re.search(case.log, logs), logs
        assert leaked_secrets(str(error), repr(error), vars(error), logs) == []
        assert not scene.output.exists()
        assert [
            path.name for path in files_under(scene.output.parent) if ".checkpoint" not in str(path)
        ] == []


class TestTheDistinctiveSecretsAreUsed:
    def test_the_key_is_required_and_accepted_by_the_server(self, scene: Scene) -> None:
        """The cases above prove nothing unless the real key was in play: a good call succeeds."""
        assert infer(scene, 21)["rows"] == 1
        assert CALLBACK_SECRET and CONN_ID
