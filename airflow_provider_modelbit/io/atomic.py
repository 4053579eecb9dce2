"""All-or-nothing writes to local paths and object storage.

A file is written under a hidden temporary name beside its destination and moved into place only
once it is complete, so a failed or killed task never leaves a half-written file where readers
look for results. The temporary name is an implementation detail: Airflow's hook lineage records
the destination, once, after the move — never the temporary file the bytes went through.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import TYPE_CHECKING, BinaryIO

import pyarrow as pa
from airflow.sdk import ObjectStoragePath

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

log = logging.getLogger(__name__)


def resolve_output(path: str | ObjectStoragePath, conn_id: str | None = None) -> ObjectStoragePath:
    """
    Turn a user-given location into an :class:`ObjectStoragePath`.

    :param path: a URL (``s3://bucket/key``, ``file:///tmp/x``), a local path (made absolute), or a path.
    :param conn_id: the Airflow connection for the object store, when the URL does not name one.
    """
    if isinstance(path, ObjectStoragePath):
        if conn_id and not path.conn_id:
            return ObjectStoragePath(str(path), conn_id=conn_id)
        return path
    text = os.fspath(path)
    if "://" in text:
        return ObjectStoragePath(text, conn_id=conn_id)
    # Relative paths would otherwise depend on the worker's working directory.
    return ObjectStoragePath(os.path.abspath(os.path.expanduser(text)), protocol="file", conn_id=conn_id)


_LOCAL_PROTOCOLS = ("", "file", "local")


def is_local(path: ObjectStoragePath) -> bool:
    """Tell whether ``path`` is on local disk (where a rename is atomic and files can be mapped)."""
    return path.protocol in _LOCAL_PROTOCOLS


@contextmanager
def atomic_output(path: str | ObjectStoragePath, *, lineage: bool = True) -> Iterator[BinaryIO]:
    """
    Open ``path`` for writing so that it appears complete or not at all.

    On success the temporary file replaces ``path``; on any exception it is removed and a file that
    already existed at ``path`` is left untouched.

    :param path: the destination, local or any ObjectStoragePath URL.
    :param lineage: record the destination as a lineage output; off for internal files such as
        checkpoints.
    """
    destination = resolve_output(path)
    destination.parent.mkdir(parents=True, exist_ok=True)
    # Neither the write nor the move goes through ObjectStoragePath's lineage tracking: it would
    # record the temporary name (as an output, and on object stores as the move's input too).
    with atomic_file(destination.fs, destination.path, local=is_local(destination)) as stream:
        yield stream
    if lineage:
        record_output_lineage(destination)


@contextmanager
def atomic_file(fs: AbstractFileSystem, path: str, *, local: bool) -> Iterator[BinaryIO]:
    """
    :func:`atomic_output` for a file named in ``fs``'s terms, whose folder exists.

    For writers of many files into one folder (a checkpoint's chunks), which keep the filesystem
    and the folder's path and build no path object per file. Local files are written through
    Arrow's native file, so an Arrow writer's many small writes do not each pass through Python.

    :param fs: the filesystem holding ``path``.
    :param path: the destination; the temporary file is a hidden name beside it.
    :param local: ``path`` is on local disk.
    """
    folder, separator, name = path.rpartition("/")
    temporary = f"{folder}{separator}.{name}.tmp-{uuid.uuid4().hex}"
    try:
        with pa.OSFile(temporary, "wb") if local else fs.open(temporary, "wb") as stream:
            yield stream
        if local:
            # os.replace is atomic on POSIX and overwrites an existing destination in one step.
            os.replace(temporary, path)
        else:
            # Object stores have no rename: move is a server-side copy (which replaces the
            # destination in one step) followed by deleting the temporary object.
            fs.mv(temporary, path)
    except BaseException:
        _remove_quietly(fs, temporary)
        raise


def record_output_lineage(destination: ObjectStoragePath) -> None:
    """Tell Airflow's hook lineage collector that the task wrote ``destination``."""
    try:
        from airflow.sdk.lineage import get_hook_lineage_collector
    except ImportError:  # Airflow 3.1: the collector lives in the core
        from airflow.lineage.hook import get_hook_lineage_collector  # type: ignore[no-redef]

    get_hook_lineage_collector().add_output_asset(context=destination, uri=str(destination))


def _remove_quietly(fs: AbstractFileSystem, path: str) -> None:
    with suppress(FileNotFoundError, OSError):
        fs.rm_file(path)
        log.debug("Removed incomplete file %s", path)


def create_exclusively(fs: AbstractFileSystem, path: str, record: bytes, *, local: bool) -> bool:
    """
    Write ``record`` at ``path`` only if nothing is there; tell whether this call created it.

    Local disk uses a hard link, which fails if the name exists and never shows a partial record;
    object stores use fsspec's exclusive ``"xb"`` mode where the store supports it. A store without
    conditional creates gets a check, then a write: best effort, so a caller that must be sure
    reads its record back.

    :param fs: the filesystem holding ``path``.
    :param path: where the record goes, in ``fs``'s terms; its folder must exist.
    :param record: the whole content.
    :param local: ``path`` is on local disk.
    """
    if local:
        return _link_exclusively(path, record)
    try:
        with fs.open(path, "xb") as stream:
            stream.write(record)
        return True
    except FileExistsError:
        return False
    except (ValueError, NotImplementedError):
        if _exists_now(fs, path):
            return False
        with fs.open(path, "wb") as stream:
            stream.write(record)
        return True
    except OSError:
        # Some stores' clients report a refused conditional create as a plain OSError (s3fs
        # raises S3's 412 Precondition Failed as EINVAL): it was refused when a record exists.
        if _exists_now(fs, path):
            return False
        raise


def _exists_now(fs: AbstractFileSystem, path: str) -> bool:
    fs.invalidate_cache(path.rsplit("/", 1)[0])  # a listing cached before the other writer's create
    return bool(fs.exists(path))


def _link_exclusively(path: str, record: bytes) -> bool:
    """Write ``record`` to ``path`` only if ``path`` does not exist, whole or not at all."""
    temporary = f"{path}.{uuid.uuid4().hex}"
    with open(temporary, "wb") as stream:
        stream.write(record)
    try:
        # link() fails when the name exists, and the record behind it is already complete.
        os.link(temporary, path)
        return True
    except FileExistsError:
        return False
    finally:
        os.unlink(temporary)
