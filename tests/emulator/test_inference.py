"""The ``/v1/`` inference route, replaying the protocol document's examples (§1-§9, §12)."""

from __future__ import annotations

import concurrent.futures
import shutil
import subprocess
import time
from typing import Any

import httpx
import pytest

from airflow_provider_modelbit.emulator import RunningEmulator

ROWS_DOUBLED = ([[1, 10], [2, 11], [3, 12]], [[1, 20], [2, 22], [3, 24]])


def post(
    http: httpx.Client, emulator: RunningEmulator, path: str, body: Any, **kwargs: Any
) -> httpx.Response:
    return http.post(emulator.url + path, json=body, **kwargs)


class TestDocumentedExamples:
    """Every request example of the protocol document gets the documented answer."""

    @pytest.mark.parametrize(
        ("path", "data", "expected"),
        [
            ("/v1/doubler/latest", 10, 20),  # §4
            ("/v1/echo/latest", {"value": 10}, {"value": 10}),  # §4 object → one argument
            ("/v1/echo/latest", [1, "two", 3.0], [1, "two", 3.0]),  # §4 array → positional
            ("/v1/doubler/latest", ROWS_DOUBLED[0], ROWS_DOUBLED[1]),  # §5
            (
                "/v1/echo/latest",
                [[1, {"my_key": 25}], [2, {"my_key": 30}]],
                [[1, {"my_key": 25}], [2, {"my_key": 30}]],
            ),
            (
                "/v1/echo/latest",
                [[1, 1, "two", 3.0], [2, 4, "five", 6.0]],
                [[1, [1, "two", 3.0]], [2, [4, "five", 6.0]]],
            ),
            ("/v1/doubler/main/latest", 10, 20),  # §1 the official client's form
            ("/v1/doubler/1", 10, 20),
            ("/v1/versioned/official", 5, {"version": 2, "input": 5}),
            ("/v1/doubler/latest", [], []),  # §5.1 empty batch
        ],
    )
    def test_example(
        self, http: httpx.Client, emulator: RunningEmulator, path: str, data: Any, expected: Any
    ) -> None:
        response = post(http, emulator, path, {"data": data})
        assert response.status_code == 200
        assert response.json() == {"data": expected}

    def test_dataframe_rows_get_one_probability_per_id(
        self, http: httpx.Client, emulator: RunningEmulator
    ) -> None:
        """§5.2: row index as ID, an object of columns per row, one result per row."""
        rows = [
            [0, {"tenure_months": 31, "monthly_spend": 20.5, "plan": "pro"}],
            [1, {"tenure_months": 2, "monthly_spend": 99.0, "plan": "free"}],
        ]
        answer = post(http, emulator, "/v1/churn_scorer/latest", {"data": rows}).json()["data"]
        assert [row[0] for row in answer] == [0, 1]
        assert all(0.0 <= row[1] <= 1.0 for row in answer)
        assert answer[1][1] > answer[0][1]  # short tenure on the free plan churns more
        assert post(http, emulator, "/v1/churn_scorer/latest", {"data": rows}).json()["data"] == answer

    @pytest.mark.skipif(shutil.which("curl") is None, reason="needs the curl binary")
    def test_plain_curl_without_content_type(self, emulator: RunningEmulator) -> None:
        """The documented ``curl -XPOST ... -d '{"data": ...}'`` form (form-encoded Content-Type) works."""
        output = subprocess.run(
            ["curl", "-s", "-XPOST", f"{emulator.url}/v1/doubler/latest", "-d", '{"data": 10}'],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
        assert output == '{"data":20}'


class TestUrlForms:
    """§12.2 and §12.19: both URL forms, latest/number/alias, branches with ``~``, 404 for the unknown."""

    @pytest.mark.parametrize(
        ("path", "expected"),
        [
            ("/v1/versioned/latest", {"version": 3, "input": 1}),
            ("/v1/versioned/2", {"version": 2, "input": 1}),
            ("/v1/versioned/main/1", {"version": 1, "input": 1}),
            ("/v1/versioned/main/official", {"version": 2, "input": 1}),
            ("/v1/versioned/dev/latest", {"branch": "dev", "version": 1, "input": 1}),
            ("/v1/versioned/feature~dev/1", {"branch": "dev", "version": 1, "input": 1}),
        ],
    )
    def test_resolves(self, http: httpx.Client, emulator: RunningEmulator, path: str, expected: Any) -> None:
        assert post(http, emulator, path, {"data": 1}).json() == {"data": expected}

    @pytest.mark.parametrize(
        "path",
        [
            "/v1/nope/latest",
            "/v1/versioned/4",
            "/v1/versioned/unknown_alias",
            "/v1/versioned/nobranch/latest",
            "/v1/versioned/dev/2",
            "/v1/versioned",
            "/v1/versioned/main/latest/extra",
            "/v1/versioned/latest/",
        ],
    )
    def test_unknown_is_404(self, http: httpx.Client, emulator: RunningEmulator, path: str) -> None:
        response = post(http, emulator, path, {"data": 1})
        assert response.status_code == 404
        assert response.json()["error"].startswith("Deployment not found")

    @pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH", "HEAD"])
    def test_other_methods_are_405(self, http: httpx.Client, emulator: RunningEmulator, method: str) -> None:
        response = http.request(method, emulator.url + "/v1/doubler/latest")
        assert response.status_code == 405
        if method != "HEAD":
            assert response.json() == {
                "error": "Method not allowed: inference takes POST, not " + method + "."
            }


class TestContentAndMetadata:
    """§12.3, §12.4 and §12.18."""

    def test_any_content_type_is_parsed_as_json(self, http: httpx.Client, emulator: RunningEmulator) -> None:
        response = http.post(
            emulator.url + "/v1/doubler/latest",
            content=b'{"data": 4}',
            headers={"content-type": "text/plain"},
        )
        assert response.json() == {"data": 8}

    def test_answers_are_json_utf8_with_only_data(
        self, http: httpx.Client, emulator: RunningEmulator
    ) -> None:
        response = post(http, emulator, "/v1/doubler/latest", {"data": 1})
        assert response.headers["content-type"] == "application/json; charset=utf-8"
        assert "x-mb-batch-id" not in response.headers
        assert list(response.json()) == ["data"]

    def test_unknown_top_level_fields_are_ignored(
        self, http: httpx.Client, emulator: RunningEmulator
    ) -> None:
        assert post(http, emulator, "/v1/doubler/latest", {"data": 2, "colour": "blue"}).json() == {"data": 4}


class TestAuthentication:
    """§12.5: keys optional or required; a present unknown key always fails; no Bearer stripping."""

    @pytest.mark.parametrize(
        ("require", "header", "status"),
        [
            (False, None, 200),
            (False, "k1", 200),
            (False, "wrong", 401),
            (True, None, 401),
            (True, "k1", 200),
            (True, "Bearer k1", 401),
            (True, "k2", 401),
        ],
    )
    def test_key_rules(
        self, http: httpx.Client, emulator: RunningEmulator, require: bool, header: str | None, status: int
    ) -> None:
        emulator.client.configure(require_api_keys=require, api_keys=["k1"])
        headers = {} if header is None else {"authorization": header}
        response = post(http, emulator, "/v1/doubler/latest", {"data": 1}, headers=headers)
        assert response.status_code == status
        if status == 401:
            assert response.json()["error"].startswith(
                "API key required" if header is None else "Invalid API key"
            )
            assert "k1" not in response.text

    def test_keys_are_never_recorded(self, http: httpx.Client, emulator: RunningEmulator) -> None:
        post(http, emulator, "/v1/doubler/latest", {"data": 1}, headers={"authorization": "k1"})
        record = emulator.client.requests()[-1]
        assert record["has_authorization"] is True
        assert record["headers"]["authorization"] == "<redacted>"


class TestWorkspaces:
    """§12.1: the leftmost Host label picks a configured workspace, anything else the default."""

    def test_host_label_selects_workspace(self, http: httpx.Client, emulator: RunningEmulator) -> None:
        emulator.client.configure(workspaces={"acme": {"require_api_keys": True, "api_keys": ["acme-key"]}})
        acme = {"host": "acme.us-east-1.aws.modelbit.com"}
        assert post(http, emulator, "/v1/doubler/latest", {"data": 1}, headers=acme).status_code == 401
        ok = post(
            http, emulator, "/v1/doubler/latest", {"data": 1}, headers={**acme, "authorization": "acme-key"}
        )
        assert ok.json() == {"data": 2}
        other = post(
            http, emulator, "/v1/doubler/latest", {"data": 1}, headers={"host": "other.app.modelbit.com"}
        )
        assert other.status_code == 200
        assert [r["workspace"] for r in emulator.client.requests()] == ["acme", "acme", "default"]


class TestValidation:
    """§12.6 and §12.7: invalid requests are 400 with a message saying what to fix."""

    @pytest.mark.parametrize(
        ("body", "message"),
        [
            (b"not json", "not valid JSON"),
            (b"[1, 2]", "must be a JSON object"),
            (b'{"value": 1}', 'no "data" field'),
            (b'{"data": 1, "response_format": "csv"}', '"response_format" must be "links"'),
            (b'{"data": 1, "response_webhook": "ftp://x/y"}', "must be an https URL"),
            (b'{"data": 1, "response_webhook": 5}', "must be a URL string"),
            (b'{"data": 1, "response_webhook_ignore_timeout": true}', "only allowed with"),
            (
                b'{"data": 1, "response_webhook": "https://x/y", "response_webhook_ignore_timeout": "yes"}',
                "true or false",
            ),
            (b'{"data": 1, "timeout_seconds": 0}', "from 1 to 300"),
            (b'{"data": 1, "timeout_seconds": 301}', "from 1 to 300"),
            (b'{"data": 1, "timeout_seconds": 2.5}', "from 1 to 300"),
            (b'{"data": 1, "timeout_seconds": true}', "from 1 to 300"),
            (b'{"data": 1, "timeout_seconds": 901, "response_webhook": "https://x/y"}', "from 1 to 900"),
            (b'{"data": [[1, 2], 3]}', "index 1 must be a non-empty array"),
            (b'{"data": [[1, 2], []]}', "index 1 must be a non-empty array"),
        ],
    )
    def test_rejected(self, http: httpx.Client, emulator: RunningEmulator, body: bytes, message: str) -> None:
        response = http.post(emulator.url + "/v1/doubler/latest", content=body)
        assert response.status_code == 400
        assert message in response.json()["error"]

    def test_http_webhook_needs_allow_http_option(
        self, http: httpx.Client, emulator: RunningEmulator
    ) -> None:
        emulator.client.configure(allow_http_webhooks=False)
        body = {"data": 1, "response_webhook": "http://127.0.0.1:9/hook"}
        assert post(http, emulator, "/v1/doubler/latest", body).status_code == 400


class TestBatchExecution:
    """§12.9: per-row calls, whole-request failure, request order or sorted by ID, duplicate IDs kept."""

    def test_request_order_option(self, http: httpx.Client, emulator: RunningEmulator) -> None:
        """Older docs: results in request order."""
        emulator.client.configure(sort_results_by_id=False)
        rows = [["b", 1], ["a", 2], [3, 3]]
        assert post(http, emulator, "/v1/doubler/latest", {"data": rows}).json() == {
            "data": [["b", 2], ["a", 4], [3, 6]]
        }

    def test_sorted_by_id_by_default(self, http: httpx.Client, emulator: RunningEmulator) -> None:
        """The newest docs: results sorted by ID, so clients must match them by ID."""
        rows = [[3, 1], [1, 2], [2, 3]]
        assert post(http, emulator, "/v1/doubler/latest", {"data": rows}).json() == {
            "data": [[1, 4], [2, 6], [3, 2]]
        }

    def test_duplicate_ids_are_not_rejected(self, http: httpx.Client, emulator: RunningEmulator) -> None:
        assert post(http, emulator, "/v1/doubler/latest", {"data": [[1, 1], [1, 2]]}).json() == {
            "data": [[1, 2], [1, 4]]
        }

    def test_failing_row_fails_the_whole_request(self, http: httpx.Client, emulator: RunningEmulator) -> None:
        response = post(http, emulator, "/v1/raiser/latest", {"data": [[7, "x"], [8, "y"]]})
        assert response.status_code == 200
        body = response.json()
        assert list(body) == ["error"]
        assert "row ID 7" in body["error"]
        assert "Traceback (most recent call last)" in body["error"]
        assert body["error"].splitlines()[-1] == "ValueError: boom: x"


class TestDataFrameMode:
    """§12.10: one DataFrame per request, missing columns null, one result per row."""

    def test_missing_columns_are_null(self, http: httpx.Client, emulator: RunningEmulator) -> None:
        answer = post(http, emulator, "/v1/churn_scorer/latest", {"data": [[5, {"plan": "pro"}]]}).json()
        assert answer["data"][0][0] == 5 and 0 <= answer["data"][0][1] <= 1

    def test_single_object_builds_one_row(self, http: httpx.Client, emulator: RunningEmulator) -> None:
        row = {"tenure_months": 3, "monthly_spend": 10.0, "plan": "free"}
        single = post(http, emulator, "/v1/churn_scorer/latest", {"data": row}).json()["data"]
        batch = post(http, emulator, "/v1/churn_scorer/latest", {"data": [[0, row]]}).json()["data"]
        assert single == batch[0][1]

    @pytest.mark.parametrize("data", [[[0, 1]], [[0, {"plan": "pro"}, 2]], 7])
    def test_rows_of_wrong_shape_are_400(
        self, http: httpx.Client, emulator: RunningEmulator, data: Any
    ) -> None:
        response = post(http, emulator, "/v1/churn_scorer/latest", {"data": data})
        assert response.status_code == 400
        assert "DataFrame" in response.json()["error"]


class TestDeploymentErrors:
    """§12.11: traceback text in ``error``, status 200 by default, 400 or 500 when configured."""

    @pytest.mark.parametrize("status", [200, 400, 500])
    def test_status_is_configurable(self, http: httpx.Client, emulator: RunningEmulator, status: int) -> None:
        emulator.client.configure(deployment_error_status=status)
        response = post(http, emulator, "/v1/raiser/latest", {"data": 3})
        assert response.status_code == status
        assert response.json()["error"].endswith("ValueError: boom: 3")


class TestTimeouts:
    """§12.12: the running call is bounded; error text; status 200 or 504; next call is a cold start."""

    @pytest.mark.parametrize("status", [200, 504])
    def test_expiry(self, http: httpx.Client, emulator: RunningEmulator, status: int) -> None:
        emulator.client.configure(timeout_status=status)
        response = post(http, emulator, "/v1/sleeper/latest", {"data": 1.5, "timeout_seconds": 1})
        assert response.status_code == status
        assert response.json() == {"error": "Timeout: inference exceeded 1 seconds"}
        post(http, emulator, "/v1/sleeper/latest", {"data": 0})
        assert [r["cold_start"] for r in emulator.client.requests()] == [False, True]

    def test_within_limit_succeeds(self, http: httpx.Client, emulator: RunningEmulator) -> None:
        assert post(http, emulator, "/v1/sleeper/latest", {"data": 0.1, "timeout_seconds": 5}).json() == {
            "data": 0.1
        }

    def test_sleeper_does_not_block_other_requests(
        self, http: httpx.Client, emulator: RunningEmulator
    ) -> None:
        with concurrent.futures.ThreadPoolExecutor(1) as pool, httpx.Client(trust_env=False) as other:
            slow = pool.submit(post, other, emulator, "/v1/sleeper/latest", {"data": 3.0})
            time.sleep(0.3)
            started = time.monotonic()
            assert post(http, emulator, "/v1/doubler/latest", {"data": 1}).json() == {"data": 2}
            assert time.monotonic() - started < 2.0
            assert not slow.done()
            assert slow.result().json() == {"data": 3.0}
