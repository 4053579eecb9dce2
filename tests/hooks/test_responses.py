"""What answers mean (hooks/responses.py): real answers of the local server mapped to errors."""

from __future__ import annotations

from typing import Any

import pytest
import requests

from airflow_provider_modelbit.exceptions import (
    ModelbitAuthError,
    ModelbitBadRequest,
    ModelbitDeploymentError,
    ModelbitError,
    ModelbitNotFound,
    ModelbitPayloadTooLarge,
    ModelbitRateLimited,
    ModelbitTimeout,
    ModelbitTransportError,
)
from airflow_provider_modelbit.hooks.responses import (
    answer_failure,
    connection_test_verdict,
    link_location,
    parse_answer,
    redact_tokens,
)
from airflow_provider_modelbit.hooks.settings import ModelbitSettings
from tests.scripted_http import CannedResponse

COUNT_LIMIT = b'{"error": "RateLimitExceeded: Concurrency request count limit reached"}'
SIZE_LIMIT = b'{"error": "RateLimitExceeded: Concurrency request size limit reached"}'
TRACEBACK_LIMIT = b'{"error": "Traceback (most recent call last):\\nRateLimitExceeded: openai"}'

KEY = "mi9z8y7x:Secret/Key+Value="


def _post(url: str, body: dict[str, Any], key: str | None = None) -> requests.Response:
    headers = {"Authorization": key} if key else {}
    return requests.post(url, json=body, headers=headers, timeout=30)


def _parse(response: requests.Response, deployment: str = "doubler") -> dict[str, Any]:
    return parse_answer(
        response.status_code, response.headers, response.content, deployment=deployment, version="latest"
    )


class TestParseAnswerWithTheLocalServer:
    @pytest.mark.parametrize(
        ("options", "path", "body", "key", "error", "status"),
        [
            pytest.param({}, "/v1/nope/latest", {"data": 1}, None, ModelbitNotFound, 404, id="404-unknown"),
            pytest.param(
                {}, "/v1/doubler/latest", {"data": 1}, "wrong-key", ModelbitAuthError, 401, id="401"
            ),
            pytest.param(
                {"require_api_keys": True},
                "/v1/doubler/latest",
                {"data": 1},
                None,
                ModelbitAuthError,
                401,
                id="401-required",
            ),
            pytest.param(
                {},
                "/v1/doubler/latest",
                {"data": 1, "timeout_seconds": 0},
                None,
                ModelbitBadRequest,
                400,
                id="400",
            ),
            pytest.param(
                {"max_body_bytes": 100},
                "/v1/doubler/latest",
                {"data": "x" * 200},
                None,
                ModelbitPayloadTooLarge,
                413,
                id="413",
            ),
            pytest.param(
                {}, "/v1/raiser/latest", {"data": 3}, None, ModelbitDeploymentError, 200, id="raise-200"
            ),
            pytest.param(
                {"deployment_error_status": 500},
                "/v1/raiser/latest",
                {"data": 3},
                None,
                ModelbitDeploymentError,
                500,
                id="raise-500",
            ),
            pytest.param(
                {},
                "/v1/sleeper/latest",
                {"data": 3, "timeout_seconds": 1},
                None,
                ModelbitTimeout,
                200,
                id="timeout-200",
            ),
            pytest.param(
                {"timeout_status": 504},
                "/v1/sleeper/latest",
                {"data": 3, "timeout_seconds": 1},
                None,
                ModelbitTimeout,
                504,
                id="timeout-504",
            ),
        ],
    )
    def test_error_kinds(
        self, emulator, options: dict, path: str, body: dict, key: str | None, error: type, status: int
    ) -> None:
        if options:
            emulator.client.configure(**options)
        response = _post(emulator.url + path, body, key)
        with pytest.raises(error) as caught:
            _parse(response, deployment=path.split("/")[2])
        assert caught.value.status == status
        assert (
            f"Deployment {path.split('/')[2]!r} (version latest, branch of the connection)"
            in caught.value.message
        )

    def test_deployment_error_message_is_the_traceback_last_line(self, emulator) -> None:
        response = _post(emulator.url + "/v1/raiser/latest", {"data": 7})
        with pytest.raises(ModelbitDeploymentError) as caught:
            _parse(response, "raiser")
        assert "raised ValueError: boom: 7" in caught.value.message
        assert caught.value.traceback.startswith("Traceback")
        assert caught.value.traceback.rstrip().endswith("ValueError: boom: 7")

    def test_rate_limit_carries_retry_after(self, emulator) -> None:
        emulator.client.set_faults(rate_429=1.0, retry_after=2)
        with pytest.raises(ModelbitRateLimited) as caught:
            _parse(_post(emulator.url + "/v1/doubler/latest", {"data": 1}))
        assert caught.value.retry_after == 2.0

    def test_injected_503_is_a_transport_error_with_its_status(self, emulator) -> None:
        emulator.client.set_faults(error_rate=1.0, error_statuses=(503,))
        with pytest.raises(ModelbitTransportError) as caught:
            _parse(_post(emulator.url + "/v1/doubler/latest", {"data": 1}))
        assert caught.value.status == 503

    def test_auth_error_never_names_the_key(self, emulator) -> None:
        with pytest.raises(ModelbitAuthError) as caught:
            _parse(_post(emulator.url + "/v1/doubler/latest", {"data": 1}, KEY))
        assert KEY not in str(caught.value)
        assert "API Key of connection 'modelbit_default'" in caught.value.message

    def test_success_returns_the_answer_object(self, emulator) -> None:
        assert _parse(_post(emulator.url + "/v1/doubler/latest", {"data": 21})) == {"data": 42}


