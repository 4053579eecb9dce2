"""The callback store: atomic, idempotent deliveries on local folders and fsspec URLs."""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fsspec import register_implementation
from fsspec.implementations.memory import MemoryFileSystem

from airflow_provider_modelbit.callbacks.cli import cleanup_main
from airflow_provider_modelbit.callbacks.store import (
    CallbackStore,
    ExpiryReport,
    callback_retention_seconds,
    default_store_location,
)


@pytest.fixture(params=["local", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[CallbackStore]:
    """A store on a local folder and one on an fsspec ``memory://`` URL."""
    if request.param == "local":
        yield CallbackStore(str(tmp_path / "callbacks"))
    else:
        location = f"memory://modelbit-tests/{uuid.uuid4().hex}"
        yield CallbackStore(location)


class TestPutDelivery:
    def test_stores_body_and_meta_once(self, store: CallbackStore) -> None:
        assert store.put_delivery("job-1", 0, "batch-a", [b'{"data": ', b"[[1, 2]]}"]) is True
        with store.open_delivery("job-1", 0) as body:
            assert json.loads(body.read()) == {"data": [[1, 2]]}
        meta = store.delivery_meta("job-1", 0)
        assert (meta["batch_id"], meta["size"], meta["kind"]) == ("batch-a", 18, "data")

    def test_redelivery_of_a_stored_chunk_is_not_stored_again(self, store: CallbackStore) -> None:
        store.put_delivery("job-1", 0, "batch-a", [b'{"data": 1}'])
        assert store.put_delivery("job-1", 0, "batch-a", [b'{"data": 2}']) is False
        with store.open_delivery("job-1", 0) as body:
            assert body.read() == b'{"data": 1}'

    @pytest.mark.parametrize("kind", ["data", "link", "error"])
    def test_kind_is_recorded(self, store: CallbackStore, kind: str) -> None:
        store.put_delivery("job-1", 2, "b", [b"{}"], kind)  # type: ignore[arg-type]
        assert store.delivery_kind("job-1", 2) == kind

    def test_failed_write_leaves_no_delivery_and_no_temporary_file(self, store: CallbackStore) -> None:
        """A body stream that breaks midway stores nothing, so the chunk can be delivered again."""

        def broken_body() -> Iterator[bytes]:
            yield b'{"data": '
            raise ConnectionResetError("client went away")

        with pytest.raises(ConnectionResetError):
            store.put_delivery("job-1", 0, "b", broken_body())
        assert store.delivered_chunks("job-1") == set()
        assert [p for p in store._fs.ls(store._job_dir("job-1"), detail=False) if "tmp" in p] == []
        assert store.put_delivery("job-1", 0, "b", [b'{"data": 1}']) is True

    def test_concurrent_redeliveries_store_exactly_once(self, store: CallbackStore) -> None:
        results: list[bool] = []
        barrier = threading.Barrier(8)

        def deliver() -> None:
            barrier.wait()
            results.append(store.put_delivery("job-1", 5, "b", [b'{"data": 1}']))

        threads = [threading.Thread(target=deliver) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=10)
        assert sorted(results) == [False] * 7 + [True]

    def test_invalid_kind_is_refused(self, store: CallbackStore) -> None:
        with pytest.raises(ValueError, match="Unknown delivery kind"):
            store.put_delivery("job-1", 0, "b", [b"{}"], "other")  # type: ignore[arg-type]


class TestListingAndRemoval:
    def test_delivered_chunks_of_unknown_job_is_empty(self, store: CallbackStore) -> None:
        assert store.delivered_chunks("never-seen") == set()

    def test_delivered_chunks_lists_complete_deliveries_of_that_job_only(self, store: CallbackStore) -> None:
        for chunk in (0, 3, 11):
            store.put_delivery("job-1", chunk, "b", [b"{}"])
        store.put_delivery("job-2", 1, "b", [b"{}"])
        store.write_manifest("job-1", {"chunks": 12})
        assert store.delivered_chunks("job-1") == {0, 3, 11}

    def test_remove_chunk_forgets_one_delivery(self, store: CallbackStore) -> None:
        store.put_delivery("job-1", 0, "b", [b"{}"])
        store.put_delivery("job-1", 1, "b", [b"{}"])
        store.remove_chunk("job-1", 0)
        store.remove_chunk("job-1", 9)  # missing is fine
        assert store.delivered_chunks("job-1") == {1}
        assert store.put_delivery("job-1", 0, "b2", [b"{}"]) is True

    def test_remove_job_deletes_everything(self, store: CallbackStore) -> None:
        store.put_delivery("job-1", 0, "b", [b"{}"])
        store.write_manifest("job-1", {"chunks": 1})
        store.remove_job("job-1")
        store.remove_job("job-1")  # missing is fine
        assert store.delivered_chunks("job-1") == set()
        assert store.read_manifest("job-1") is None


class TestManifest:
    def test_manifest_round_trip_and_replacement(self, store: CallbackStore) -> None:
        assert store.read_manifest("job-1") is None
        store.write_manifest("job-1", {"batch_ids": {"0": "a"}})
        store.write_manifest("job-1", {"batch_ids": {"0": "b"}})
        assert store.read_manifest("job-1") == {"batch_ids": {"0": "b"}}


class _ListingCacheFileSystem(MemoryFileSystem):
    """
    An in-memory store that, like s3fs, looks files up in a cached listing of their folder.

    Only the cache's behaviour matters: a listing cached by another thread, taken before a file
    was written, says the file does not exist.
    """

    protocol = "listing-cache-memory"

    @classmethod
    def _strip_protocol(cls, path: str) -> str:
        return MemoryFileSystem._strip_protocol(str(path).removeprefix(f"{cls.protocol}://"))

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        path = self._strip_protocol(path)
        cached = self._ls_from_cache(path)  # FileNotFoundError when the folder's listing lacks it
        if cached is not None:
            return next(entry for entry in cached if entry["name"] == path)
        return super().info(path, **kwargs)

    def isfile(self, path: str) -> bool:
        try:
            return self.info(path)["type"] == "file"
        except FileNotFoundError:
            return False


class TestListingCache:
    @pytest.mark.filterwarnings("ignore:UPath 'listing-cache-memory' filesystem not explicitly implemented")
    def test_a_listing_cached_by_another_thread_does_not_hide_a_file_just_written(self) -> None:
        """
        The triggerer's submission thread moved a manifest it had just written while its polling
        thread listed the job's folder: the move looked the file up in that listing and failed.
        """
        register_implementation(_ListingCacheFileSystem.protocol, _ListingCacheFileSystem, clobber=True)
        store = CallbackStore(f"{_ListingCacheFileSystem.protocol}://modelbit-tests/{uuid.uuid4().hex}")
        store.write_manifest("job-1", {"chunks": 1})
        job_dir = f"{store._root}/job-1"
        stale_listing = store._fs.ls(job_dir, detail=True)  # taken before the next write
        real_mv = store._fs.mv

        def mv_after_another_threads_listing(source: str, target: str, **kwargs: Any) -> None:
            store._fs.dircache[job_dir] = stale_listing  # the other thread's listing lands now
            real_mv(source, target, **kwargs)

        store._fs.mv = mv_after_another_threads_listing  # type: ignore[method-assign]
        store.write_manifest("job-1", {"chunks": 2})
        assert store.read_manifest("job-1") == {"chunks": 2}


class TestStagedRequestsAndClaims:
    """What the trigger submits for the worker, and the create-only claim that keeps it to one sender."""

    def test_a_staged_request_is_kept_with_its_job_and_goes_with_it(self, store: CallbackStore) -> None:
        store.write_manifest("job-1", {"chunks": 3})
        store.stage_request("job-1", 2, b"[[1, 2]]")
        assert store.staged_request("job-1", 2) == b"[[1, 2]]"
        assert store.staged_request("job-1", 1) is None
        assert store.delivered_chunks("job-1") == set(), "a staged request is not a delivery"
        store.retire_job("job-1")
        assert store.staged_request("job-1", 2) is None

    def test_an_attempt_is_claimed_once_until_given_back(self, store: CallbackStore) -> None:
        store.write_manifest("job-1", {"chunks": 1})
        assert store.claim_submission("job-1", 0, 1) is True
        assert store.claim_submission("job-1", 0, 1) is False, "a second sender loses"
        assert store.claim_submission("job-1", 0, 2) is True, "the next attempt is its own claim"
        store.release_submission("job-1", 0, 1)
        assert store.claim_submission("job-1", 0, 1) is True

    def test_a_retired_job_claims_nothing_and_is_not_made_again(self, store: CallbackStore) -> None:
        store.retire_job("job-1", "test")
        assert store.claim_submission("job-1", 0, 1) is False
        assert store.read_manifest("job-1") is None and store.delivered_chunks("job-1") == set()


class TestLocation:
    @pytest.mark.parametrize("job_id", ["../escape", "a/b"])
    def test_job_ids_cannot_escape_the_store(self, store: CallbackStore, job_id: str) -> None:
        with pytest.raises(ValueError, match="Invalid callback job id"):
            store.put_delivery(job_id, 0, "b", [b"{}"])

    def test_default_location_follows_config(self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
        monkeypatch.setenv("AIRFLOW__MODELBIT__CALLBACK_STORE", str(tmp_path / "elsewhere"))
        assert default_store_location() == str(tmp_path / "elsewhere")
        assert CallbackStore().location == str(tmp_path / "elsewhere")

    def test_empty_config_means_airflow_home(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("AIRFLOW__MODELBIT__CALLBACK_STORE", "")
        assert default_store_location().endswith("/modelbit/callbacks")

    def test_object_storage_path_with_registered_scheme(self, tmp_path: Path) -> None:
        store = CallbackStore(f"file://{tmp_path}/cb")
        store.put_delivery("job-1", 0, "b", [b"{}"])
        assert (tmp_path / "cb" / "job-1" / "chunk-0.meta.json").exists()


class TestRetireJob:
    def test_retiring_removes_manifest_and_deliveries_and_leaves_a_tombstone(self, store: CallbackStore):
        store.write_manifest("job-1", {"chunks": 2})
        store.put_delivery("job-1", 0, "b", [b'{"data": 1}'])
        tombstone = store.retire_job("job-1", "task marked failed")
        assert store.is_retired("job-1")
        assert (tombstone.job_id, tombstone.reason) == ("job-1", "task marked failed")
        assert store.tombstone("job-1") == tombstone
        assert not store.has_manifest("job-1")
        assert store.delivered_chunks("job-1") == set()
        assert not store._fs.exists(store._job_dir("job-1"))

    def test_a_retired_job_is_never_written_again(self, store: CallbackStore) -> None:
        store.write_manifest("job-1", {"chunks": 1})
        store.retire_job("job-1")
        assert store.put_delivery("job-1", 0, "b", [b'{"data": 1}']) is False
        assert store.delivered_chunks("job-1") == set()
        assert not store._fs.exists(store._job_dir("job-1"))

    def test_retiring_twice_keeps_the_first_tombstone(self, store: CallbackStore) -> None:
        first = store.retire_job("job-1", "task marked failed")
        assert store.retire_job("job-1", "cleared") == first

    def test_other_jobs_are_untouched(self, store: CallbackStore) -> None:
        store.put_delivery("job-2", 0, "b", [b'{"data": 1}'])
        store.retire_job("job-1")
        assert not store.is_retired("job-2")
        assert store.delivered_chunks("job-2") == {0}

    def test_delivery_written_while_the_job_is_retired_does_not_resurrect_it(
        self, store: CallbackStore
    ) -> None:
        """The job is retired while a delivery's body streams in: nothing of it stays in the store."""
        store.write_manifest("job-1", {"chunks": 1})

        def body_retired_midway() -> Iterator[bytes]:
            yield b'{"data": '
            store.retire_job("job-1", "task marked success")
            yield b"1}"

        assert store.put_delivery("job-1", 0, "b", body_retired_midway()) is False
        assert store.is_retired("job-1")
        assert store.delivered_chunks("job-1") == set()
        assert not store._fs.exists(store._job_dir("job-1"))

    @pytest.mark.parametrize("write", ["manifest", "staged request", "stop request", "claim"])
    def test_a_write_whose_folder_retiring_deletes_is_no_error_and_leaves_nothing(
        self, store: CallbackStore, monkeypatch: pytest.MonkeyPatch, write: str
    ) -> None:
        """
        The job is retired between a write making its folder and writing into it (the triggerer
        saving its ledger while the task is cleared): the write reports the retirement, raises
        nothing, and the folder stays gone.
        """
        store.write_manifest("job-1", {"chunks": 1})
        makedirs, job_dir = store._fs.makedirs, store._job_dir("job-1")

        def makedirs_then_retired(path: str, exist_ok: bool = False) -> None:
            makedirs(path, exist_ok=exist_ok)
            if path == job_dir:
                store.retire_job("job-1", "task cleared")

        monkeypatch.setattr(store._fs, "makedirs", makedirs_then_retired)
        writes = {
            "manifest": lambda: store.write_manifest("job-1", {"chunks": 2}),
            "staged request": lambda: store.stage_request("job-1", 0, b"[[1, 2]]"),
            "stop request": lambda: store.request_stop("job-1", "trigger cancelled"),
            "claim": lambda: store.claim_submission("job-1", 0, 1),
        }
        assert writes[write]() is False
        assert store.is_retired("job-1")
        assert not store._fs.exists(job_dir)

    def test_another_remover_deleting_the_same_files_leaves_no_folder(
        self, store: CallbackStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """
        Two removers at once (retiring, and a save or delivery that saw the tombstone): one can find
        a file gone that it listed, with the folder still there; it looks again until it is gone.
        """
        store.write_manifest("job-1", {"chunks": 2})
        store.put_delivery("job-1", 0, "b", [b'{"data": 1}'])
        remove, job_dir = store._fs.rm, store._job_dir("job-1")
        raced = []

        def rm_racing_another_remover(path: str, recursive: bool = False) -> None:
            if path == job_dir and not raced:
                raced.append(path)
                store._fs.rm_file(store._manifest_path("job-1"))  # the other remover's first delete
                raise FileNotFoundError(path)
            remove(path, recursive=recursive)

        monkeypatch.setattr(store._fs, "rm", rm_racing_another_remover)
        store.retire_job("job-1", "test")
        assert raced
        assert not store._fs.exists(store._job_dir("job-1"))

    def test_tombstone_of_another_schema_version_is_refused_by_name(self, store: CallbackStore) -> None:
        store.retire_job("job-1")
        store._write_atomic(store._tombstone_path("job-1"), [b'{"job_id": "job-1", "schema_version": 99}'])
        with pytest.raises(ValueError, match=r"job-1.*schema version 99"):
            store.tombstone("job-1")


class TestStopRequest:
    """The triggerer's cancellation asks; only the task's worker retires (see ``JobRunner``)."""

    def test_a_stop_request_is_kept_beside_the_job_and_deletes_nothing(self, store: CallbackStore) -> None:
        store.write_manifest("job-1", {"chunks": 2})
        store.put_delivery("job-1", 0, "b", [b'{"data": 1}'])
        assert store.request_stop("job-1", "trigger cancelled") is True
        request = store.stop_request("job-1")
        assert request is not None and (request.job_id, request.reason) == ("job-1", "trigger cancelled")
        assert store.has_manifest("job-1") and store.delivered_chunks("job-1") == {0}
        assert not store.is_retired("job-1")
        store.withdraw_stop("job-1")
        store.withdraw_stop("job-1")  # missing is fine
        assert store.stop_request("job-1") is None and store.has_manifest("job-1")

    @pytest.mark.parametrize("finished", ["retired", "never saved"])
    def test_a_job_that_is_gone_gets_no_stop_request_and_no_folder(
        self, store: CallbackStore, finished: str
    ) -> None:
        if finished == "retired":
            store.write_manifest("job-1", {"chunks": 1})
            store.retire_job("job-1", "finished")
        assert store.request_stop("job-1", "trigger cancelled") is False
        assert store.stop_request("job-1") is None
        assert not store._fs.exists(store._job_dir("job-1"))

    def test_retiring_takes_the_stop_request_with_the_job(self, store: CallbackStore) -> None:
        store.write_manifest("job-1", {"chunks": 1})
        store.request_stop("job-1", "trigger cancelled")
        store.retire_job("job-1", "replaced")
        assert store.stop_request("job-1") is None and not store._fs.exists(store._job_dir("job-1"))


class TestExpire:
    AGE = 3600.0

    def test_jobs_and_tombstones_past_the_age_are_removed_and_newer_ones_kept(self, store: CallbackStore):
        store.write_manifest("job-old", {"chunks": 1})
        store.put_delivery("job-old", 0, "b", [b'{"data": 1}'])
        store.retire_job("job-retired")
        later = time.time() + self.AGE + 1
        store.put_delivery("job-new", 0, "b", [b'{"data": 1}'])
        assert store.expire(self.AGE, now=later) == ExpiryReport(jobs=2, tombstones=1)
        assert not store.has_manifest("job-old") and store.delivered_chunks("job-old") == set()
        assert not store.is_retired("job-retired")
        # job-new was written before 'later' too: it goes as well; nothing else is left
        assert store._fs.ls(store._root, detail=False) in ([], [f"{store._root}/_retired"])

    def test_nothing_younger_than_the_age_is_removed(self, store: CallbackStore) -> None:
        store.put_delivery("job-1", 0, "b", [b'{"data": 1}'])
        store.retire_job("job-2")
        assert store.expire(self.AGE) == ExpiryReport(jobs=0, tombstones=0)
        assert store.delivered_chunks("job-1") == {0} and store.is_retired("job-2")

    def test_a_job_is_kept_whole_while_any_of_its_files_is_recent(self, tmp_path: Path) -> None:
        """An old manifest with a fresh delivery: a task may still wait on it, so nothing goes."""
        store = CallbackStore(str(tmp_path / "callbacks"))
        store.write_manifest("job-1", {"chunks": 2})
        old = time.time() - 2 * self.AGE
        os.utime(tmp_path / "callbacks" / "job-1" / "manifest.json", (old, old))
        store.put_delivery("job-1", 0, "b", [b'{"data": 1}'])
        assert store.expire(self.AGE) == ExpiryReport(jobs=0, tombstones=0)
        assert store.has_manifest("job-1") and store.delivered_chunks("job-1") == {0}

    def test_an_empty_store_is_fine(self, store: CallbackStore) -> None:
        assert store.expire(self.AGE) == ExpiryReport(jobs=0, tombstones=0)


class TestRetentionSetting:
    def test_default_is_a_week(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.delenv("AIRFLOW__MODELBIT__CALLBACK_RETENTION_SECONDS", raising=False)
        assert callback_retention_seconds() == 7 * 24 * 3600

    def test_configured_value_is_read(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("AIRFLOW__MODELBIT__CALLBACK_RETENTION_SECONDS", "86400")
        assert callback_retention_seconds() == 86400

    @pytest.mark.parametrize("value", ["0", "-5", "a day"])
    def test_a_value_that_is_not_a_positive_number_is_refused_by_name(
        self, monkeypatch: pytest.MonkeyPatch, value: str
    ) -> None:
        monkeypatch.setenv("AIRFLOW__MODELBIT__CALLBACK_RETENTION_SECONDS", value)
        with pytest.raises(ValueError, match=r"\[modelbit\] callback_retention_seconds must be a positive"):
            callback_retention_seconds()


class TestCleanupCommand:
    def test_removes_what_is_older_than_the_given_age_and_says_so(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        store = CallbackStore(str(tmp_path / "callbacks"))
        store.put_delivery("job-old", 0, "b", [b'{"data": 1}'])
        old = time.time() - 7200
        for path in (tmp_path / "callbacks" / "job-old").iterdir():
            os.utime(path, (old, old))
        store.put_delivery("job-new", 0, "b", [b'{"data": 1}'])
        cleanup_main(["--store", store.location, "--older-than", "3600"])
        assert capsys.readouterr().out.startswith("Removed 1 job(s) and 0 tombstone(s) older than 3600 s")
        assert store.delivered_chunks("job-old") == set() and store.delivered_chunks("job-new") == {0}

    def test_refuses_an_age_that_is_not_positive(self, tmp_path: Path) -> None:
        with pytest.raises(SystemExit):
            cleanup_main(["--store", str(tmp_path), "--older-than", "0"])
