"""ModelbitHook against the real local Modelbit server (hooks/modelbit.py)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import numpy as np
import orjson
import pandas as pd
import pytest

from airflow_provider_modelbit.exceptions import (
    ModelbitAuthError,
    ModelbitConnectionError,
    ModelbitDeploymentError,
    ModelbitIncompleteBatch,
    ModelbitInputError,
    ModelbitLinkExpired,
    ModelbitNotFound,
    ModelbitPayloadTooLarge,
    ModelbitRateLimited,
    ModelbitTimeout,
    ModelbitTransportError,
)
from airflow_provider_modelbit.get_provider_info import UI_FIELD_BEHAVIOUR
from airflow_provider_modelbit.hooks.modelbit import ModelbitHook, deployment_url
from airflow_provider_modelbit.hooks.modelbit_async import ModelbitAsyncHook
from airflow_provider_modelbit.hooks.retries import (
    IDEMPOTENT_RESEND,
    NOT_SENT,
    RATE_LIMITED,
    UNAVAILABLE,
    RetryPolicy,
)
from tests.airflow_dags import NEEDS_LOOKUP_OUTSIDE_TASKS
from tests.scripted_http import CannedResponse

BASE = "https://acme.us-east-2.aws.modelbit.com"
KEY = "mi7k2q9w:Qm9vbGVhbi9TZWNyZXQ+S2V5PQ=="
MASKABLE_SECRET = "callback-signing-secret-0123456789"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _logged(capfd: pytest.CaptureFixture[str]) -> str:
    """What the hook logged: Airflow's task logging writes through structlog to the standard streams."""
    out, err = capfd.readouterr()
    return out + err


def _link_for(hook: ModelbitHook, deployment: str, data: object) -> str:
    """Ask for a links answer on the hook's session and return the link itself."""
    body = orjson.dumps({"data": data, "response_format": "links"})
    return orjson.loads(hook.get_conn().post(hook.deployment_url(deployment), data=body).content)["data"]


def _rows(count: int, start: int = 0) -> list[list[int]]:
    return [[number, number] for number in range(start, start + count)]


class TestDeploymentUrl:
    @pytest.mark.parametrize(
        ("version", "branch", "path"),
        [
            ("latest", None, "/v1/scorer/latest"),
            (3, None, "/v1/scorer/3"),
            ("3", None, "/v1/scorer/3"),
            ("official", None, "/v1/scorer/official"),
            ("v1.0", None, "/v1/scorer/v1.0"),
            ("latest", "main", "/v1/scorer/main/latest"),
            (2, "dev", "/v1/scorer/dev/2"),
            ("official", "feature/new-model", "/v1/scorer/feature~new-model/official"),
        ],
    )
    def test_url_forms(self, version: str | int, branch: str | None, path: str) -> None:
        assert deployment_url(BASE + "/", "scorer", version, branch) == BASE + path

    @pytest.mark.parametrize(
        ("deployment", "version", "branch", "bad_part"),
        [
            ("", "latest", None, "Deployment name ''"),
            ("my scorer", "latest", None, "Deployment name 'my scorer'"),
            ("scorer/x", "latest", None, "Deployment name"),
            ("../admin", "latest", None, "Deployment name"),
            ("scorer", "", None, "Version ''"),
            ("scorer", "two words", None, "Version 'two words'"),
            ("scorer", "..", None, "Version '..'"),
            ("scorer", "a/b", None, "Version 'a/b'"),
            ("scorer", -1, None, "Version -1"),
            ("scorer", "-2", None, "Version '-2'"),
            ("scorer", 0, None, "Version 0"),
            ("scorer", True, None, "Version True"),
            ("scorer", "latest", "", "Branch ''"),
            ("scorer", "latest", "my branch", "Branch 'my branch'"),
            ("scorer", "latest", "a/../b", "Branch 'a/../b'"),
            ("scorer", "latest", "/lead", "Branch '/lead'"),
            ("scorer", "latest", "trail/", "Branch 'trail/'"),
            ("scorer", "latest", "a//b", "Branch 'a//b'"),
        ],
    )
    def test_invalid_parts_are_named_before_any_request(
        self, deployment: str, version: str | int, branch: str | None, bad_part: str
    ) -> None:
        with pytest.raises(ValueError, match=bad_part) as caught:
            deployment_url(BASE, deployment, version, branch)
        assert isinstance(caught.value, ModelbitInputError)