class TestParseAnswerWithNonModelbitAnswers:
    @pytest.mark.parametrize(
        ("canned", "error", "status"),
        [
            pytest.param(
                CannedResponse(502, b"<html><body>Bad Gateway</body></html>", {"Content-Type": "text/html"}),
                ModelbitTransportError,
                502,
                id="html-502",
            ),
            pytest.param(
                CannedResponse(200, b"<html>welcome</html>", {"Content-Type": "text/html"}),
                ModelbitTransportError,
                200,
                id="html-200",
            ),
            pytest.param(CannedResponse(200, b"[1, 2]"), ModelbitTransportError, 200, id="json-not-object"),
            pytest.param(
                CannedResponse(200, b'{"error": "KeyError: x"}'),
                ModelbitDeploymentError,
                200,
                id="error-on-200",
            ),
            pytest.param(CannedResponse(500, b""), ModelbitTransportError, 500, id="empty-500"),
            pytest.param(
                CannedResponse(
                    200, b'{"error": "RateLimitExceeded: Concurrency request count limit reached"}'
                ),
                ModelbitRateLimited,
                200,
                id="rate-limit-message-on-200",
            ),
            pytest.param(
                CannedResponse(
                    500, b'{"error": "RateLimitExceeded: Concurrency request size limit reached"}'
                ),
                ModelbitRateLimited,
                500,
                id="rate-limit-message-on-500",
            ),
            pytest.param(
                CannedResponse(503, b'{"error": "Deployment is at capacity"}'),
                ModelbitRateLimited,
                503,
                id="capacity-message",
            ),
            pytest.param(
                CannedResponse(
                    200, b'{"error": "Traceback (most recent call last):\\nRateLimitExceeded: openai"}'
                ),
                ModelbitDeploymentError,
                200,
                id="traceback-mentioning-a-rate-limit-is-the-deployment's",
            ),
            pytest.param(
                CannedResponse(504, b"<html>Gateway Timeout</html>"), ModelbitTimeout, 504, id="504"
            ),
            pytest.param(
                CannedResponse(503, b'{"error": "ServiceUnavailable: scaling up"}'),
                ModelbitTransportError,
                503,
                id="json-503-stays-retryable",
            ),
        ],
    )
    def test_gateway_and_foreign_answers(
        self, scripted_server, canned: CannedResponse, error: type, status: int
    ) -> None:
        """Any non-2xx fails even without JSON; a 2xx that is not a JSON object is a transport error."""
        scripted_server.script(canned)
        with pytest.raises(error) as caught:
            _parse(_post(scripted_server.url + "/v1/doubler/latest", {"data": 1}))
        assert caught.value.status == status
        assert isinstance(caught.value, ModelbitError)


