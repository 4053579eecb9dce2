"""Check an output location before any request is sent, so a task that cannot write never scores.

Refused with :class:`ModelbitOutputError`, naming the parameter and the path: the output is the
input (or inside an input folder), a directory, under a file, unwritable or unreachable, or its
filesystem package (``s3fs``, ``gcsfs``...) is not installed. The checks leave nothing behind.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Sequence
from contextlib import suppress
from typing import TYPE_CHECKING

from airflow_provider_modelbit.exceptions import ModelbitInputError, ModelbitOutputError
from airflow_provider_modelbit.io.atomic import is_local
from airflow_provider_modelbit.io.result_writer import RESULT_COLUMN

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath


def check_output_location(
    output: ObjectStoragePath, *, parameter: str = "output_path", inputs: Sequence[ObjectStoragePath] = ()
) -> None:
    """
    Refuse an output the task could not write, before the first request.

    :param output: where the results will be written.
    :param parameter: the operator argument that named it, for messages.
    :param inputs: input locations the output must not overwrite.
    :raises ModelbitOutputError: naming ``parameter``, the path and what to do.
    """
    where = f"{parameter} {output}"
    exists, is_dir = _probe(output, where)
    for source in inputs:
        _refuse_overwriting_input(output, source, where)
    if is_dir:
        raise ModelbitOutputError(f"{where} is a directory; name a file such as {output}/scores.parquet.")
    if is_local(output):
        _check_local_folder(output.path, where)
    elif not exists:
        _check_remote_writable(output, where)


def refuse_column_clashes(
    passthrough: Sequence[str], *, id_name: str, expand_result: bool, output: str
) -> None:
    """
    Refuse pass-through columns that would collide with the output's ID or result columns.

    :raises ModelbitInputError: naming ``passthrough_columns``, the column and the output.
    """
    for name in passthrough:
        clashes = name in (id_name, RESULT_COLUMN) or (expand_result and name.startswith(f"{RESULT_COLUMN}_"))
        if clashes:
            raise ModelbitInputError(
                f"passthrough_columns names {name!r}, which the output {output} already has as its "
                f"{'ID' if name == id_name else 'result'} column; rename that input column or leave it out."
            )


def _probe(output: ObjectStoragePath, where: str) -> tuple[bool, bool]:
    """Reach the output's store; return whether the output exists and whether it is a directory."""
    try:
        return output.exists(), output.is_dir()
    except ImportError as error:
        raise ModelbitOutputError(
            f"{where}: the filesystem package for {output.protocol}:// is not installed ({error}). "
            "Install it on every worker, e.g. apache-airflow-providers-amazon[s3fs] for s3://."
        ) from None
    except ValueError as error:
        raise ModelbitOutputError(
            f"{where}: no filesystem is installed for {output.protocol}:// ({error}); install its "
            "fsspec package (s3fs, gcsfs, adlfs...) on every worker."
        ) from None
    except Exception as error:  # the store answered with its own error type: unreachable here
        raise ModelbitOutputError(
            f"{where} cannot be reached ({type(error).__name__}: {error}); check the location, "
            "output_conn_id and the credentials."
        ) from None


def _refuse_overwriting_input(output: ObjectStoragePath, source: ObjectStoragePath, where: str) -> None:
    out, into = _comparable(output), _comparable(source)
    if out == into:
        raise ModelbitOutputError(f"{where} is the input table itself; write the results to another path.")
    if out[0] == into[0] and out[1].startswith(into[1].rstrip("/") + "/"):
        raise ModelbitOutputError(
            f"{where} lies inside the input folder {source}; the output would be read as input next time. "
            "Write it elsewhere."
        )


def _comparable(path: ObjectStoragePath) -> tuple[str, str]:
    if is_local(path):
        return "file", os.path.realpath(path.path)
    return str(path.protocol), path.path.rstrip("/")


def _check_local_folder(path: str, where: str) -> None:
    """The nearest existing ancestor must be a folder this process can write into."""
    folder = os.path.dirname(path)
    while not os.path.exists(folder):
        folder = os.path.dirname(folder)
    if not os.path.isdir(folder):
        raise ModelbitOutputError(f"{where} cannot be created: {folder} is a file, not a folder.")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ModelbitOutputError(f"{where} is not writable: this worker may not create files in {folder}.")


def _check_remote_writable(output: ObjectStoragePath, where: str) -> None:
    """Write and delete a tiny probe object beside the output: the store must take writes."""
    probe = output.parent / f".{output.name}.probe-{uuid.uuid4().hex}"
    try:
        with probe.fs.open(probe.path, "wb") as stream:
            stream.write(b"")
    except Exception as error:
        raise ModelbitOutputError(
            f"{where} is not writable ({type(error).__name__}: {error}); check the bucket, "
            "output_conn_id and the credentials."
        ) from None
    with suppress(Exception):
        probe.fs.rm_file(probe.path)
