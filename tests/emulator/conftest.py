"""Shared fixtures: a running emulator, an HTTP client, and a real webhook receiver."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from airflow_provider_modelbit.emulator import RunningEmulator, run_emulator


@pytest.fixture(scope="module")
def shared_emulator() -> Iterator[RunningEmulator]:
    """One emulator per test module, reset before each test that uses ``emulator``."""
    with run_emulator(webhook_time_scale=0.01) as server:
        yield server


@pytest.fixture
def emulator(shared_emulator: RunningEmulator) -> RunningEmulator:
    shared_emulator.client.reset()
    return shared_emulator


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(trust_env=False, timeout=30) as client:
        yield client


@dataclass
class Delivery:
    path: str
    headers: dict[str, str]
    body: Any
    time: float


@dataclass
class WebhookReceiver:
    """A real HTTP receiver; answers with ``statuses`` in turn (then 200), after ``delay`` seconds."""

    url: str
    deliveries: list[Delivery] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    delay: float = 0.0

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Delivery]:
        deadline = time.monotonic() + timeout
        while len(self.deliveries) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.deliveries


def _handler_for(receiver_ref: list[WebhookReceiver]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            receiver = receiver_ref[0]
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            receiver.deliveries.append(
                Delivery(
                    self.path, {k.lower(): v for k, v in self.headers.items()}, json.loads(body), time.time()
                )
            )
            time.sleep(receiver.delay)
            status = receiver.statuses.pop(0) if receiver.statuses else 200
            self.send_response(status)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    reference: list[WebhookReceiver] = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(reference))
    server.daemon_threads = True
    reference.append(WebhookReceiver(f"http://127.0.0.1:{server.server_address[1]}/hook"))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield reference[0]
    server.shutdown()
    server.server_close()
