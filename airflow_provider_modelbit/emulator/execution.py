"""
Running a deployment on a request's data (§4, §5 and §12.8-12.10).

These functions run in a worker thread, never on the event loop, and return the encoded
result so that JSON encoding of large results does not block other requests either.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from airflow_provider_modelbit.emulator.deployments import DeploymentVersion
from airflow_provider_modelbit.emulator.encoding import encode_json
from airflow_provider_modelbit.emulator.envelope import InferenceEnvelope, RequestRejected

if TYPE_CHECKING:
    import pandas as pd


@dataclass(frozen=True)
class InferenceOutcome:
    """
    The result of one inference.

    :param encoded: the JSON-encoded return value on success.
    :param error: the traceback (or timeout) text on failure.
    :param timed_out: the failure is a ``timeout_seconds`` expiry.
    """

    encoded: bytes | None = None
    error: str | None = None
    timed_out: bool = False


class RowFailed(Exception):
    """
    A batch row raised.

    :param row_id: the row's ID, for the error message.
    :param row_index: the row's position in the request.
    :param cause: the deployment's exception.
    """

    def __init__(self, row_id: Any, row_index: int, cause: BaseException) -> None:
        super().__init__(row_id)
        self.row_id = row_id
        self.row_index = row_index
        self.cause = cause


def _id_sort_key(row: list[Any]) -> tuple[int, Any]:
    """Numbers by value, then strings, then any other ID (null, lists) by its text: every batch sorts."""
    row_id = row[0]
    if isinstance(row_id, int | float) and not isinstance(row_id, bool):
        return (0, row_id)
    if isinstance(row_id, str):
        return (1, row_id)
    return (2, repr(row_id))


def format_deployment_error(error: BaseException) -> str:
    """A Python traceback of the deployment's own frames, ending in ``Type: message``."""
    frames = error.__traceback__
    while frames is not None and frames.tb_frame.f_code.co_filename == __file__:
        frames = frames.tb_next
    return "".join(traceback.format_exception(type(error), error, frames)).rstrip("\n")


def _run_rows(function: Callable[..., Any], rows: list[list[Any]]) -> list[list[Any]]:
    results: list[list[Any]] = []
    append = results.append
    row: list[Any] = []
    try:
        for row in rows:
            append([row[0], function(*row[1:])])
    except Exception as error:
        raise RowFailed(row[0], len(results), error) from error
    return results


def _frame_for_rows(target: DeploymentVersion, rows: list[list[Any]]) -> pd.DataFrame:
    for index, row in enumerate(rows):
        if len(row) != 2 or not isinstance(row[1], dict):
            raise RequestRejected(
                400,
                f"Deployment {target.deployment!r} takes DataFrame rows: each batch row must be "
                f"[ID, {{column: value}}]; row at index {index} (ID {row[0]!r}) is not.",
            )
    import pandas as pd  # imported on first use: it takes seconds and only DataFrame mode needs it

    return pd.DataFrame.from_records(
        [row[1] for row in rows], index=[row[0] for row in rows], columns=list(target.dataframe_columns or ())
    )


def _zip_frame_results(target: DeploymentVersion, ids: Sequence[Any], returned: Any) -> list[list[Any]]:
    values = returned.tolist() if hasattr(returned, "tolist") else list(returned)
    if len(values) != len(ids):
        raise ValueError(
            f"DataFrame deployment {target.deployment!r} returned {len(values)} results for {len(ids)} rows; "
            "it must return one value per row (list, Series or 1-D array)."
        )
    return [[row_id, value] for row_id, value in zip(ids, values, strict=True)]


def _run_dataframe(target: DeploymentVersion, envelope: InferenceEnvelope) -> Any:
    if envelope.is_batch:
        frame = _frame_for_rows(target, envelope.data)
        return _zip_frame_results(target, list(frame.index), target.function(frame))
    if not isinstance(envelope.data, dict):
        raise RequestRejected(
            400,
            f"Deployment {target.deployment!r} takes DataFrame rows: send an object of column values, "
            "or a batch of [ID, {column: value}] rows.",
        )
    frame = _frame_for_rows(target, [[0, envelope.data]])
    return _zip_frame_results(target, [0], target.function(frame))[0][1]


def _call(target: DeploymentVersion, envelope: InferenceEnvelope, sort_by_id: bool) -> Any:
    if target.dataframe_mode:
        value = _run_dataframe(target, envelope)
    elif envelope.is_batch:
        value = _run_rows(target.function, envelope.data)
    elif isinstance(envelope.data, list):
        value = target.function(*envelope.data)
    else:
        value = target.function(envelope.data)
    if sort_by_id and envelope.is_batch:
        value.sort(key=_id_sort_key)
    return value


def _row_failure_text(failure: RowFailed, row_count: int) -> str:
    return (
        f"Batch row ID {failure.row_id!r} (index {failure.row_index} of {row_count} rows) failed:\n"
        + format_deployment_error(failure.cause)
    )


def run_inference(
    target: DeploymentVersion, envelope: InferenceEnvelope, sort_by_id: bool
) -> InferenceOutcome:
    """
    Call the deployment and encode its result.

    Raises :class:`RequestRejected` for DataFrame rows of the wrong shape (a client error);
    every exception of the deployment itself becomes an outcome with ``error`` set.
    """
    try:
        return InferenceOutcome(encoded=encode_json(_call(target, envelope, sort_by_id)))
    except RequestRejected:
        raise
    except RowFailed as failure:
        return InferenceOutcome(error=_row_failure_text(failure, envelope.row_count))
    except Exception as error:
        return InferenceOutcome(error=format_deployment_error(error))
