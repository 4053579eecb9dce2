"""ModelbitCallbackTrigger: one event once the deliveries are in the store, restart-safe, deadline-bound."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

try:
    from airflow.sdk import serde
except ImportError:  # Airflow 3.1: serde lived in core until the Task SDK took it over
    from airflow.serialization import serde  # type: ignore[no-redef]
from airflow.triggers.base import TriggerEvent

from airflow_provider_modelbit.callbacks.store import CallbackStore
from airflow_provider_modelbit.triggers import ModelbitCallbackTrigger
from airflow_provider_modelbit.triggers.callback import TRIGGER_EVENT_STATUSES, DeliveryWatcher, _Watch

POLL = 0.05


@pytest.fixture
def store(tmp_path: Path) -> CallbackStore:
    return CallbackStore(str(tmp_path / "callbacks"))


def _trigger(
    store: CallbackStore, chunks=(0, 1), job_id: str = "job-1", timeout: float = 30
) -> ModelbitCallbackTrigger:
    return ModelbitCallbackTrigger(
        job_id=job_id,
        chunks=list(chunks),
        store_location=store.location,
        deadline=time.time() + timeout,
        poll_interval=POLL,
        conn_id="modelbit_default",
        deferred_by_try=2,
    )


async def _events(trigger: ModelbitCallbackTrigger, limit: float = 10) -> list[TriggerEvent]:
    async def collect() -> list[TriggerEvent]:
        return [event async for event in trigger.run()]

    return await asyncio.wait_for(collect(), timeout=limit)


def _deliver(store: CallbackStore, chunk: int, kind: str = "data", job_id: str = "job-1") -> None:
    body = b'{"error": "ValueError: bad"}' if kind == "error" else b'{"data": 1}'
    store.put_delivery(job_id, chunk, f"batch-{chunk}", [body], kind)  # type: ignore[arg-type]


class TestSerialization:
    def test_round_trip_through_airflow_serde_rebuilds_the_same_trigger(self, store: CallbackStore) -> None:
        classpath, kwargs = _trigger(store).serialize()
        assert classpath == "airflow_provider_modelbit.triggers.callback.ModelbitCallbackTrigger"
        restored_kwargs = serde.deserialize(serde.serialize(kwargs))
        assert restored_kwargs == kwargs
        assert ModelbitCallbackTrigger(**restored_kwargs).serialize() == (classpath, kwargs)

    def test_kwargs_hold_identifiers_only(self, store: CallbackStore) -> None:
        """No credentials: the connection is named, never resolved, and the deadline is absolute."""
        _, kwargs = _trigger(store).serialize()
        assert set(kwargs) == {
            "job_id",
            "chunks",
            "store_location",
            "deadline",
            "poll_interval",
            "conn_id",
            "deferred_by_try",
            "max_concurrency",
            "adaptive",
            "delivery_margin",
        }
        assert kwargs["deadline"] > time.time()

    @pytest.mark.parametrize(
        ("overrides", "message"),
        [
            ({"chunks": []}, "at least one chunk"),
            ({"poll_interval": 0}, "poll_interval"),
            ({"job_id": "../x"}, "job id"),
        ],
    )
    def test_invalid_arguments_are_refused(
        self, store: CallbackStore, overrides: dict[str, Any], message: str
    ):
        kwargs = {**_trigger(store).serialize()[1], **overrides}
        with pytest.raises(ValueError, match=message):
            ModelbitCallbackTrigger(**kwargs)


class TestRun:
    async def test_emits_exactly_one_success_event_when_all_chunks_arrive(self, store: CallbackStore) -> None:
        trigger = _trigger(store)
        waiting = asyncio.create_task(_events(trigger))
        await asyncio.sleep(3 * POLL)
        _deliver(store, 0)
        await asyncio.sleep(3 * POLL)
        assert not waiting.done(), "must keep waiting while chunk 1 is missing"
        _deliver(store, 1)
        events = await waiting
        assert len(events) == 1
        assert events[0].payload == {
            "status": "success",
            "job_id": "job-1",
            "store_location": store.location,
            "chunks": [0, 1],
            "errors": [],
            "message": "Job job-1: all 2 deliveries arrived.",
            "deferred_by_try": 2,
        }

    async def test_restart_from_scratch_finds_deliveries_already_there(self, store: CallbackStore) -> None:
        """A trigger rebuilt on another triggerer after the deliveries arrived succeeds at once."""
        first_run = asyncio.create_task(_events(_trigger(store)))
        await asyncio.sleep(2 * POLL)
        first_run.cancel()
        _deliver(store, 0)
        _deliver(store, 1)
        started = time.monotonic()
        [event] = await _events(ModelbitCallbackTrigger(**_trigger(store).serialize()[1]))
        assert event.payload["status"] == "success"
        assert time.monotonic() - started < 2

    async def test_error_delivery_is_reported_with_its_chunk(self, store: CallbackStore) -> None:
        _deliver(store, 0)
        _deliver(store, 1, kind="error")
        [event] = await _events(_trigger(store))
        assert event.payload["status"] == "error"
        assert event.payload["errors"] == [1]
        assert "delivered as errors: [1]" in event.payload["message"]

    async def test_deadline_gives_one_timeout_event_naming_missing_chunks(self, store: CallbackStore) -> None:
        _deliver(store, 0)
        started = time.monotonic()
        events = await _events(_trigger(store, chunks=(0, 1, 2), timeout=0.3))
        assert len(events) == 1
        assert events[0].payload["status"] == "timeout"
        assert "1 of 3 deliveries" in events[0].payload["message"]
        assert "missing chunk(s) [1, 2]" in events[0].payload["message"]
        assert time.monotonic() - started < 0.3 + 2 * POLL + 1

    async def test_deadline_already_past_times_out_immediately(self, store: CallbackStore) -> None:
        [event] = await _events(_trigger(store, timeout=-10), limit=2)
        assert event.payload["status"] == "timeout"

    async def test_event_carries_locations_not_result_data(self, store: CallbackStore) -> None:
        store.put_delivery("job-1", 0, "b", [b'{"data": "secret-result-value"}'])
        store.put_delivery("job-1", 1, "b", [b'{"data": "secret-result-value"}'])
        [event] = await _events(_trigger(store))
        assert "secret-result-value" not in repr(event.payload)
        assert event.payload["status"] in TRIGGER_EVENT_STATUSES

    async def test_memory_store_location(self) -> None:
        store = CallbackStore("memory://trigger-tests/run-1")
        _deliver(store, 0)
        _deliver(store, 1)
        [event] = await _events(_trigger(store))
        assert event.payload["status"] == "success"


class TestDeliveryWatcher:
    async def test_many_triggers_share_one_watcher_task(self, store: CallbackStore) -> None:
        """One scanning task serves every trigger in the loop, and stops once none waits."""
        triggers = [_trigger(store, chunks=(0,), job_id=f"job-{n}") for n in range(50)]
        waiting = [asyncio.create_task(_events(trigger)) for trigger in triggers]
        await asyncio.sleep(2 * POLL)
        watchers = [t for t in asyncio.all_tasks() if t.get_name() == "modelbit-callback-watcher"]
        assert len(watchers) == 1
        for n in range(50):
            _deliver(store, 0, job_id=f"job-{n}")
        results = await asyncio.gather(*waiting)
        assert all(events[0].payload["status"] == "success" for events in results)
        await asyncio.sleep(POLL)
        assert watchers[0].done()

    async def test_delivery_to_event_latency_is_within_two_poll_intervals(self, store: CallbackStore) -> None:
        trigger = _trigger(store, chunks=(0,))
        interval = 0.2
        trigger.poll_interval = interval
        waiting = asyncio.create_task(_events(trigger))
        await asyncio.sleep(interval * 1.5)
        delivered_at = time.monotonic()
        _deliver(store, 0)
        await waiting
        assert time.monotonic() - delivered_at < 2 * interval

    async def test_storage_errors_do_not_end_the_wait(self, store: CallbackStore, monkeypatch) -> None:
        """A failing listing is logged and retried; the trigger still succeeds once the store answers."""
        failures = iter([OSError("store unavailable")] * 3)
        real = CallbackStore.delivered_chunks

        def flaky(self: CallbackStore, job_id: str) -> set[int]:
            error = next(failures, None)
            if error:
                raise error
            return real(self, job_id)

        monkeypatch.setattr(CallbackStore, "delivered_chunks", flaky)
        _deliver(store, 0)
        [event] = await _events(_trigger(store, chunks=(0,)))
        assert event.payload["status"] == "success"

    async def test_a_store_that_cannot_be_opened_never_stops_the_other_watches(
        self, store: CallbackStore, caplog: pytest.LogCaptureFixture
    ) -> None:
        """One trigger's store fails to open: it is retried until its deadline, the others finish."""
        broken = ModelbitCallbackTrigger(
            job_id="job-broken",
            chunks=[0],
            store_location="nosuchscheme://nowhere",
            deadline=time.time() + 1,
            poll_interval=POLL,
        )
        broken_events = asyncio.ensure_future(_events(broken))
        _deliver(store, 0)
        _deliver(store, 1)
        [event] = await _events(_trigger(store))
        assert event.payload["status"] == "success"
        [broken_event] = await broken_events
        assert broken_event.payload["status"] == "timeout"
        failures = [r for r in caplog.records if "Could not read callback store nosuchscheme" in r.message]
        # Backoff: far fewer looks than one per poll interval over the second it waited.
        assert 1 <= len(failures) <= 6

    async def test_store_that_fails_to_open_then_recovers_completes_the_wait(
        self, store: CallbackStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        real = DeliveryWatcher._store
        failures = iter([PermissionError("store unreadable")] * 3)

        def flaky(self: DeliveryWatcher, location: str) -> CallbackStore:
            if error := next(failures, None):
                raise error
            return real(self, location)

        monkeypatch.setattr(DeliveryWatcher, "_store", flaky)
        _deliver(store, 0)
        [event] = await _events(_trigger(store, chunks=(0,)))
        assert event.payload["status"] == "success"

    def test_backoff_doubles_and_is_capped_and_never_passes_the_deadline(self) -> None:
        loop = asyncio.new_event_loop()
        try:
            watch = _Watch("loc", "job-1", frozenset({0}), 1000.0, 1.0, loop.create_future())
            pauses = [watch.back_off(now=0.0) for _ in range(8)]
            assert pauses == [2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0]
            assert watch.back_off(now=990.0) == 60.0 and watch.next_scan == 1000.0
        finally:
            loop.close()

    def test_each_event_loop_has_its_own_watcher(self) -> None:
        async def current() -> DeliveryWatcher:
            return DeliveryWatcher.for_running_loop()

        assert asyncio.run(current()) is not asyncio.run(current())


#: What Airflow's triggerer passes to ``Task.cancel`` when a user acted on the deferred task.
USER_ACTION_CANCEL_MESSAGE = "__airflow_user_action__"


async def _cancel_as_the_triggerer(trigger: ModelbitCallbackTrigger, message: str | None) -> None:
    """
    Cancel a running trigger the way Airflow 3.3's ``TriggerRunner.run_trigger`` does.

    The triggerer calls ``on_kill`` only when the cancellation carries its user-action message,
    which it sends for every trigger it runs that the database no longer assigns to it: the task
    was marked failed or success or cleared, or another triggerer took the trigger over. A
    shutdown or restart cancels without one, and ``cleanup`` runs in every case.
    """
    running = asyncio.ensure_future(_events(trigger))
    await asyncio.sleep(3 * POLL)
    running.cancel(message)
    try:
        await running
    except asyncio.CancelledError as cancelled:
        if cancelled.args and cancelled.args[0] == USER_ACTION_CANCEL_MESSAGE:
            await trigger.on_kill()
    finally:
        await trigger.cleanup()


class TestCancellation:
    def test_the_user_action_message_is_airflows(self) -> None:
        from airflow.jobs import triggerer_job_runner

        assert getattr(triggerer_job_runner, "_USER_ACTION_CANCEL_MSG", USER_ACTION_CANCEL_MESSAGE) == (
            USER_ACTION_CANCEL_MESSAGE
        )

    async def test_user_action_leaves_a_stop_request_and_deletes_nothing(self, store: CallbackStore) -> None:
        """
        Airflow 3.3 cancels with the user-action message for a user's mark or clear and for a takeover
        by another triggerer alike: the trigger only asks, the task's worker decides (and retires).
        """
        store.write_manifest("job-1", {"chunks": 2})
        _deliver(store, 0)
        trigger = _trigger(store)
        await _cancel_as_the_triggerer(trigger, USER_ACTION_CANCEL_MESSAGE)
        assert not store.is_retired("job-1")
        request = store.stop_request("job-1")
        assert request is not None and "taken over by another triggerer" in request.reason
        assert store.has_manifest("job-1") and store.delivered_chunks("job-1") == {0}
        _deliver(store, 1)
        assert store.delivered_chunks("job-1") == {0, 1}, "the other triggerer's wait still completes"
        assert DeliveryWatcher.for_running_loop()._watches == set()

    async def test_a_cancelled_trigger_of_a_finished_job_leaves_nothing(self, store: CallbackStore) -> None:
        store.write_manifest("job-1", {"chunks": 2})
        store.retire_job("job-1", "finished")
        await _cancel_as_the_triggerer(_trigger(store), USER_ACTION_CANCEL_MESSAGE)
        assert store.stop_request("job-1") is None and not store.has_manifest("job-1")

    async def test_triggerer_shutdown_keeps_the_job_for_the_next_triggerer(
        self, store: CallbackStore
    ) -> None:
        """A shutdown or restart cancels without the message: nothing is asked, the wait resumes."""
        store.write_manifest("job-1", {"chunks": 2})
        _deliver(store, 0)
        await _cancel_as_the_triggerer(_trigger(store), None)
        assert not store.is_retired("job-1")
        assert store.has_manifest("job-1")
        assert DeliveryWatcher.for_running_loop()._watches == set()
        _deliver(store, 1)
        [event] = await _events(_trigger(store))
        assert event.payload["status"] == "success"

    async def test_on_kill_with_an_unreachable_store_logs_and_returns(
        self, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Airflow bounds on_kill and only logs what it raises; a failure to write is said, not raised."""
        trigger = ModelbitCallbackTrigger(
            job_id="job-1", chunks=[0], store_location="nosuchscheme://nowhere", deadline=time.time() + 30
        )
        await asyncio.wait_for(trigger.on_kill(), timeout=10)
        # The trigger's own logger is structlog, printed rather than captured by caplog.
        logged = caplog.text + capsys.readouterr().out
        assert (
            "Could not leave a stop request for Modelbit job job-1 in nosuchscheme://nowhere: ValueError"
            in logged
        )
