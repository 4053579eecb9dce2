"""Batch row IDs: when two IDs are the same, which IDs a batch may hold, and results put back in input order.

Modelbit returns each row's ID unchanged, as the JSON it was sent as, and may list the results in
request order or sorted by ID; results are therefore matched to inputs by ID, never by position.

**The equality rule.** Two IDs are the same ID when they are sent as the same JSON value: ``1``
and ``numpy.int64(1)`` are one ID (both are sent as ``1``), but ``1.0``, ``true`` and ``"1"`` are
three others. The official client encodes with Python's ``json``, which writes ``1.0`` for a float
and ``1`` for an integer, and a server parsing the rows gives each back as it came; treating ``1``
and ``1.0`` as one ID would match an answer the server never gave to a row, and refuse a batch
(``[[1, ...], [1.0, ...]]``) the server tells apart. Every check below keys IDs with
:func:`row_id_key`; nothing else in the package compares IDs.
"""

from __future__ import annotations

import math
import numbers
from collections import deque
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import orjson

from airflow_provider_modelbit.exceptions import ModelbitIncompleteBatch, ModelbitInputError
from airflow_provider_modelbit.io.encoding import describe_value, encode_json

if TYPE_CHECKING:
    import pyarrow as pa

    from airflow_provider_modelbit.hooks.responses import InferenceCall

RowIdKey = int | str | bytes
_IDS_SHOWN = 5


def row_id_key(row_id: Any) -> RowIdKey:
    """
    Return the key under which ``row_id`` equals the ID the server answers for it.

    An ID is keyed by the JSON it is sent as: an ID sent as a JSON integer or string by that int or
    string, anything else (floats, booleans, timestamps sent as text) by its JSON. Plain ints and
    strings, nearly every ID, skip the encoder.

    :raises ModelbitInputError: the ID cannot be sent as JSON.
    """
    if type(row_id) is int or type(row_id) is str:
        return row_id
    try:
        encoded = encode_json(row_id)
    except TypeError:
        raise ModelbitInputError(
            f"Row ID {row_id!r} is {describe_value(row_id)} and cannot be sent as JSON; "
            "use a number or a string."
        ) from None
    decoded = orjson.loads(encoded)
    return decoded if type(decoded) is int or type(decoded) is str else encoded


def readable_id(key: RowIdKey) -> Any:
    """The ID a key stands for, as a person reads it (JSON text for the keys kept as JSON)."""
    return key.decode() if isinstance(key, bytes) else key


# --- what a batch may hold --------------------------------------------------------------------


def row_id_of(row: Any, position: int, deployment: str | None = None) -> Any:
    """
    Return a batch row's ID, refusing a row that is not a non-empty list ``[id, *args]``.

    :raises ModelbitInputError: naming the row's position (and the deployment when given).
    """
    if not isinstance(row, list | tuple) or not row:
        raise ModelbitInputError(
            f"Batch row {position}{_for(deployment)} is {row!r:.200}; every row must be a list [id, *args] "
            "with an ID. To send one input that is itself a list, wrap it as [[0, value]].",
            deployment=deployment,
        )
    return row[0]


def check_repeated_ids(
    rows: Sequence[Sequence[Any]], *, from_dataframe: bool, deployment: str | None = None
) -> bool:
    """
    Apply the one rule on repeated IDs to a whole input; return whether its IDs are unique.

    What goes over the wire is what Modelbit's own client sends: a DataFrame goes row by row as
    ``[index, {column: value}]`` whatever its index holds, so an index that repeats is sent as it
    is, and rows sharing an ID take the answers listed with it in the order the answer lists them
    (see :func:`input_positions`). Batch rows ``[[id, *args], ...]`` are IDs the user chose to
    match results by, so a repeat there is refused before any request.

    :param from_dataframe: the rows are a DataFrame's, their IDs its index.
    :raises ModelbitInputError: batch rows whose IDs repeat, naming the first repeat.
    """
    if from_dataframe:
        return False
    refuse_duplicate_ids(rows, deployment=deployment)
    return True


def refuse_duplicate_ids(rows: Iterable[Sequence[Any]], *, deployment: str | None = None) -> None:
    """
    Refuse batch rows whose IDs repeat (under :func:`row_id_key`) or a row without an ID.

    :raises ModelbitInputError: naming the first repeated ID and where it repeats.
    """
    seen: set[RowIdKey] = set()
    for position, row in enumerate(rows):
        key = row_id_key(row_id_of(row, position, deployment))
        if key in seen:
            raise ModelbitInputError(
                f"Row ID {row[0]!r} appears more than once (again at row {position}){_for(deployment)}; "
                "IDs match results to inputs, so each must be unique.",
                deployment=deployment,
            )
        seen.add(key)


