"""The HTTP/1.1 layer: keep-alive, pipelining, chunked bodies, Expect: 100-continue, size limit."""

from __future__ import annotations

import socket
from types import TracebackType
from urllib.parse import urlsplit

import pytest

from airflow_provider_modelbit.emulator import RunningEmulator


class RawConnection:
    """A plain TCP connection to the emulator, reading answers one at a time."""

    def __init__(self, emulator: RunningEmulator) -> None:
        parts = urlsplit(emulator.url)
        self.socket = socket.create_connection((parts.hostname, parts.port), timeout=10)
        self.reader = self.socket.makefile("rb")

    def send(self, data: bytes) -> None:
        self.socket.sendall(data)

    def response(self) -> tuple[bytes, bytes]:
        """Exactly one Content-Length answer: (head, body); pipelined answers stay unread."""
        lines = []
        while (line := self.reader.readline()) not in (b"\r\n", b""):
            lines.append(line.rstrip(b"\r\n"))
        length = next(
            int(line.split(b":")[1]) for line in lines if line.lower().startswith(b"content-length")
        )
        return b"\r\n".join(lines), self.reader.read(length)

    def closed_by_server(self) -> bool:
        return self.reader.read(1) == b""

    def __enter__(self) -> RawConnection:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.reader.close()
        self.socket.close()


def request(path: str, body: bytes, extra: str = "") -> bytes:
    return f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode() + body


def chunked(path: str, *chunks: bytes) -> bytes:
    encoded = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for chunk in chunks)
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
        + encoded
        + b"0\r\n\r\n"
    )


class TestConnection:
    def test_keep_alive_serves_several_requests(self, emulator: RunningEmulator) -> None:
        with RawConnection(emulator) as connection:
            for value in (1, 2, 3):
                connection.send(request("/v1/doubler/latest", b'{"data": %d}' % value))
                head, body = connection.response()
                assert head.startswith(b"HTTP/1.1 200 OK")
                assert body == b'{"data":%d}' % (2 * value)

    def test_pipelined_requests_are_answered_in_order(self, emulator: RunningEmulator) -> None:
        with RawConnection(emulator) as connection:
            connection.send(
                request("/v1/sleeper/latest", b'{"data": 0.2}')
                + request("/v1/doubler/latest", b'{"data": 5}')
            )
            assert connection.response()[1] == b'{"data":0.2}'
            assert connection.response()[1] == b'{"data":10}'

    def test_chunked_request_body(self, emulator: RunningEmulator) -> None:
        with RawConnection(emulator) as connection:
            connection.send(chunked("/v1/doubler/latest", b'{"dat', b'a": 21}'))
            assert connection.response()[1] == b'{"data":42}'

    def test_expect_100_continue(self, emulator: RunningEmulator) -> None:
        body = b'{"data": 4}'
        with RawConnection(emulator) as connection:
            connection.send(request("/v1/doubler/latest", body, "Expect: 100-continue\r\n")[: -len(body)])
            assert connection.reader.readline() == b"HTTP/1.1 100 Continue\r\n"
            assert connection.reader.readline() == b"\r\n"
            connection.send(body)
            assert connection.response()[1] == b'{"data":8}'

    def test_expect_100_continue_over_limit_is_413_without_reading(self, emulator: RunningEmulator) -> None:
        emulator.client.configure(max_body_bytes=100)
        with RawConnection(emulator) as connection:
            connection.send(request("/v1/echo/latest", b"x" * 5000, "Expect: 100-continue\r\n")[:-5000])
            head, _ = connection.response()
            assert head.startswith(b"HTTP/1.1 413")
            assert b"connection: close" in head
            assert connection.closed_by_server()

    def test_chunked_body_over_limit_is_413(self, emulator: RunningEmulator) -> None:
        emulator.client.configure(max_body_bytes=100)
        with RawConnection(emulator) as connection:
            connection.send(chunked("/v1/echo/latest", b'{"data": "', b"x" * 200, b'"}'))
            assert connection.response()[0].startswith(b"HTTP/1.1 413")

    @pytest.mark.parametrize(
        "garbage", [b"NOT HTTP AT ALL\r\n\r\n", b"POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n"]
    )
    def test_malformed_request_is_400_and_closed(self, emulator: RunningEmulator, garbage: bytes) -> None:
        with RawConnection(emulator) as connection:
            connection.send(garbage)
            head, body = connection.response()
            assert head.startswith(b"HTTP/1.1 400")
            assert b"Malformed HTTP request" in body
            assert connection.closed_by_server()

    def test_connection_close_is_honoured(self, emulator: RunningEmulator) -> None:
        with RawConnection(emulator) as connection:
            connection.send(request("/v1/doubler/latest", b'{"data": 1}', "Connection: close\r\n"))
            head, _ = connection.response()
            assert b"connection: close" in head
            assert connection.closed_by_server()

    def test_unknown_path_is_404(self, emulator: RunningEmulator) -> None:
        with RawConnection(emulator) as connection:
            connection.send(request("/elsewhere", b"{}"))
            assert connection.response()[0].startswith(b"HTTP/1.1 404")