class TestHookBasics:
    def test_class_attributes(self) -> None:
        assert (ModelbitHook.conn_name_attr, ModelbitHook.default_conn_name) == (
            "modelbit_conn_id",
            "modelbit_default",
        )
        assert (ModelbitHook.conn_type, ModelbitHook.hook_name) == ("modelbit", "Modelbit")

    def test_ui_field_behaviour_matches_provider_metadata(self) -> None:
        assert ModelbitHook.get_ui_field_behaviour() == UI_FIELD_BEHAVIOUR

    def test_creating_a_hook_reads_nothing(self) -> None:
        """No I/O in __init__: a hook for an undefined connection can be built (e.g. at DAG parse time)."""
        hook = ModelbitHook("never_defined_anywhere")
        assert hook.modelbit_conn_id == "never_defined_anywhere"
        assert ModelbitAsyncHook("never_defined_anywhere").modelbit_conn_id == "never_defined_anywhere"

    @NEEDS_LOOKUP_OUTSIDE_TASKS
    def test_missing_connection_says_what_to_set(self) -> None:
        with pytest.raises(ModelbitConnectionError) as caught:
            ModelbitHook("never_defined_anywhere").get_inference("doubler", 1)
        assert "'never_defined_anywhere'" in caught.value.message
        assert "AIRFLOW_CONN_NEVER_DEFINED_ANYWHERE" in caught.value.message

    @pytest.mark.parametrize(
        ("extra", "branch", "path"),
        [
            ({}, None, "/v1/scorer/latest"),
            ({"branch": "feature/x"}, None, "/v1/scorer/feature~x/latest"),
            ({"branch": "feature/x"}, "main", "/v1/scorer/main/latest"),
            ({}, "dev", "/v1/scorer/dev/latest"),
        ],
    )
    def test_branch_defaults_to_the_connection(
        self, hook_for, extra: dict, branch: str | None, path: str
    ) -> None:
        hook = hook_for("http://127.0.0.1:9", extra=extra)
        assert hook.deployment_url("scorer", branch=branch) == "http://127.0.0.1:9" + path


class TestGetInference:
    def test_single_input(self, emulator, hook_for) -> None:
        assert hook_for(emulator.url).get_inference("doubler", 21) == 42

    @pytest.mark.parametrize(
        ("version", "branch", "expected"),
        [
            ("latest", None, {"version": 3, "input": 5}),
            (1, None, {"version": 1, "input": 5}),
            ("official", None, {"version": 2, "input": 5}),
            (1, "dev", {"branch": "dev", "version": 1, "input": 5}),
        ],
    )
    def test_versions_aliases_and_branches(
        self, emulator, hook_for, version: str | int, branch: str | None, expected: dict
    ) -> None:
        hook = hook_for(emulator.url)
        assert hook.get_inference("versioned", 5, version=version, branch=branch) == expected

    def test_batch_rows_come_back_in_input_order(self, emulator, hook_for) -> None:
        rows = [["c", 3], ["a", 1], ["b", 2]]
        assert hook_for(emulator.url).get_inference("doubler", rows) == [["c", 6], ["a", 2], ["b", 4]]

    def test_results_sorted_by_id_are_matched_by_id(self, emulator, hook_for) -> None:
        """The server may sort results by ID; the hook still returns them in input order."""
        emulator.client.configure(sort_results_by_id=True)
        rows = [[30, 3], [10, 1], [20, 2]]
        assert hook_for(emulator.url).get_inference("doubler", rows) == [[30, 6], [10, 2], [20, 4]]

    def test_large_batch_is_chunked_by_rows(self, emulator, hook_for) -> None:
        hook = hook_for(emulator.url, batch_size=100)
        result = hook.get_inference("doubler", _rows(450))
        assert result == [[number, 2 * number] for number in range(450)]
        assert len(emulator.client.requests()) == 5

    def test_batch_is_split_by_bytes(self, emulator, hook_for) -> None:
        hook = hook_for(emulator.url, batch_bytes=2_000)
        rows = [[number, "x" * 100] for number in range(60)]
        assert [row_id for row_id, _ in hook.get_inference("echo", rows)] == list(range(60))
        sizes = [request["body_bytes"] for request in emulator.client.requests()]
        assert len(sizes) >= 3
        assert max(sizes) <= 2_000

    def test_dataframe_is_sent_as_index_and_column_objects(self, emulator, hook_for) -> None:
        frame = pd.DataFrame({"age": [31, 45], "plan": ["pro", "free"]}, index=[7, 3])
        result = hook_for(emulator.url).get_inference("echo", frame)
        assert result == [[7, {"age": 31, "plan": "pro"}], [3, {"age": 45, "plan": "free"}]]

    def test_dataframe_mode_deployment(self, emulator, hook_for) -> None:
        frame = pd.DataFrame({"age": [31, 45], "plan": ["pro", "free"]})
        result = hook_for(emulator.url).get_inference("churn_scorer", frame)
        assert [row_id for row_id, _ in result] == [0, 1]
        assert all(isinstance(score, float) for _, score in result)

    def test_numpy_ids_and_values(self, emulator, hook_for) -> None:
        rows = [[np.int64(1), np.float64("nan")], [np.int64(2), np.float32(1.5)]]
        assert hook_for(emulator.url).get_inference("echo", rows) == [[1, None], [2, 1.5]]

    def test_duplicate_ids_are_refused_before_sending(self, emulator, hook_for) -> None:
        with pytest.raises(ModelbitInputError, match="Row ID 2 appears more than once"):
            hook_for(emulator.url, batch_size=2).get_inference("doubler", [[1, 1], [2, 2], [3, 3], [2, 4]])
        assert emulator.client.requests() == []

    def test_unencodable_row_is_refused_with_its_id(self, emulator, hook_for) -> None:
        with pytest.raises(ModelbitInputError, match=r"ID 'r2'.*column 'blob'.*bytes"):
            hook_for(emulator.url).get_inference("echo", [["r1", {"blob": 1}], ["r2", {"blob": b"\x00"}]])
        assert emulator.client.requests() == []

    def test_row_larger_than_batch_bytes_is_refused(self, emulator, hook_for) -> None:
        with pytest.raises(ModelbitInputError, match="ID 'big'"):
            hook_for(emulator.url, batch_bytes=500).get_inference("echo", [["big", "x" * 1000]])

    @pytest.mark.parametrize(
        ("arguments", "match"),
        [
            ({"timeout_seconds": 0}, "timeout_seconds=0"),
            ({"timeout_seconds": 301}, "from 1 to 300"),
            ({"response_format": "csv"}, "response_format='csv'"),
            ({"version": "../x"}, "Version"),
        ],
    )
    def test_invalid_options_are_refused_before_sending(
        self, emulator, hook_for, arguments: dict, match: str
    ) -> None:
        with pytest.raises(ModelbitInputError, match=match):
            hook_for(emulator.url).get_inference("doubler", 1, **arguments)
        assert emulator.client.requests() == []

    def test_a_connection_default_over_300_is_capped_for_sync_calls_with_a_warning(
        self, emulator, hook_for, capfd
    ) -> None:
        """The connection's timeout_seconds may suit async callbacks (up to 900 s); sync calls use 300."""
        hook = hook_for(emulator.url, extra={"timeout_seconds": 600})
        assert hook.get_inference("doubler", 1) == 2
        hook.get_inference("doubler", 2)
        hook.submit_async("doubler", 1, webhook_url="http://127.0.0.1:9/hook?job=1")
        bodies = [orjson.loads(request["body"]) for request in emulator.client.requests()]
        assert [body["timeout_seconds"] for body in bodies] == [300, 300, 600]
        logged = _logged(capfd)
        assert logged.count("sets the extra timeout_seconds=600") == 1
        assert "Connection 'modelbit_default' sets the extra timeout_seconds=600" in logged

    def test_timeout_seconds_is_sent(self, emulator, hook_for) -> None:
        hook_for(emulator.url, extra={"timeout_seconds": 42}).get_inference("doubler", 1)
        hook_for(emulator.url).get_inference("doubler", 1, timeout_seconds=7)
        bodies = [orjson.loads(request["body"]) for request in emulator.client.requests()]
        assert [body.get("timeout_seconds") for body in bodies] == [42, 7]


