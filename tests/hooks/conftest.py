"""Fixtures of the hook tests: hooks bound to a local server, and a scripted HTTP server.

The scripted server answers canned responses for protocol variants the Modelbit emulator never
produces (an HTML gateway page, ``Retry-After`` as an HTTP date, a batchId only in the header,
a link server that records request headers). It is a real HTTP server on 127.0.0.1.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from airflow_provider_modelbit.hooks.modelbit import ModelbitAsyncHook, ModelbitHook
from airflow_provider_modelbit.hooks.retries import RetryPolicy

FAST_RETRIES = RetryPolicy(max_attempts=4, initial_wait=0.01, max_wait=2.0, max_total_wait=10.0)


@dataclass(frozen=True)
class CannedResponse:
    """One scripted answer."""

    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class ScriptedServer:
    """A local HTTP server answering canned responses in turn (the last one repeats)."""

    url: str
    responses: list[CannedResponse]
    received: list[dict] = field(default_factory=list)

    def script(self, *responses: CannedResponse) -> None:
        self.responses[:] = responses


def _handler_for(server: ScriptedServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            server.received.append(
                {"method": self.command, "path": self.path, "headers": dict(self.headers), "body": body}
            )
            canned = server.responses.pop(0) if len(server.responses) > 1 else server.responses[0]
            self.send_response(canned.status)
            for name, value in {"Content-Length": str(len(canned.body)), **canned.headers}.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(canned.body)

        do_GET = do_POST = _answer

        def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
            pass

    return Handler


@pytest.fixture
def scripted_server() -> Iterator[ScriptedServer]:
    """A scripted HTTP server on a free 127.0.0.1 port."""
    scripted = ScriptedServer(url="", responses=[CannedResponse(200, b'{"data": null}')])
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(scripted))
    scripted.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield scripted
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def hook_for(modelbit_connection) -> Callable[..., ModelbitHook]:
    """Build a sync hook whose connection points at ``url`` (fast retries unless told otherwise)."""

    def build(
        url: str, *, password: str | None = None, extra: dict | None = None, **hook_args
    ) -> ModelbitHook:
        modelbit_connection(host=url, password=password, extra=extra)
        hook_args.setdefault("retry_policy", FAST_RETRIES)
        return ModelbitHook(**hook_args)

    return build


@pytest.fixture
def async_hook_for(modelbit_connection) -> Callable[..., ModelbitAsyncHook]:
    """Build an async hook whose connection points at ``url`` (fast retries unless told otherwise)."""

    def build(url: str, *, password: str | None = None, **hook_args) -> ModelbitAsyncHook:
        modelbit_connection(host=url, password=password)
        hook_args.setdefault("retry_policy", FAST_RETRIES)
        return ModelbitAsyncHook(**hook_args)

    return build


@pytest.fixture
def emulator(modelbit_emulator_session):
    """The session's Modelbit emulator, with records, faults and options reset around each test."""
    modelbit_emulator_session.client.reset()
    yield modelbit_emulator_session
    modelbit_emulator_session.client.reset()
