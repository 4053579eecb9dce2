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
    ModelbitError,
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
    :param where: a regular expression for the location the message must name: the connection or
        URL, the deployment with its version and branch, the file, column and row, the row ID and key
        path, the chunk and its input rows, or the job and chunk of a webhook delivery.
    :param log: a regular expression the captured logs must match, when the log is where details go.
    :param marks: pytest marks of the case.
    """

    name: str
    run: Callable[[Scene], Any]
    error: type[Exception]
    message: str
    where: str = ""
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


def infer_to_xcom(scene: Scene, data: Any, **arguments: Any) -> Any:
    """Run ModelbitInferenceOperator returning its result through XCom (no output_path)."""
    operator = ModelbitInferenceOperator(task_id="score", deployment="doubler", data=data, **arguments)
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


#: How every deployment-level message names its target: deployment, version and branch.
DOUBLER = r"Deployment 'doubler' \(version latest, branch main\)"

# --- The table -----------------------------------------------------------------------------------

CASES = [
    # The connection
    BadInput(
        "no connection",
        lambda scene: infer(scene, 21, modelbit_conn_id="modelbit_nowhere"),
        ModelbitConnectionError,
        r"Connection 'modelbit_nowhere' is not defined.*AIRFLOW_CONN_MODELBIT_NOWHERE",
        marks=(NEEDS_LOOKUP_OUTSIDE_TASKS,),
        where="Connection 'modelbit_nowhere'",
    ),
    BadInput(
        "workspace URL without a host",
        with_connection(lambda scene: "https://"),
        ModelbitConnectionError,
        r"Connection 'modelbit_default' has an unusable workspace URL 'https://'",
        where="Connection 'modelbit_default' has an unusable workspace URL 'https://'",
    ),
    BadInput(
        "workspace URL with another scheme",
        with_connection(lambda scene: "ftp://acme.modelbit.com"),
        ModelbitConnectionError,
        r"unusable workspace URL 'ftp://acme\.modelbit\.com'.*set Host to a full URL",
        where=r"Connection 'modelbit_default' has an unusable workspace URL 'ftp://acme\.modelbit\.com'",
    ),
    BadInput(
        "workspace URL with a malformed port",
        with_connection(lambda scene: "http://127.0.0.1:99999"),
        ModelbitConnectionError,
        r"unusable workspace URL 'http://127\.0\.0\.1:99999'",
        where=r"Connection 'modelbit_default' has an unusable workspace URL 'http://127\.0\.0\.1:99999'",
    ),
    BadInput(
        "unreachable host",
        with_connection(lambda scene: "http://127.0.0.1:9"),
        ModelbitTransportError,
        DOUBLER + r": could not connect to "
        r"http://127\.0\.0\.1:9/v1/doubler/latest .*Workspace URL of connection 'modelbit_default'",
        where=DOUBLER + r": could not connect to http://127\.0\.0\.1:9/v1/doubler/latest",
    ),
    BadInput(
        "https workspace URL on a plain-HTTP server",
        with_connection(lambda scene: scene.emulator.url.replace("http://", "https://"), API_KEY),
        ModelbitTransportError,
        DOUBLER + r": the TLS handshake with "
        r"https://127\.0\.0\.1:\d+/v1/doubler/latest failed before anything was sent; "
        r"if the server speaks plain HTTP, use an http:// Workspace URL",
        where=DOUBLER + r": the TLS handshake with https://127\.0\.0\.1:\d+/v1/doubler/latest",
    ),
    BadInput(
        "wrong API key",
        with_connection(lambda scene: scene.emulator.url, WRONG_API_KEY),
        ModelbitAuthError,
        DOUBLER + r": Modelbit refused the API key; check the API Key of "
        r"connection 'modelbit_default' \(HTTP 401",
        where=DOUBLER + r".*connection 'modelbit_default'",
    ),
    BadInput(
        "API key required but missing",
        with_connection(lambda scene: scene.emulator.url, None),
        ModelbitAuthError,
        DOUBLER + r": Modelbit refused the API key.*HTTP 401",
        where=DOUBLER,
    ),
    # What is called
    BadInput(
        "unknown deployment",
        lambda scene: infer(scene, 21, deployment="no_such_model"),
        ModelbitNotFound,
        r"Deployment 'no_such_model' \(version latest, branch main\): not found; check the deployment name",
        where=r"Deployment 'no_such_model' \(version latest, branch main\)",
    ),
    BadInput(
        "unknown version",
        lambda scene: infer(scene, 21, deployment="versioned", version=99),
        ModelbitNotFound,
        r"Deployment 'versioned' \(version 99, branch main\): not found",
        where=r"Deployment 'versioned' \(version 99, branch main\)",
    ),
    BadInput(
        "unknown alias",
        lambda scene: infer(scene, 21, deployment="versioned", version="gold"),
        ModelbitNotFound,
        r"Deployment 'versioned' \(version gold, branch main\): not found",
        where=r"Deployment 'versioned' \(version gold, branch main\)",
    ),
    BadInput(
        "unknown branch",
        lambda scene: infer(scene, 21, deployment="versioned", branch="no-such-branch"),
        ModelbitNotFound,
        r"Deployment 'versioned' \(version latest, branch no-such-branch\): not found",
        where=r"Deployment 'versioned' \(version latest, branch no-such-branch\)",
    ),
    BadInput(
        "deployment name climbing out of the path",
        lambda scene: infer(scene, 21, deployment="../x"),
        ModelbitInputError,
        r"Deployment name '\.\./x' is invalid: use letters, digits and underscores",
        where=r"Deployment name '\.\./x'",
    ),
    BadInput(
        "deployment name with spaces",
        lambda scene: infer(scene, 21, deployment="my model"),
        ModelbitInputError,
        r"Deployment name 'my model' is invalid",
        where="Deployment name 'my model'",
    ),
    BadInput(
        "empty deployment name",
        lambda scene: infer(scene, 21, deployment=""),
        ModelbitInputError,
        r"Deployment name '' is invalid",
        where="Deployment name ''",
    ),
    BadInput(
        "version climbing out of the path",
        lambda scene: infer(scene, 21, version="../x"),
        ModelbitInputError,
        r"Version '\.\./x' is invalid",
        where=r"Version '\.\./x'",
    ),
    BadInput(
        "branch with spaces",
        lambda scene: infer(scene, 21, branch="my branch"),
        ModelbitInputError,
        r"Branch 'my branch' is invalid",
        where="Branch 'my branch'",
    ),
    BadInput(
        "timeout_seconds of zero",
        lambda scene: infer(scene, 21, timeout_seconds=0),
        ModelbitInputError,
        r"timeout_seconds=0 is invalid for inference: use a whole number of seconds from 1 to 300",
        where="timeout_seconds=0",
    ),
    BadInput(
        "timeout_seconds over the sync limit",
        lambda scene: infer(scene, 21, timeout_seconds=301),
        ModelbitInputError,
        r"timeout_seconds=301 is invalid",
        where="timeout_seconds=301",
    ),
    # The data
    BadInput(
        "single input JSON cannot carry",
        lambda scene: infer(scene, {"when": object()}),
        ModelbitInputError,
        DOUBLER + r": the input cannot be sent as JSON: the value at key path "
        r"\['when'\] is of type object",
        where=DOUBLER + r": the input cannot be sent as JSON: the value at key path \['when'\]",
    ),
    BadInput(
        "batch value JSON cannot carry, deep in a row",
        lambda scene: infer(scene, [[1, 2], [7, {"a": [1, {"b": b"raw"}]}]]),
        ModelbitInputError,
        r"Row with ID 7 cannot be sent as JSON: column 'a' at key path \[1\]\['b'\] is of type bytes",
        where=r"Row with ID 7 .*column 'a' at key path \[1\]\['b'\]",
    ),
    BadInput(
        "batch ID beyond 64 bits",
        lambda scene: infer(scene, [[2**70, 1]]),
        ModelbitInputError,
        r"Row with ID 1180591620717411303424 cannot be sent as JSON: the ID is the integer "
        r"1180591620717411303424, outside the 64-bit range JSON readers keep exactly; send it as a string",
        where="Row with ID 1180591620717411303424 .*the ID",
    ),
    BadInput(
        "batch row that is not a list",
        lambda scene: infer(scene, [[1, 2], 3]),
        ModelbitInputError,
        r"Batch row 1 for 'doubler' is 3; every row must be a list \[id, \*args\]",
        where="Batch row 1 for 'doubler'",
    ),
    BadInput(
        "duplicate batch IDs",
        lambda scene: infer(scene, [[1, 2], [1, 3]]),
        ModelbitInputError,
        r"Row ID 1 appears more than once \(again at row 1\) for 'doubler'",
        where=r"Row ID 1 .*\(again at row 1\) for 'doubler'",
    ),
    BadInput(
        "null batch ID",
        lambda scene: infer(scene, [[None, 2]]),
        ModelbitInputError,
        r"Row 0 for 'doubler' has ID None",
        where="Row 0 for 'doubler'",
    ),
    BadInput(
        "missing input column",
        lambda scene: score_table(scene, scene.write_table(numbers()), columns=["x", "age"]),
        ModelbitInputError,
        r"Input table .*in\.parquet has no column 'age'",
        where=r"Input table \S*in\.parquet has no column 'age'",
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
        where=r"column 'key' of input \S*in\.parquet \(again at row 2\)",
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
        where=r"column 'key' of input \S*in\.parquet is empty at row 1",
    ),
    BadInput(
        "input file that does not exist",
        lambda scene: score_table(scene, scene.folder / "missing.parquet"),
        ModelbitInputError,
        r"Input table .*missing\.parquet does not exist; check input_path",
        where=r"Input table \S*missing\.parquet",
    ),
    BadInput(
        "unreadable input file",
        lambda scene: score_table(
            scene, _write_bytes(scene.folder / "garbage.parquet", b"not parquet at all")
        ),
        ModelbitInputError,
        r"garbage\.parquet",
        where=r"input file \S*garbage\.parquet as parquet",
    ),
    BadInput(
        "empty input file",
        lambda scene: score_table(scene, _write_bytes(scene.folder / "empty.csv", b"")),
        ModelbitInputError,
        r"empty\.csv",
        where=r"\S*empty\.csv",
    ),
    BadInput(
        "CSV value that does not fit its declared column type",
        lambda scene: score_table(
            scene, _write_bytes(scene.folder / "typed.csv", b"key,x\n1,2\n2,two\n"), column_types={"x": "int"}
        ),
        ModelbitInputError,
        r"holds 'two', which does not fit the type column_types gives it",
        where=r"\S*typed\.csv: column 'x' at row 1",
    ),
    BadInput(
        "unknown column type name",
        lambda scene: score_table(scene, scene.write_table(numbers()), column_types={"x": "zipcode"}),
        ModelbitInputError,
        r"the type 'zipcode', which is not a type name",
        where=r"column 'x'",
    ),
    BadInput(
        "folder whose subfolders are not partitions",
        lambda scene: score_table(scene, _nested_folder(scene.folder / "nested")),
        ModelbitInputError,
        r"holds no Parquet files .* other subfolders are not read",
        where=r"Directory \S*nested",
    ),
    BadInput(
        "result field that result_schema does not list",
        lambda scene: score_table(
            scene,
            scene.write_table(numbers()),
            deployment="echo",
            argument_style="object",
            result_schema={"y": "int"},
        ),
        ModelbitInputError,
        r"which result_schema does not list",
        where=r"field\(s\) 'x'",
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
        where="Row with ID 0 encodes to",
    ),
    BadInput(
        "request over the server's body limit",
        with_options(lambda scene: infer(scene, "y" * 10_000, deployment="echo"), max_body_bytes=4096),
        ModelbitPayloadTooLarge,
        r"Deployment 'echo' \(version latest, branch main\): the request is too large.*HTTP 413",
        where=r"Deployment 'echo' \(version latest, branch main\)",
    ),
    # What comes back
    BadInput(
        "deployment that raises",
        lambda scene: infer(scene, [[7, 1]], deployment="raiser"),
        ModelbitDeploymentError,
        r"Deployment 'raiser' \(version latest, branch main\) raised ValueError: boom: 1",
        where=r"Deployment 'raiser' \(version latest, branch main\)",
    ),
    BadInput(
        "deployment that raises in a batch chunk",
        lambda scene: score_table(scene, scene.write_table(numbers()), deployment="raiser", batch_size=2),
        ModelbitDeploymentError,
        r"raised ValueError: boom",
        where=r"Deployment 'raiser' \(version latest, branch main\).*\[chunk 0 \(input rows 0 to 1\)\]",
    ),
    BadInput(
        "deployment that times out",
        lambda scene: infer(scene, 3, deployment="sleeper", timeout_seconds=1),
        ModelbitTimeout,
        r"Deployment 'sleeper' \(version latest, branch main\): Timeout: inference exceeded 1 seconds"
        r".*raise timeout_seconds",
        where=r"Deployment 'sleeper' \(version latest, branch main\)",
    ),
    BadInput(
        "HTML 502 gateway page",
        with_faults(error_rate=1.0, error_statuses=(502,)),
        ModelbitTransportError,
        DOUBLER + r": bad gateway \(HTTP 502: \d+ bytes of text/html",
        log=r"giving up after 4 tries",
        where=DOUBLER,
    ),
    BadInput(
        "non-JSON 200",
        scripted_answer(CannedResponse(200, b"<html>maintenance</html>", {"Content-Type": "text/html"}), 21),
        ModelbitTransportError,
        DOUBLER + r": HTTP 200 with a body that is not a JSON object",
        where=DOUBLER,
    ),
    BadInput(
        "answer missing IDs",
        scripted_answer(json_answer(b'{"data": [[1, 2]]}'), [[1, 1], [2, 2]]),
        ModelbitIncompleteBatch,
        r"answered a batch of 2 rows with missing IDs \[2\] \(1\) and unexpected IDs none",
        where=DOUBLER + " answered",
    ),
    BadInput(
        "answer with an extra ID",
        scripted_answer(json_answer(b'{"data": [[1, 2], [2, 4], [9, 18]]}'), [[1, 1], [2, 2]]),
        ModelbitIncompleteBatch,
        r"missing IDs none and unexpected IDs \[9\] \(1\); the batch was not used",
        where=DOUBLER + " answered",
    ),
    BadInput(
        "answer that is not a batch",
        scripted_answer(json_answer(b'{"data": {"1": 2}}'), [[1, 1]]),
        ModelbitIncompleteBatch,
        r"answered a batch with dict instead of a list of \[id, result\] rows",
        where=DOUBLER + " answered",
    ),
    BadInput(
        "result too large for XCom",
        lambda scene: infer_to_xcom(scene, [[i, i] for i in range(50)], max_xcom_bytes=64),
        ModelbitError,
        r"the result is over 64 bytes of JSON, too large to return through XCom.*Set output_path",
        where=DOUBLER + ": the result is over",
    ),
    BadInput(
        "results links too large for XCom",
        lambda scene: infer_to_xcom(
            scene, [[i, i] for i in range(50)], max_xcom_bytes=64, response_format="links"
        ),
        ModelbitError,
        r"the result is over 64 bytes of JSON, too large to return through XCom",
        where=DOUBLER + ": the result is over",
    ),
    BadInput(
        "expired results link",
        answered_with_link(expired_link),
        ModelbitLinkExpired,
        r"The results link http://127\.0\.0\.1:\d+/_links/\w+\.json answered 403: it expired",
        where=r"The results link http://127\.0\.0\.1:\d+/_links/\w+\.json",
    ),
    BadInput(
        "truncated results link URL",
        answered_with_link(truncated_link_url),
        ModelbitLinkExpired,
        r"The results link .*/_links/\w+\.json answered 403",
        where=r"The results link http://127\.0\.0\.1:\d+/_links/\w+\.json",
    ),
    BadInput(
        "results download cut short",
        with_faults([[i, i] for i in range(2000)], truncate_link_rate=1.0, response_format="links"),
        ModelbitIncompleteBatch,
        r"The results link .*/_links/\w+\.json broke off after [\d,]+ of [\d,]+ bytes",
        where=r"The results link http://127\.0\.0\.1:\d+/_links/\w+\.json",
    ),
    # Webhook deliveries
    BadInput(
        "forged webhook delivery",
        deliver("job-forged", url=lambda r: r.url("job-forged", 0, secret="f" * 32)),
        RejectedDelivery,
        r"HTTP 403: .*Callback token rejected.*stored chunks \[\]",
        log=r"rejected: Callback token does not match job 'job-forged', chunk 0",
        where=r"stored chunks \[\]",
    ),
    BadInput(
        "expired webhook delivery",
        deliver("job-expired", url=lambda r: r.url("job-expired", 0, expires_in=-5)),
        RejectedDelivery,
        r"HTTP 403: .*stored chunks \[\]",
        log=r"Callback URL for job 'job-expired', chunk 0 expired at",
        where=r"stored chunks \[\]",
    ),
    BadInput(
        "oversized webhook delivery",
        deliver("job-oversized", b'{"data": "' + b"x" * 100_000 + b'"}'),
        RejectedDelivery,
        r"HTTP 413: .*exceeds the 65536-byte limit.*stored chunks \[\]",
        where=r"stored chunks \[\]",
    ),
    BadInput(
        "webhook delivery replayed into another job",
        deliver("job-replayed", url=replayed_into_another_job),
        RejectedDelivery,
        r"HTTP 403: .*stored chunks \[\]",
        log=r"does not match job 'job-replayed', chunk 0",
        where=r"stored chunks \[\]",
    ),
    BadInput(
        "webhook delivery that is not a Modelbit answer",
        deliver("job-malformed", b"<html>hello</html>"),
        RejectedDelivery,
        r"HTTP 400: .*not valid JSON.*stored chunks \[\]",
        where=r"stored chunks \[\]",
    ),
]


def _nested_folder(folder: Path) -> Path:
    (folder / "january").mkdir(parents=True)
    pq.write_table(numbers(), folder / "january" / "part-0.parquet")
    return folder


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
        assert case.where, f"case {case.name!r} names no location to check"
        assert re.search(case.where, str(error)), f"{str(error)!r} does not name {case.where!r}"
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
