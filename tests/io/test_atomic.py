"""Outputs appear complete or not at all, on local disk and on object storage."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from airflow.sdk import Asset, ObjectStoragePath
from fsspec.implementations.memory import MemoryFileSystem

from airflow_provider_modelbit.io.atomic import atomic_output, resolve_output


@pytest.fixture
def memory_store(monkeypatch: pytest.MonkeyPatch) -> Iterator[ObjectStoragePath]:
    """A memory:// object store registered with Airflow, emptied after the test."""
    from airflow.sdk.io import store

    # attach() would return a store cached earlier, maybe one made without a filesystem:
    # register this one for the test only.
    filesystem = MemoryFileSystem()
    memory = store.ObjectStore(protocol="memory", conn_id=None, fs=filesystem)
    monkeypatch.setitem(store._STORE_CACHE, "memory", memory)
    root = ObjectStoragePath("memory://bucket/atomic")
    yield root
    if filesystem.exists("/bucket"):
        filesystem.rm("/bucket", recursive=True)


def _locations(tmp_path: Path, memory_store: ObjectStoragePath) -> dict[str, str | ObjectStoragePath]:
    return {
        "local path": str(tmp_path / "out" / "scores.parquet"),
        "file URL": f"file://{tmp_path}/out/scores.parquet",
        "memory URL": memory_store / "scores.parquet",
    }


@pytest.mark.parametrize("kind", ["local path", "file URL", "memory URL"])
class TestAtomicOutput:
    def test_success_moves_the_file_into_place(
        self, kind: str, tmp_path: Path, memory_store: ObjectStoragePath
    ) -> None:
        target = _locations(tmp_path, memory_store)[kind]
        with atomic_output(target) as stream:
            stream.write(b"complete")
        resolved = resolve_output(target)
        assert resolved.read_bytes() == b"complete"
        assert [path.name for path in resolved.parent.iterdir()] == ["scores.parquet"]

    def test_failure_leaves_nothing(self, kind: str, tmp_path: Path, memory_store: ObjectStoragePath) -> None:
        target = _locations(tmp_path, memory_store)[kind]
        with pytest.raises(RuntimeError), atomic_output(target) as stream:
            stream.write(b"half")
            raise RuntimeError("model failed")
        resolved = resolve_output(target)
        assert not resolved.exists()
        assert list(resolved.parent.iterdir()) == []

    def test_failure_keeps_the_previous_file(
        self, kind: str, tmp_path: Path, memory_store: ObjectStoragePath
    ) -> None:
        target = _locations(tmp_path, memory_store)[kind]
        with atomic_output(target) as stream:
            stream.write(b"yesterday")
        with pytest.raises(RuntimeError), atomic_output(target) as stream:
            stream.write(b"half")
            raise RuntimeError("model failed")
        assert resolve_output(target).read_bytes() == b"yesterday"

    def test_replaces_an_existing_file(
        self, kind: str, tmp_path: Path, memory_store: ObjectStoragePath
    ) -> None:
        target = _locations(tmp_path, memory_store)[kind]
        for content in (b"yesterday", b"today"):
            with atomic_output(target) as stream:
                stream.write(content)
        assert resolve_output(target).read_bytes() == b"today"


@pytest.mark.parametrize("kind", ["local path", "file URL", "memory URL"])
class TestLineage:
    """Hook lineage names the destination, never the temporary file the bytes went through."""

    @pytest.fixture
    def collector(self, monkeypatch: pytest.MonkeyPatch) -> Any:
        # A real collector; Airflow hands one out only when a lineage reader plugin is installed.
        try:
            from airflow.sdk import lineage
        except ImportError:  # Airflow 3.1: the collector lives in the core
            from airflow.lineage import hook as lineage  # type: ignore[no-redef]

        collector = lineage.HookLineageCollector()
        monkeypatch.setattr(lineage, "get_hook_lineage_collector", lambda: collector)
        return collector

    def test_the_final_path_is_the_only_output(
        self, kind: str, tmp_path: Path, memory_store: ObjectStoragePath, collector: Any
    ) -> None:
        target = _locations(tmp_path, memory_store)[kind]
        with atomic_output(target) as stream:
            stream.write(b"complete")
        collected = collector.collected_assets
        # Compared as an Asset URI: Airflow 3.1 normalises "memory:///x" to "memory:/x".
        assert [info.asset.uri for info in collected.outputs] == [Asset(str(resolve_output(target))).uri]
        assert collected.inputs == []

    def test_internal_files_and_failures_record_nothing(
        self, kind: str, tmp_path: Path, memory_store: ObjectStoragePath, collector: Any
    ) -> None:
        target = _locations(tmp_path, memory_store)[kind]
        with atomic_output(target, lineage=False) as stream:
            stream.write(b"checkpoint")
        with pytest.raises(RuntimeError), atomic_output(target) as stream:
            raise RuntimeError("model failed")
        assert not collector.has_collected


class TestResolveOutput:
    def test_relative_paths_become_absolute_file_paths(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.chdir(tmp_path)
        resolved = resolve_output("scores/out.parquet")
        assert resolved.protocol == "file"
        assert resolved.path == str(tmp_path / "scores" / "out.parquet")

    def test_keeps_a_url_and_adds_the_connection(self) -> None:
        resolved = resolve_output("s3://bucket/key.parquet", conn_id="aws_data")
        # Airflow 3.3 keeps it as an attribute; 3.1 only in the storage options.
        conn_id = getattr(resolved, "conn_id", None) or resolved.storage_options.get("conn_id")
        assert (resolved.protocol, conn_id, resolved.key) == ("s3", "aws_data", "key.parquet")
