"""A requests transport adapter whose connections can be shut from another thread."""

from __future__ import annotations

import socket
import threading
import weakref
from contextlib import suppress
from typing import Any

from requests.adapters import HTTPAdapter
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool


class AbortableAdapter(HTTPAdapter):
    """
    An adapter that can close, from another thread, the connections its requests are using.

    A request blocked on a model that takes minutes cannot be interrupted any other way: shutting
    its socket down wakes the thread at once, so a stopped task does not wait for the model.
    """

    def __init__(self, **kwargs: Any) -> None:
        self._in_use: weakref.WeakSet[Any] = weakref.WeakSet()
        self._in_use_lock = threading.Lock()
        super().__init__(**kwargs)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {
            "http": _tracked_pool(HTTPConnectionPool, self),
            "https": _tracked_pool(HTTPSConnectionPool, self),
        }

    def track(self, conn: Any, in_use: bool) -> None:
        with self._in_use_lock:
            if in_use:
                self._in_use.add(conn)
            else:
                self._in_use.discard(conn)

    def abort_in_use(self) -> int:
        """Shut down every connection a request is using now; return how many."""
        with self._in_use_lock:
            connections = list(self._in_use)
        for conn in connections:
            sock = getattr(conn, "sock", None)
            if sock is not None:
                with suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            with suppress(Exception):
                conn.close()
        return len(connections)


def _tracked_pool(base: type[HTTPConnectionPool], adapter: AbortableAdapter) -> type[HTTPConnectionPool]:
    class TrackedPool(base):  # type: ignore[valid-type,misc]
        def _get_conn(self, timeout: float | None = None) -> Any:
            conn = super()._get_conn(timeout)
            adapter.track(conn, True)
            return conn

        def _put_conn(self, conn: Any) -> None:
            if conn is not None:
                adapter.track(conn, False)
            super()._put_conn(conn)

    return TrackedPool
