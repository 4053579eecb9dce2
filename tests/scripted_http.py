"""
A scripted HTTP server on 127.0.0.1, for answers the local Modelbit server never gives.

Also a forward proxy, and :func:`accepts_connections`, the probe of whether anything listens.

It answers canned responses in turn (an HTML gateway page, ``Retry-After`` as an HTTP date, a
batchId only in the header, a link server that records request headers) and records each request.
"""

from __future__ import annotations

import http.client
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import pytest


def accepts_connections(url: str, timeout: float = 5) -> bool:
    """Whether anything accepts a TCP connection at ``url``'s host and port."""
    address = urlsplit(url)
    try:
        socket.create_connection((address.hostname, address.port), timeout=timeout).close()
    except OSError:
        return False
    return True


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


@dataclass
class ForwardingProxy:
    """A plain HTTP forward proxy on 127.0.0.1: what ``HTTP_PROXY`` points at, recording each request."""

    url: str
    forwarded: list[str] = field(default_factory=list)


def _proxy_handler_for(proxy: ForwardingProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _forward(self) -> None:
            # A client talking to a proxy names the whole URL in the request line.
            target = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            proxy.forwarded.append(self.path)
            headers = {
                name: value for name, value in self.headers.items() if name.lower() != "proxy-connection"
            }
            upstream = http.client.HTTPConnection(target.hostname or "", target.port, timeout=60)
            try:
                path = target.path + (f"?{target.query}" if target.query else "")
                upstream.request(self.command, path, body=body, headers=headers)
                answer = upstream.getresponse()
                content = answer.read()
            finally:
                upstream.close()
            self.send_response(answer.status)
            for name, value in answer.getheaders():
                if name.lower() not in ("content-length", "transfer-encoding", "connection"):
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(content)))
            self.end_headers()
            self.wfile.write(content)

        do_GET = do_POST = _forward

        def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
            pass

    return Handler


@pytest.fixture
def forwarding_proxy() -> Iterator[ForwardingProxy]:
    """A forward HTTP proxy on a free 127.0.0.1 port."""
    proxy = ForwardingProxy(url="")
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _proxy_handler_for(proxy))
    proxy.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield proxy
    httpd.shutdown()
    httpd.server_close()
