"""A store whose port another process took between picking and binding is started again on other ports.

Ports are picked free and bound by the store a moment later, so on a busy machine another process
can take one in between. Here a listening socket holds the first port picked.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from harness import production
from harness.processes import ProcessSupervisor, interrupts_stop
from harness.production import LOOPBACK, ProductionStack

pytestmark = [pytest.mark.production]


@pytest.fixture
def first_port_taken(monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """The first port the stack picks is one a listening socket holds; later picks are free."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind((LOOPBACK, 0))
        holder.listen()
        taken = holder.getsockname()[1]
        picks = iter([taken])
        pick_free = production.free_port
        monkeypatch.setattr(production, "free_port", lambda: next(picks, 0) or pick_free())
        yield taken


@pytest.mark.parametrize("store", ["redis", "object_store"])
def test_a_store_that_lost_its_port_starts_on_another(store, first_port_taken, tmp_path) -> None:
    with ProcessSupervisor() as supervisor, interrupts_stop(supervisor):
        stack = ProductionStack(tmp_path, supervisor)
        getattr(stack, f"start_{store}")()
        if store == "redis":
            assert stack.redis_port != first_port_taken
            assert stack._redis_answers()
        else:
            assert stack.s3 is not None
            assert not stack.s3.endpoint_url.endswith(f":{first_port_taken}")
            assert stack._bucket_ready()
        log = (tmp_path / "logs" / f"{'redis' if store == 'redis' else 'seaweedfs'}.log").read_text().lower()
        assert log.count("address already in use") >= 1


def test_a_port_given_by_the_caller_is_not_picked_again(first_port_taken, tmp_path) -> None:
    with ProcessSupervisor() as supervisor, interrupts_stop(supervisor):
        stack = ProductionStack(tmp_path, supervisor, redis_port=first_port_taken)
        with pytest.raises(production.ProcessError, match="Redis exited"):
            stack.start_redis()
