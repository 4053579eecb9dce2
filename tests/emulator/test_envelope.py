"""Parsing and validation of the request envelope."""

from __future__ import annotations

import pytest

from airflow_provider_modelbit.emulator.envelope import RequestRejected, parse_envelope


class TestParseEnvelope:
    @pytest.mark.parametrize(
        ("body", "is_batch", "rows"),
        [
            (b'{"data": 10}', False, 1),
            (b'{"data": {"a": [1]}}', False, 1),
            (b'{"data": [1, [2]]}', False, 1),  # first element not an array: single, positional
            (b'{"data": []}', True, 0),
            (b'{"data": [[1, 2], ["x"]]}', True, 2),
        ],
    )
    def test_single_or_batch(self, body: bytes, is_batch: bool, rows: int) -> None:
        envelope = parse_envelope(body, allow_http_webhooks=False)
        assert (envelope.is_batch, envelope.row_count) == (is_batch, rows)

    @pytest.mark.parametrize(
        ("body", "timeout", "is_async"),
        [
            (b'{"data": 1}', 300, False),
            (b'{"data": 1, "timeout_seconds": 300}', 300, False),
            (b'{"data": 1, "timeout_seconds": 900, "response_webhook": "https://h/x"}', 900, True),
        ],
    )
    def test_timeouts(self, body: bytes, timeout: int, is_async: bool) -> None:
        envelope = parse_envelope(body, allow_http_webhooks=False)
        assert (envelope.timeout_seconds, envelope.is_async) == (timeout, is_async)

    @pytest.mark.parametrize(
        ("url", "allow_http", "accepted"),
        [
            ("https://h/x?a=1", False, True),
            ("http://h/x", False, False),
            ("http://h/x", True, True),
            ("https:///x", True, False),
        ],
    )
    def test_webhook_scheme(self, url: str, allow_http: bool, accepted: bool) -> None:
        body = b'{"data": 1, "response_webhook": "%s"}' % url.encode()
        if accepted:
            assert parse_envelope(body, allow_http_webhooks=allow_http).webhook_url == url
        else:
            with pytest.raises(RequestRejected) as rejected:
                parse_envelope(body, allow_http_webhooks=allow_http)
            assert rejected.value.status == 400

    def test_links_and_ignore_timeout(self) -> None:
        envelope = parse_envelope(
            b'{"data": 1, "response_format": "links", "response_webhook": "https://h/", '
            b'"response_webhook_ignore_timeout": true}',
            allow_http_webhooks=False,
        )
        assert envelope.links and envelope.webhook_ignore_timeout