class TestProxies:
    """The workspace session reads proxies from the environment once, when built, and uses them."""

    @pytest.fixture
    def proxy_environment(self, monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
        def configure(**variables: str) -> None:
            for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
                monkeypatch.delenv(name, raising=False)
                monkeypatch.delenv(name.upper(), raising=False)
            for name, value in variables.items():
                monkeypatch.setenv(name, value)

        return configure

    def test_a_proxy_in_the_environment_carries_every_request(
        self, emulator, hook_for, forwarding_proxy, proxy_environment
    ) -> None:
        proxy_environment(http_proxy=forwarding_proxy.url)
        hook = hook_for(emulator.url, batch_size=100)
        frame = pd.DataFrame({"x": range(250)})
        assert hook.get_inference("echo", frame) == [[n, {"x": n}] for n in range(250)]
        assert len(forwarding_proxy.forwarded) == len(emulator.client.requests()) == 3

    def test_no_proxy_keeps_the_workspace_host_direct(
        self, emulator, hook_for, forwarding_proxy, proxy_environment
    ) -> None:
        proxy_environment(http_proxy=forwarding_proxy.url, no_proxy="127.0.0.1,localhost")
        assert hook_for(emulator.url).get_inference("doubler", [[1, 2], [2, 3]]) == [[1, 4], [2, 6]]
        assert forwarding_proxy.forwarded == []


class TestLinks:
    def test_single_links_answer_is_downloaded(self, emulator, hook_for) -> None:
        assert hook_for(emulator.url).get_inference("doubler", 4, response_format="links") == 8

    def test_batch_links_answer_is_downloaded_and_matched(self, emulator, hook_for) -> None:
        emulator.client.configure(sort_results_by_id=True)
        rows = [[5, 1], [1, 2], [3, 3]]
        result = hook_for(emulator.url).get_inference("doubler", rows, response_format="links")
        assert result == [[5, 2], [1, 4], [3, 6]]

    def test_link_is_fetched_without_the_api_key(self, scripted_server, hook_for) -> None:
        """The link points at another host (object storage): it must not receive the Modelbit key."""
        link = f"{scripted_server.url}/bucket/result.json?signature=abc"
        scripted_server.script(
            CannedResponse(200, orjson.dumps({"data": link})),
            CannedResponse(200, b'{"data": [[1, 2]]}'),
        )
        result = hook_for(scripted_server.url, password=KEY).get_inference(
            "doubler", [[1, 1]], response_format="links"
        )
        assert result == [[1, 2]]
        inference, download = scripted_server.received
        assert inference["headers"]["Authorization"] == KEY
        assert download["method"] == "GET"
        assert "Authorization" not in download["headers"]

    def test_expired_link(self, emulator, hook_for) -> None:
        emulator.client.configure(link_expiry_seconds=1)
        hook = hook_for(emulator.url)
        url = _link_for(hook, "doubler", 4)
        time.sleep(2.1)
        with pytest.raises(ModelbitLinkExpired) as caught, hook.open_link(url) as pieces:
            b"".join(pieces)
        assert "signature=" not in caught.value.message

    def test_tampered_link_is_refused(self, emulator, hook_for) -> None:
        hook = hook_for(emulator.url)
        with (
            pytest.raises(ModelbitLinkExpired),
            hook.open_link(_link_for(hook, "doubler", 4) + "0") as pieces,
        ):
            b"".join(pieces)

    def test_a_download_cut_short_is_fetched_again_and_the_model_runs_once(self, emulator, hook_for) -> None:
        emulator.client.set_faults(truncate_link_first=2)
        rows = _rows(200)
        result = hook_for(emulator.url).get_inference("echo", rows, response_format="links")
        assert [row[0] for row in result] == [row[0] for row in rows]
        assert emulator.client.fault_counts() == {"truncate_link": 2}
        assert set(emulator.client.runs("echo").values()) == {1}

    def test_an_expired_link_is_not_fetched_again(self, emulator, hook_for) -> None:
        emulator.client.configure(link_expiry_seconds=1)
        hook = hook_for(emulator.url)
        url = _link_for(hook, "doubler", 4)
        time.sleep(2.1)
        fetches = []
        with pytest.raises(ModelbitLinkExpired):
            hook.read_link(url, fetches.append)
        assert fetches == []

    def test_truncated_download_is_an_incomplete_batch(self, emulator, hook_for) -> None:
        emulator.client.set_faults(truncate_link_rate=1.0)
        with pytest.raises(ModelbitIncompleteBatch, match="broke off after"):
            hook_for(emulator.url).get_inference("echo", _rows(200), response_format="links")

    def test_open_link_streams_pieces(self, emulator, hook_for) -> None:
        hook = hook_for(emulator.url)
        with hook.open_link(_link_for(hook, "echo", _rows(20_000))) as pieces:
            received = list(pieces)
        assert len(received) > 1
        assert orjson.loads(b"".join(received)) in (_rows(20_000), {"data": _rows(20_000)})


class TestErrors:
    def test_https_url_against_a_plain_http_server_is_a_tls_error_before_sending(
        self, emulator, hook_for
    ) -> None:
        """Not "after the request was sent": the handshake failed, so the model cannot have run."""
        https_url = emulator.url.replace("http://", "https://")
        with pytest.raises(ModelbitTransportError) as caught:
            hook_for(https_url).get_inference("doubler", 1, version=2, branch="feature/x")
        message = caught.value.message
        assert "TLS handshake with " + https_url + "/v1/doubler/feature~x/2 failed before" in message
        assert "version 2, branch feature/x" in message and "after the request was sent" not in message
        assert emulator.client.runs("doubler") == {}

    def test_unreachable_workspace_names_the_url_tried(self, hook_for) -> None:
        url = f"http://127.0.0.1:{_free_port()}"
        with pytest.raises(ModelbitTransportError, match=f"could not connect to {url}/v1/doubler/latest"):
            hook_for(url).get_inference("doubler", 1)

    def test_deployment_error_keeps_the_traceback(self, emulator, hook_for) -> None:
        with pytest.raises(ModelbitDeploymentError) as caught:
            hook_for(emulator.url).get_inference("raiser", 9)
        assert caught.value.message.startswith(
            "Deployment 'raiser' (version latest, branch main) raised ValueError: boom: 9"
        )
        assert "Traceback" in caught.value.traceback

    def test_failing_row_fails_the_whole_batch(self, emulator, hook_for) -> None:
        with pytest.raises(ModelbitDeploymentError, match="boom"):
            hook_for(emulator.url).get_inference("raiser", _rows(3))

    def test_unknown_deployment(self, emulator, hook_for) -> None:
        with pytest.raises(ModelbitNotFound) as caught:
            hook_for(emulator.url).get_inference("no_such_model", 1, version=4)
        assert (caught.value.deployment, caught.value.version, caught.value.status) == (
            "no_such_model",
            4,
            404,
        )

    def test_refused_key(self, emulator, hook_for) -> None:
        with pytest.raises(ModelbitAuthError) as caught:
            hook_for(emulator.url, password=KEY).get_inference("doubler", 1)
        assert KEY not in str(caught.value) and KEY not in repr(caught.value)

    def test_payload_too_large(self, emulator, hook_for) -> None:
        emulator.client.configure(max_body_bytes=1_000)
        with pytest.raises(ModelbitPayloadTooLarge, match="lower batch_size or batch_bytes"):
            hook_for(emulator.url).get_inference("echo", [[1, "x" * 2_000]])

    def test_inference_timeout(self, emulator, hook_for) -> None:
        with pytest.raises(ModelbitTimeout, match="Timeout: inference exceeded 1 seconds"):
            hook_for(emulator.url).get_inference("sleeper", 3, timeout_seconds=1)

    def test_non_json_200_is_a_transport_error_not_retried(self, scripted_server, hook_for) -> None:
        scripted_server.script(CannedResponse(200, b"<html>login page</html>", {"Content-Type": "text/html"}))
        hook = hook_for(scripted_server.url)
        with pytest.raises(ModelbitTransportError, match="HTTP 200"):
            hook.get_inference("doubler", 1)
        assert len(scripted_server.received) == 1
        assert hook.retry_stats == {}


class TestRetries:
    def test_503s_are_retried_and_every_row_runs_once(self, emulator, hook_for) -> None:
        emulator.client.set_faults(error_rate=0.4, error_statuses=(503,), seed=3)
        hook = hook_for(
            emulator.url, batch_size=10, retry_policy=RetryPolicy(max_attempts=10, initial_wait=0.01)
        )
        assert hook.get_inference("doubler", _rows(200)) == [[n, 2 * n] for n in range(200)]
        assert hook.retry_stats.get(UNAVAILABLE, 0) > 0
        assert set(emulator.client.runs("doubler").values()) == {1}

    def test_429_honours_retry_after_seconds(self, emulator, hook_for) -> None:
        emulator.client.set_faults(rate_429=0.5, retry_after=1, seed=1)
        hook = hook_for(emulator.url, batch_size=5, retry_policy=RetryPolicy(max_attempts=10))
        started = time.monotonic()
        assert len(hook.get_inference("doubler", _rows(20))) == 20
        retries = hook.retry_stats.get(RATE_LIMITED, 0)
        assert retries > 0
        assert time.monotonic() - started >= 1.0
        assert set(emulator.client.runs("doubler").values()) == {1}

    def test_rate_limit_message_in_any_status_is_retried_after_retry_after(
        self, scripted_server, hook_for
    ) -> None:
        """The docs name the message, not always its status: a 200 carrying it is a 429 all the same."""
        refusal = b'{"error": "RateLimitExceeded: Concurrency request count limit reached"}'
        scripted_server.script(
            CannedResponse(200, refusal, {"Retry-After": "1"}), CannedResponse(200, b'{"data": 5}')
        )
        hook = hook_for(scripted_server.url, retry_policy=RetryPolicy(max_attempts=3))
        started = time.monotonic()
        assert hook.get_inference("doubler", 1) == 5
        assert time.monotonic() - started >= 1.0
        assert hook.retry_stats == {RATE_LIMITED: 1}
        assert len(scripted_server.received) == 2

    def test_a_quota_refusing_throughout_is_rate_limited_after_the_attempts(
        self, scripted_server, hook_for
    ) -> None:
        quota = b'{"error": "RateLimitExceeded: Rate limit \'scoring\' of 100 requests per minute reached"}'
        scripted_server.script(*[CannedResponse(429, quota, {"Retry-After": "0"})] * 4)
        hook = hook_for(scripted_server.url)  # 4 attempts
        with pytest.raises(ModelbitRateLimited):
            hook.get_inference("doubler", 1)
        assert hook.retry_stats == {RATE_LIMITED: 3}
        assert len(scripted_server.received) == 4

    def test_a_cap_refusing_more_times_than_the_attempts_is_waited_out(
        self, scripted_server, hook_for
    ) -> None:
        """Room under an in-flight cap returns as requests finish (another batch's, say): its refusals
        spend waiting time, not attempts."""
        cap = b'{"error": "RateLimitExceeded: Concurrency request count limit reached"}'
        scripted_server.script(
            *[CannedResponse(429, cap, {"Retry-After": "0"})] * 6, CannedResponse(200, b'{"data": 5}')
        )
        hook = hook_for(scripted_server.url)  # 4 attempts
        assert hook.get_inference("doubler", 1) == 5
        assert hook.retry_stats == {RATE_LIMITED: 6}

    def test_a_cap_refusing_throughout_is_rate_limited_once_the_wait_is_spent(
        self, emulator, hook_for
    ) -> None:
        emulator.client.set_faults(rate_429=1.0, retry_after=0)
        policy = RetryPolicy(max_attempts=4, initial_wait=0.01, max_total_wait=1.0)
        hook = hook_for(emulator.url, retry_policy=policy)
        runs_before = emulator.client.runs("doubler")
        started = time.monotonic()
        with pytest.raises(ModelbitRateLimited):
            hook.get_inference("doubler", 1)
        assert time.monotonic() - started >= 0.9
        assert hook.retry_stats[RATE_LIMITED] > 3
        assert emulator.client.runs("doubler") == runs_before

    def test_retry_after_as_http_date(self, scripted_server, hook_for) -> None:
        when = datetime.now(timezone.utc) + timedelta(seconds=2)
        scripted_server.script(
            CannedResponse(
                429, b'{"error": "RateLimitExceeded"}', {"Retry-After": format_datetime(when, usegmt=True)}
            ),
            CannedResponse(200, b'{"data": 2}'),
        )
        hook = hook_for(scripted_server.url)
        started = time.monotonic()
        assert hook.get_inference("doubler", 1) == 2
        assert time.monotonic() - started >= 0.9  # HTTP dates have whole-second resolution
        assert hook.retry_stats == {RATE_LIMITED: 1}

    def test_html_502_is_retried(self, scripted_server, hook_for) -> None:
        scripted_server.script(
            CannedResponse(502, b"<html>Bad Gateway</html>", {"Content-Type": "text/html"}),
            CannedResponse(200, b'{"data": 2}'),
        )
        hook = hook_for(scripted_server.url)
        assert hook.get_inference("doubler", 1) == 2

    def test_refused_connection_is_retried_then_reported(self, hook_for) -> None:
        hook = hook_for(f"http://127.0.0.1:{_free_port()}")
        with pytest.raises(ModelbitTransportError, match="could not connect"):
            hook.get_inference("doubler", 1)
        assert hook.retry_stats == {NOT_SENT: 3}

    def test_refused_connection_recovers_when_the_server_comes_up(self, hook_for) -> None:
        """Connection refused means the request was never sent, so it is safe to send again."""
        from airflow_provider_modelbit.emulator import run_emulator

        port = _free_port()
        hook = hook_for(
            f"http://127.0.0.1:{port}",
            retry_policy=RetryPolicy(max_attempts=40, initial_wait=0.2, max_wait=0.3),
        )
        started = threading.Event()
        stop = threading.Event()

        def serve_late() -> None:
            time.sleep(0.5)
            with run_emulator(port=port):
                started.set()
                stop.wait(30)

        thread = threading.Thread(target=serve_late, daemon=True)
        thread.start()
        try:
            assert hook.get_inference("doubler", 5) == 10
        finally:
            stop.set()
            thread.join(10)
        assert hook.retry_stats.get(NOT_SENT, 0) >= 1

    def test_deployment_error_is_not_resent(self, emulator, hook_for) -> None:
        hook = hook_for(emulator.url)
        with pytest.raises(ModelbitDeploymentError):
            hook.get_inference("raiser", [[1, 1]])
        assert emulator.client.runs("raiser") == {"1": 1}
        assert hook.retry_stats == {}

    def test_connection_dropped_after_sending_is_not_resent(self, emulator, hook_for) -> None:
        """The model ran before the connection dropped: sending again would score the row twice."""
        emulator.client.set_faults(drop_after_rate=1.0)
        hook = hook_for(emulator.url)
        with pytest.raises(ModelbitTransportError, match="after the request was sent"):
            hook.get_inference("doubler", [[1, 1]])
        assert emulator.client.runs("doubler") == {"1": 1}
        assert hook.retry_stats == {}

    def test_read_timeout_is_not_resent(self, emulator, hook_for) -> None:
        emulator.client.set_faults(latency_seconds=8)
        hook = hook_for(emulator.url)
        with pytest.raises(ModelbitTimeout, match="no answer within 6 s"):
            hook.get_inference("doubler", [[1, 1]], timeout_seconds=1)
        assert len(emulator.client.requests()) == 1

    def test_idempotent_inference_is_resent_with_a_warning(self, emulator, hook_for, capfd) -> None:
        emulator.client.set_faults(drop_after_rate=0.5, seed=4)
        hook = hook_for(
            emulator.url, batch_size=5, retry_policy=RetryPolicy(max_attempts=20, initial_wait=0.01)
        )
        result = hook.get_inference("doubler", _rows(40), idempotent=True)
        assert result == [[n, 2 * n] for n in range(40)]
        assert hook.retry_stats.get(IDEMPOTENT_RESEND, 0) > 0
        assert "rows may be scored twice" in _logged(capfd)
        assert max(emulator.client.runs("doubler").values()) > 1

    def test_dropped_before_running_is_resent_when_idempotent(self, emulator, hook_for) -> None:
        emulator.client.set_faults(drop_before_rate=0.5, seed=2)
        hook = hook_for(
            emulator.url, batch_size=5, retry_policy=RetryPolicy(max_attempts=20, initial_wait=0.01)
        )
        assert len(hook.get_inference("doubler", _rows(30), idempotent=True)) == 30
        assert set(emulator.client.runs("doubler").values()) == {1}

    def test_retries_are_logged_with_attempt_reason_and_wait(self, emulator, hook_for, capfd) -> None:
        emulator.client.set_faults(error_rate=1.0, error_statuses=(503,))
        with pytest.raises(ModelbitTransportError):
            hook_for(emulator.url).get_inference("doubler", 1)
        assert "try 1 failed (service unavailable (503)); retrying in" in _logged(capfd)


class TestInferChunks:
    def test_results_in_input_order_even_when_later_chunks_finish_first(self, emulator, hook_for) -> None:
        chunks = [[[0, 0.6]], [[1, 0.0]], [[2, 0.3]], [[3, 0.0]]]
        results = list(hook_for(emulator.url).infer_chunks("sleeper", chunks, max_concurrency=4))
        assert [result.index for result in results] == [0, 1, 2, 3]
        assert [result.rows[0][0] for result in results] == [0, 1, 2, 3]
        assert results[0].seconds >= 0.6 and all(result.response_bytes > 0 for result in results)

    def test_input_is_consumed_lazily(self, emulator, hook_for) -> None:
        consumed: list[int] = []

        def chunks():
            for index in range(100):
                consumed.append(index)
                yield _rows(2, start=2 * index)

        results = hook_for(emulator.url).infer_chunks("doubler", chunks(), max_concurrency=3)
        next(results)
        assert len(consumed) <= 3
        results.close()

    @pytest.mark.parametrize("max_concurrency", [1, 2, 4])
    def test_concurrency_is_bounded(self, emulator, hook_for, max_concurrency: int) -> None:
        """The server refuses more than 4 requests in flight with a 429; the hook never needs a retry."""
        emulator.client.configure(max_inflight_requests=max_concurrency)
        hook = hook_for(emulator.url)
        chunks = [[[index, 0.2]] for index in range(8)]
        started = time.monotonic()
        results = list(hook.infer_chunks("sleeper", chunks, max_concurrency=max_concurrency))
        elapsed = time.monotonic() - started
        assert len(results) == 8
        assert hook.retry_stats == {}
        assert elapsed >= 0.2 * 8 / max_concurrency - 0.05

    def test_more_concurrency_than_the_server_allows_is_seen(self, emulator, hook_for) -> None:
        """The check above can fail: going over the server's limit shows up as 429 retries."""
        emulator.client.configure(max_inflight_requests=1)
        emulator.client.set_faults(retry_after=0)
        hook = hook_for(emulator.url, retry_policy=RetryPolicy(max_attempts=50, initial_wait=0.05))
        list(hook.infer_chunks("sleeper", [[[index, 0.2]] for index in range(4)], max_concurrency=4))
        assert hook.retry_stats.get(RATE_LIMITED, 0) > 0

    def test_links_mode_chunks_are_downloaded(self, emulator, hook_for) -> None:
        results = list(
            hook_for(emulator.url).infer_chunks("doubler", [_rows(3), _rows(3, 3)], response_format="links")
        )
        assert [row for result in results for row in result.rows] == [[n, 2 * n] for n in range(6)]

    def test_oversized_chunk_is_split_but_reported_once(self, emulator, hook_for) -> None:
        rows = [[number, "x" * 100] for number in range(50)]
        results = list(hook_for(emulator.url).infer_chunks("echo", [rows], batch_bytes=1_500))
        assert len(results) == 1 and len(results[0].rows) == 50
        assert len(emulator.client.requests()) > 1

    def test_duplicate_ids_within_a_chunk_are_refused(self, emulator, hook_for) -> None:
        with pytest.raises(ModelbitInputError, match="Row ID 1 appears more than once"):
            list(hook_for(emulator.url).infer_chunks("doubler", [[[1, 1], [1, 2]]]))


class TestSubmitAsync:
    def test_returns_the_batch_id(self, emulator, hook_for) -> None:
        batch_id = hook_for(emulator.url).submit_async(
            "doubler", [[1, 1]], webhook_url="http://127.0.0.1:9/hook?job=1"
        )
        assert len(batch_id) == 32
        body = orjson.loads(emulator.client.requests()[0]["body"])
        assert body["response_webhook"] == "http://127.0.0.1:9/hook?job=1"

    def test_batch_id_falls_back_to_the_header(self, scripted_server, hook_for) -> None:
        scripted_server.script(CannedResponse(202, b"{}", {"x-mb-batch-id": "abc123"}))
        hook = hook_for(scripted_server.url)
        assert (
            hook.submit_async("doubler", 1, webhook_url="https://example.com/hook", timeout_seconds=900)
            == "abc123"
        )
        body = orjson.loads(scripted_server.received[0]["body"])
        assert body == {"data": 1, "timeout_seconds": 900, "response_webhook": "https://example.com/hook"}

    def test_a_missing_batch_id_is_logged_and_the_submission_counts_as_accepted(
        self, scripted_server, hook_for, capfd: pytest.CaptureFixture[str]
    ) -> None:
        """Modelbit documents no shape for the immediate answer: no batchId is not a failure."""
        scripted_server.script(CannedResponse(202, b"{}", {}))
        hook = hook_for(scripted_server.url)
        assert hook.submit_async("doubler", 1, webhook_url="https://example.com/hook") is None
        assert "accepted without a batchId" in _logged(capfd)
        assert len(scripted_server.received) == 1, "sent once, not again"

    def test_async_timeout_limit_is_900(self, emulator, hook_for) -> None:
        with pytest.raises(ModelbitInputError, match="from 1 to 900"):
            hook_for(emulator.url).submit_async("doubler", 1, webhook_url="https://x/h", timeout_seconds=901)


class TestTestConnection:
    def test_reachable_workspace_with_accepted_key(self, emulator, hook_for) -> None:
        ok, message = hook_for(emulator.url, password="k1").test_connection()
        assert ok and "the API key was accepted" in message
        assert emulator.client.runs("doubler") == {}

    def test_refused_key(self, emulator, hook_for) -> None:
        ok, message = hook_for(emulator.url, password=KEY).test_connection()
        assert not ok and "refused the API key" in message and KEY not in message

    def test_unreachable_host(self, hook_for) -> None:
        ok, message = hook_for(f"http://127.0.0.1:{_free_port()}").test_connection()
        assert not ok and "Cannot reach" in message

    def test_unknown_host_name(self, hook_for) -> None:
        ok, message = hook_for("http://no-such-host.invalid").test_connection()
        assert not ok and "Cannot reach" in message

    def test_unknown_deployment_in_another_form(self, scripted_server, hook_for) -> None:
        """A workspace that answers an unknown deployment with a 400 still shows a workspace."""
        scripted_server.script(CannedResponse(400, b'{"error": "Deployment __t__ does not exist"}'))
        ok, message = hook_for(scripted_server.url).test_connection()
        assert ok and scripted_server.url in message

    def test_not_a_modelbit_server(self, scripted_server, hook_for) -> None:
        scripted_server.script(CannedResponse(200, b"<html>hello</html>", {"Content-Type": "text/html"}))
        ok, message = hook_for(scripted_server.url).test_connection()
        assert not ok and "does not look like a Modelbit workspace" in message

    @NEEDS_LOOKUP_OUTSIDE_TASKS
    def test_missing_connection_does_not_raise(self) -> None:
        ok, message = ModelbitHook("never_defined_anywhere").test_connection()
        assert not ok and "AIRFLOW_CONN_NEVER_DEFINED_ANYWHERE" in message


class TestSecrets:
    @pytest.mark.parametrize("form", ["uri", "json"])
    def test_key_is_never_logged_or_shown(
        self, modelbit_emulator_session, modelbit_connection, capfd, form: str
    ) -> None:
        emulator = modelbit_emulator_session
        emulator.client.reset()
        emulator.client.configure(api_keys=[KEY], require_api_keys=True)
        host, port = emulator.url.removeprefix("http://").split(":")
        if form == "uri":
            modelbit_connection(
                host=host,
                port=int(port),
                password=KEY,
                extra={"scheme": "http", "callback_secret": MASKABLE_SECRET},
                form="uri",
            )
        else:
            modelbit_connection(host=emulator.url, password=KEY, extra={"callback_secret": MASKABLE_SECRET})
        hook = ModelbitHook(retry_policy=RetryPolicy(max_attempts=2, initial_wait=0.01))
        shown: list[str] = [repr(hook), repr(hook.settings), str(hook.settings)]
        assert hook.get_inference("doubler", 2) == 4
        for call in (
            lambda: hook.get_inference("raiser", 1),
            lambda: hook.get_inference("nothing_here", 1),
        ):
            with pytest.raises(Exception) as caught:
                call()
            shown += [str(caught.value), repr(caught.value)]
        shown.append(str(hook.test_connection()))
        emulator.client.reset()
        assert hook.settings.api_key == KEY
        logged = _logged(capfd)
        assert "Modelbit doubler version latest: single input" in logged
        for text in [*shown, logged]:
            assert KEY not in text
            assert MASKABLE_SECRET not in text

    def test_key_is_registered_for_redaction(self, modelbit_connection) -> None:
        from airflow.sdk._shared.secrets_masker import redact

        modelbit_connection(
            host="http://127.0.0.1:9", password=KEY, extra={"callback_secret": MASKABLE_SECRET}
        )
        ModelbitHook().settings  # noqa: B018 -- reading the settings masks the secrets
        assert KEY not in str(redact(f"Authorization: {KEY}"))
        assert MASKABLE_SECRET not in str(redact(f"secret {MASKABLE_SECRET}"))


class TestRequestLink:
    def test_returns_the_link_without_downloading_it(self, emulator, hook_for) -> None:
        hook = hook_for(emulator.url)
        url = hook.request_link("doubler", [[2, 1], [1, 2]], version=1)
        assert url.startswith(emulator.url + "/_links/")
        with hook.open_link(url) as pieces:
            assert orjson.loads(b"".join(pieces)) in ([[1, 4], [2, 2]], {"data": [[1, 4], [2, 2]]})

    def test_single_input(self, emulator, hook_for) -> None:
        hook = hook_for(emulator.url)
        with hook.open_link(hook.request_link("doubler", 5)) as pieces:
            assert orjson.loads(b"".join(pieces)) in (10, {"data": 10})

    def test_duplicate_ids_are_refused_before_sending(self, emulator, hook_for) -> None:
        with pytest.raises(ModelbitInputError, match="appears more than once"):
            hook_for(emulator.url).request_link("doubler", [[1, 1], [1, 2]])
        assert emulator.client.requests() == []