def refuse_unusable_ids(rows: Iterable[Sequence[Any]], *, deployment: str) -> None:
    """
    Refuse an ID that is not a string or a finite number, Modelbit's documented ID types.

    :raises ModelbitInputError: naming the row, its ID and the ID's type.
    """
    for position, row in enumerate(rows):
        row_id = row_id_of(row, position, deployment)
        is_number = isinstance(row_id, numbers.Real) and not isinstance(row_id, bool)
        if not (isinstance(row_id, str) or (is_number and math.isfinite(row_id))):
            raise ModelbitInputError(
                f"Row {position} for {deployment!r} has ID {row_id!r} ({type(row_id).__name__}); an ID "
                "must be a string or a finite number (for a DataFrame: reset or set its index).",
                deployment=deployment,
            )


# --- matching answers to inputs ---------------------------------------------------------------


def input_positions(
    expected: Sequence[RowIdKey],
    answered: Iterable[RowIdKey],
    *,
    ids: Sequence[Any],
    call: InferenceCall,
) -> list[int]:
    """
    Return, for each input row, the position of its answer: results put back in input order.

    Rows sharing an ID (a DataFrame's non-unique index) take the answers listed with that ID in
    the order the answer lists them.

    :param expected: the key of each input row's ID, in input order.
    :param answered: the key of each answered row's ID, in the answer's order.
    :param ids: the input IDs as given, to name the missing ones.
    :param call: the call that answered: its deployment, version and branch are named in errors.
    :raises ModelbitIncompleteBatch: an ID is missing, unexpected, or answered more often than sent.
    """
    positions: dict[RowIdKey, deque[int]] = {}
    for position, key in enumerate(answered):
        positions.setdefault(key, deque()).append(position)
    sent: dict[RowIdKey, int] = {}
    for key in expected:
        sent[key] = sent.get(key, 0) + 1
    where = call.where
    repeated = [key for key, found in positions.items() if len(found) > sent.get(key, 0) > 0]
    if repeated:
        raise ModelbitIncompleteBatch(
            f"{where} answered ID {readable_id(repeated[0])!r} more than once for each of the "
            f"{sent[repeated[0]]} row(s) sent with it; the batch was not used.",
            deployment=call.deployment,
            version=call.version,
        )
    unexpected = [readable_id(key) for key in positions if key not in sent]
    missing = [
        row_id for row_id, key in zip(ids, expected, strict=True) if len(positions.get(key, ())) < sent[key]
    ]
    if unexpected or missing:
        raise ModelbitIncompleteBatch(
            f"{where} answered a batch of {len(expected)} rows with missing IDs {_show(missing)} and "
            f"unexpected IDs {_show(unexpected)}; the batch was not used.",
            deployment=call.deployment,
            version=call.version,
        )
    return [positions[key].popleft() for key in expected]


def table_in_input_order(table: pa.Table, ids: Sequence[Any], *, call: InferenceCall) -> pa.Table:
    """
    Return a results table (columns ``id``, ``result``) reordered to the input order of ``ids``.

    :param table: results read from a links document, in the server's order.
    :param ids: the input IDs, in input order.
    :param call: the call that answered, named in errors.
    :raises ModelbitIncompleteBatch: an ID is missing, unexpected or repeated.
    """
    expected = [row_id_key(row_id) for row_id in ids]
    answered = [row_id_key(row_id) for row_id in _table_ids(table)]
    return table.take(input_positions(expected, answered, ids=ids, call=call))


def _table_ids(table: pa.Table) -> list[Any]:
    from airflow_provider_modelbit.io.arrow_results import is_json_text

    ids = table.column("id").to_pylist()
    # IDs that Arrow cannot hold in one type without loss are stored as JSON text.
    if is_json_text(table.schema.field("id")):
        return [None if row_id is None else orjson.loads(row_id) for row_id in ids]
    return ids


def _for(deployment: str | None) -> str:
    return "" if deployment is None else f" for {deployment!r}"


def _show(ids: list[Any]) -> str:
    if not ids:
        return "none"
    shown = ", ".join(repr(row_id) for row_id in ids[:_IDS_SHOWN])
    return f"[{shown}{', ...' if len(ids) > _IDS_SHOWN else ''}] ({len(ids)})"