class TestRefusals:
    """Which error answers say the server did not take the request (nothing queued, nothing run)."""

    @pytest.mark.parametrize(
        ("status", "body", "refused"),
        [
            pytest.param(400, b'{"error": "bad timeout_seconds"}', True, id="400"),
            pytest.param(401, b'{"error": "Invalid API key"}', True, id="401"),
            pytest.param(403, b"<html>Forbidden</html>", True, id="403"),
            pytest.param(404, b'{"error": "Deployment not found: nope"}', True, id="404"),
            pytest.param(405, b'{"error": "Method not allowed"}', True, id="405"),
            pytest.param(413, b'{"error": "Request too large"}', True, id="413"),
            pytest.param(429, b'{"error": "RateLimitExceeded: per-minute"}', True, id="429"),
            pytest.param(200, COUNT_LIMIT, True, id="rate-limit-message-on-200"),
            pytest.param(502, b"<html>Bad Gateway</html>", True, id="502"),
            pytest.param(503, b"<html>Service Unavailable</html>", True, id="503"),
            pytest.param(504, b"<html>Gateway Timeout</html>", False, id="504-may-have-been-passed-on"),
            pytest.param(200, b'{"error": "Timeout: inference exceeded 5 seconds"}', False, id="timeout"),
            pytest.param(200, TRACEBACK_LIMIT, False, id="deployment-traceback"),
            pytest.param(500, b"<html>Internal Server Error</html>", False, id="500"),
            pytest.param(200, b"<html>welcome</html>", False, id="2xx-not-json"),
        ],
    )
    def test_error_answers(self, status: int, body: bytes, refused: bool) -> None:
        with pytest.raises(ModelbitError) as caught:
            parse_answer(status, {}, body, deployment="doubler", version="latest")
        failure = answer_failure(caught.value, {})
        assert (failure.request_sent, failure.refused) == (True, refused)


class TestRedaction:
    TOKEN = "ab" * 32

    def test_a_webhook_url_echoed_by_the_local_server_is_redacted(self, emulator) -> None:
        """The local server's 400 for a plain-http webhook quotes the URL: no error carries its token."""
        emulator.client.configure(allow_http_webhooks=False)
        webhook = f"http://airflow.internal/v1/callbacks/c/job/0?expires=1&token={self.TOKEN}"
        body = {"data": [[1, 1]], "response_webhook": webhook}
        response = _post(emulator.url + "/v1/doubler/latest", body)
        assert response.status_code == 400 and self.TOKEN in response.text, "the server echoes the URL"
        with pytest.raises(ModelbitBadRequest) as caught:
            _parse(response)
        assert "token=***" in caught.value.message
        assert self.TOKEN not in str(caught.value) and self.TOKEN not in repr(vars(caught.value))

    def test_a_traceback_is_redacted_too(self) -> None:
        body = b'{"error": "Traceback (most recent call last):\\nValueError: posting to https://x/?token=%s"}'
        with pytest.raises(ModelbitDeploymentError) as caught:
            parse_answer(200, {}, body % self.TOKEN.encode(), deployment="doubler", version="latest")
        assert self.TOKEN not in caught.value.message and self.TOKEN not in caught.value.traceback

    @pytest.mark.parametrize(
        "text",
        [
            f"'http://h/v1/callbacks/c/j/0?expires=1&token={TOKEN}'",
            f"http://h/v1/callbacks/c/j/0?token={TOKEN}&expires=1",
            f"http%3A%2F%2Fh%2Fv1%3Fexpires%3D1%26token%3D{TOKEN}",
        ],
        ids=["quoted", "first-parameter", "percent-encoded"],
    )
    def test_redact_tokens(self, text: str) -> None:
        assert self.TOKEN not in redact_tokens(text)


class TestLinkHelpers:
    def test_location_drops_the_signature(self) -> None:
        url = "https://bucket.example.com/results/abc.json?expires=1&signature=deadbeef"
        assert link_location(url) == "https://bucket.example.com/results/abc.json"


class TestConnectionTestVerdict:
    SETTINGS = ModelbitSettings("modelbit_default", "http://127.0.0.1:1", api_key="k1")

    @pytest.mark.parametrize(
        ("status", "body", "ok", "words"),
        [
            (404, b'{"error": "Deployment not found"}', True, "the API key was accepted"),
            (400, b'{"error": "Deployment __x__ does not exist"}', True, "the API key was accepted"),
            (200, b'{"error": "Unknown deployment: __x__"}', True, "the API key was accepted"),
            (500, b'{"error": "No deployment named __x__ was found"}', True, "the API key was accepted"),
            (
                429,
                b'{"error": "RateLimitExceeded: Concurrency request count limit reached"}',
                True,
                "accepted",
            ),
            (401, b'{"error": "Invalid API key"}', False, "refused the API key"),
            (403, b'{"error": "Forbidden"}', False, "check the API Key of connection 'modelbit_default'"),
            (200, b"<html></html>", False, "does not look like a Modelbit workspace"),
            (404, b"Not Found", False, "does not look like a Modelbit workspace"),
            (500, b'{"error": "x"}', False, "does not look like a Modelbit workspace"),
        ],
    )
    def test_reads_the_answer(self, status: int, body: bytes, ok: bool, words: str) -> None:
        verdict = connection_test_verdict(status, {}, body, self.SETTINGS)
        assert verdict[0] is ok
        assert words in verdict[1]
