"""
A small HTTP/1.1 server on asyncio and httptools.

The emulator needs control over the socket that ASGI servers do not give: closing a connection
without any response (a dropped request), or announcing a ``Content-Length`` and closing the
connection before the body is complete (a truncated download). This module provides exactly that,
plus keep-alive, pipelined requests, ``Content-Length`` and chunked request bodies,
``Expect: 100-continue`` and a request-body size limit.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from urllib.parse import unquote

import httptools
import orjson

log = logging.getLogger(__name__)

JSON_CONTENT_TYPE = "application/json; charset=utf-8"
FILE_CHUNK_BYTES = 256 * 1024


@dataclass
class HttpRequest:
    """
    One parsed request.

    :param method: the HTTP method.
    :param path: the percent-decoded path.
    :param query: the raw query string.
    :param headers: header values by lower-case name.
    :param body: the complete body (empty when it was too large).
    :param body_too_large: the body exceeded the size limit and was discarded.
    """

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    body_too_large: bool = False


@dataclass
class HttpResponse:
    """
    A complete response held in memory.

    :param status: the HTTP status.
    :param body: the body bytes.
    :param content_type: the ``Content-Type`` header.
    :param headers: extra headers.
    """

    status: int
    body: bytes = b""
    content_type: str = JSON_CONTENT_TYPE
    headers: tuple[tuple[str, str], ...] = ()


@dataclass
class FileResponse:
    """
    A response streamed from a file on disk.

    :param path: the file to send.
    :param content_type: the ``Content-Type`` header.
    :param send_bytes: send only this many bytes, then close the connection (a truncated download);
        ``Content-Length`` still announces the whole file.
    """

    path: Path
    content_type: str = JSON_CONTENT_TYPE
    send_bytes: int | None = None


class DropConnection:
    """Close the TCP connection without writing any response."""


DROP_CONNECTION = DropConnection()

Reply = HttpResponse | FileResponse | DropConnection
Handler = Callable[[HttpRequest], Awaitable[Reply]]


def status_line(status: int) -> bytes:
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = "Unknown"
    return f"HTTP/1.1 {status} {reason}\r\n".encode("latin-1")


def response_head(
    status: int, content_type: str, length: int, headers: tuple[tuple[str, str], ...], keep_alive: bool
) -> bytes:
    lines = [f"content-type: {content_type}", f"content-length: {length}", "server: modelbit-emulator"]
    lines.extend(f"{name}: {value}" for name, value in headers)
    if not keep_alive:
        lines.append("connection: close")
    return status_line(status) + ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class HttpConnection(asyncio.Protocol):
    """
    One client connection: parses requests and answers them in order.

    :param handler: coroutine turning a request into a reply.
    :param max_body_bytes: returns the current request-body limit (it can change at run time).
    :param open_connections: the server's set of live connections, so that stopping can close them.
    """

    def __init__(
        self, handler: Handler, max_body_bytes: Callable[[], int], open_connections: set[HttpConnection]
    ) -> None:
        self._handler = handler
        self._open_connections = open_connections
        self._max_body_bytes = max_body_bytes
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._pending: deque[tuple[HttpRequest, bool]] = deque()
        self._worker: asyncio.Task[None] | None = None
        self._writable = asyncio.Event()
        self._writable.set()
        self._closed = False
        self._ignore_input = False
        self._reset_message()

    # asyncio.Protocol ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop transports are not subclasses
        self._open_connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._open_connections.discard(self)
        self._closed = True
        self._writable.set()

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    def data_received(self, data: bytes) -> None:
        if self._ignore_input:
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._reject_and_close(400, b'{"error": "Protocol upgrades are not supported"}')
        except httptools.HttpParserError as error:
            self._reject_and_close(
                400, orjson.dumps({"error": f"Malformed HTTP request: {str(error)[:200]}"})
            )

    # httptools callbacks ---------------------------------------------------------------------

    def _reset_message(self) -> None:
        self._url = bytearray()
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._body_size = 0
        self._too_large = False

    def on_message_begin(self) -> None:
        self._reset_message()

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        announced = self._headers.get("content-length", "")
        too_large = announced.isdigit() and int(announced) > self._max_body_bytes()
        expects_continue = self._headers.get("expect", "").lower() == "100-continue"
        if too_large and expects_continue:
            # The client waits for permission before sending: answer now and never read the body.
            self._too_large = True
            self._ignore_input = True
            self._enqueue(self._build_request(), keep_alive=False)
        elif too_large:
            self._too_large = True
        elif expects_continue and self._transport is not None:
            self._transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        if self._too_large:
            return
        self._body_size += len(body)
        if self._body_size > self._max_body_bytes():
            self._too_large = True
            self._body.clear()
            return
        self._body.append(body)

    def on_message_complete(self) -> None:
        if self._ignore_input:
            return
        self._enqueue(self._build_request(), keep_alive=self._parser.should_keep_alive())

    # answering -------------------------------------------------------------------------------

    def _build_request(self) -> HttpRequest:
        url = httptools.parse_url(bytes(self._url))
        return HttpRequest(
            method=self._parser.get_method().decode("latin-1"),
            path=unquote(url.path.decode("latin-1")),
            query=(url.query or b"").decode("latin-1"),
            headers=self._headers,
            body=b"".join(self._body),
            body_too_large=self._too_large,
        )

    def _enqueue(self, request: HttpRequest, keep_alive: bool) -> None:
        self._pending.append((request, keep_alive))
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(self._answer_pending())

    async def _answer_pending(self) -> None:
        while self._pending and not self._closed:
            request, keep_alive = self._pending.popleft()
            try:
                reply = await self._handler(request)
            except Exception:
                log.exception("Unhandled error answering %s %s", request.method, request.path)
                reply = HttpResponse(500, b'{"error": "Internal emulator error; see the emulator log"}')
            if self._closed:
                return
            if not await self._send(reply, keep_alive, head_only=request.method == "HEAD"):
                return

    async def _send(self, reply: Reply, keep_alive: bool, head_only: bool) -> bool:
        """Write one reply; False when the connection was closed by it."""
        assert self._transport is not None
        if isinstance(reply, DropConnection):
            self._close()
            return False
        if isinstance(reply, FileResponse):
            complete = await self._send_file(reply, keep_alive, head_only)
            if not complete:
                self._close()
                return False
        else:
            head = response_head(reply.status, reply.content_type, len(reply.body), reply.headers, keep_alive)
            self._transport.writelines([head] if head_only else [head, reply.body])
        if not keep_alive:
            self._close()
            return False
        return True

    async def _send_file(self, reply: FileResponse, keep_alive: bool, head_only: bool) -> bool:
        """Stream a file in chunks, honouring flow control; False when it was cut short on purpose."""
        assert self._transport is not None
        size = reply.path.stat().st_size
        self._transport.write(response_head(200, reply.content_type, size, (), keep_alive))
        if head_only:
            return True
        remaining = size if reply.send_bytes is None else min(size, reply.send_bytes)
        with reply.path.open("rb") as source:
            while remaining > 0 and not self._closed:
                chunk = source.read(min(FILE_CHUNK_BYTES, remaining))
                if not chunk:
                    break
                remaining -= len(chunk)
                self._transport.write(chunk)
                await self._writable.wait()
        return reply.send_bytes is None or reply.send_bytes >= size

    def _reject_and_close(self, status: int, body: bytes) -> None:
        self._ignore_input = True
        if self._transport is not None and not self._closed:
            self._transport.write(response_head(status, JSON_CONTENT_TYPE, len(body), (), False) + body)
        self._close()

    def close(self) -> None:
        """Close the connection (server shutdown)."""
        self._close()

    def _close(self) -> None:
        self._closed = True
        if self._transport is not None:
            self._transport.close()


class HttpServer:
    """
    A listening socket and its live connections.

    :param handler: coroutine turning a request into a reply.
    :param max_body_bytes: returns the current request-body limit.
    """

    def __init__(self, handler: Handler, max_body_bytes: Callable[[], int]) -> None:
        self._handler = handler
        self._max_body_bytes = max_body_bytes
        self._connections: set[HttpConnection] = set()
        self._server: asyncio.Server | None = None

    async def listen(self, host: str, port: int) -> int:
        """Listen on ``host:port`` (port 0 picks a free one); returns the bound port."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: HttpConnection(self._handler, self._max_body_bytes, self._connections),
            host,
            port,
            reuse_address=True,
            backlog=512,
        )
        return int(self._server.sockets[0].getsockname()[1])

    def close(self) -> None:
        """Stop accepting and close every open connection."""
        if self._server is not None:
            self._server.close()
        for connection in list(self._connections):
            connection.close()
