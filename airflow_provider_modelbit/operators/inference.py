"""
Call a Modelbit deployment from a task: :class:`ModelbitInferenceOperator`.

The operator sends one input, a few batch rows or a small DataFrame to a deployment and hands
the result on — through XCom when it is small, or as a Parquet file at ``output_path``. Tables
too large to pass through a DAG file or XCom belong to ``ModelbitBatchInferenceOperator``.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk import Asset, BaseOperator

from airflow_provider_modelbit.defaults import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_CONN_ID,
    DEFAULT_MAX_CONCURRENCY,
    LATEST,
    LINKS,
)
from airflow_provider_modelbit.exceptions import ModelbitIncompleteBatch, ModelbitInputError
from airflow_provider_modelbit.operators.assets import announce_output, as_asset, with_asset_outlet
from airflow_provider_modelbit.operators.deferrable import CallbackDelivery, ModelbitDeferrableMixin
from airflow_provider_modelbit.operators.lineage import inference_lineage, xcom_input_tasks
from airflow_provider_modelbit.version_compat import conf

if TYPE_CHECKING:
    import pyarrow as pa
    from airflow.sdk import Context, ObjectStoragePath

    from airflow_provider_modelbit.hooks.batching import ChunkResult
    from airflow_provider_modelbit.hooks.modelbit import ModelbitHook
    from airflow_provider_modelbit.hooks.responses import InferenceCall


class ModelbitInferenceOperator(ModelbitDeferrableMixin, BaseOperator):
    """
    Run a Modelbit deployment on one input, batch rows or a DataFrame, and return the result.

    ``data`` takes three shapes, as Modelbit does:

    * a single input — any JSON value: ``10``, ``{"age": 31}``, or ``[1, "two", 3.0]`` for
      positional arguments. The task returns the deployment's return value;
    * batch rows ``[[id, *args], ...]`` — the task returns ``[[id, result], ...]`` in input order
      (results are matched to inputs by ID, never by position). IDs must be unique strings or
      numbers;
    * a pandas DataFrame — each row is sent as ``[index, {column: value}]``, as Modelbit's own
      client does; the index values are the IDs, and may repeat (rows sharing one take its answers
      in the order Modelbit lists them). NaN becomes ``null`` and timestamps ISO strings.

    To feed the output of an upstream task, pass its ``XComArg`` (``upstream.output`` or the
    object a ``@task`` call returns): the value arrives with its type — list, dict or DataFrame.
    A Jinja template such as ``"{{ ti.xcom_pull('upstream') }}"`` renders to *text* unless the DAG
    sets ``render_template_as_native_obj=True``; text is sent as one string input (the task log
    warns when such text looks like a list or dict).

    Without ``output_path`` the result goes to XCom, and a result larger than ``max_xcom_bytes``
    of JSON fails the task rather than bloating the metadata database. With ``output_path`` the
    results are written as Parquet — one row per input, columns ``id`` and ``result`` with JSON
    types kept as Arrow types (a single input gets id ``0``) — and the task returns
    ``{"path": ..., "rows": ..., "bytes": ...}``. The file appears only when the task succeeds.
    An input without rows (``[]``, an empty DataFrame) gives a file without rows whose ``result``
    has the type ``result_schema`` declares, else Arrow ``null`` (no result to type it from), and
    whose ``id`` has the DataFrame index's type (``null`` for ``[]``).

    ``response_format="links"`` asks Modelbit to return the results as a download link (for
    answers too large to send inline). On its way to ``output_path`` the linked document is
    streamed into Parquet, never held whole in memory; its IDs are checked against the input and
    a cut-short download or an expired link fails the task.

    :param deployment: name of the Modelbit deployment. (templated)
    :param data: the input: a single JSON value, batch rows ``[[id, *args], ...]``, or a pandas
        DataFrame. (templated)
    :param version: ``"latest"``, a version number, or an alias such as ``"official"``. (templated)
    :param branch: git branch of the deployment; default: the connection's branch, else ``main``.
        (templated)
    :param modelbit_conn_id: the Airflow Connection of type ``modelbit``. (templated)
    :param timeout_seconds: inference time limit sent to Modelbit (1-300); default: the
        connection's, else Modelbit's (300).
    :param response_format: ``None`` for inline results, or ``"links"`` for results returned
        through a download link (for large answers).
    :param output_path: where to write the results as Parquet: a local path or any
        ``ObjectStoragePath`` URL (``s3://...``, ``file://...``). ``None`` returns them via XCom.
        (templated)
    :param output_conn_id: Airflow Connection used to reach ``output_path``, if it needs one.
    :param idempotent: declare that scoring the same input twice is harmless, which lets requests
        be re-sent after a read timeout or a dropped connection (rows may then run twice).
    :param max_xcom_bytes: largest JSON result, in bytes, returned through XCom.
    :param result_schema: ``{field: type}`` of the deployment's object results, as
        ``ModelbitBatchInferenceOperator`` takes it: the Parquet output's ``result``, an empty one
        included, is a struct of exactly these fields with these types; a result field not listed
        fails the task naming it.
    :param column_types: for a DataFrame ``data``, ``{column: type}`` to cast columns to before
        sending, named as in ``ModelbitBatchInferenceOperator`` (``{"zip_code": "str"}``).
    :param asset: an Asset (or its URI) updated when the Parquet output is written, so downstream
        DAGs can be scheduled on fresh scores; needs ``output_path``.
    :param deferrable: wait for the result in the triggerer through a Modelbit webhook instead of
        holding a worker slot; default ``[operators] default_deferrable``. Each request is submitted
        asynchronously with a signed webhook URL (the connection needs ``callback_base_url`` and
        ``callback_secret``); the task resumes when every delivery is in and returns what the
        synchronous path would.
    """

    template_fields: Sequence[str] = (
        "deployment",
        "data",
        "version",
        "branch",
        "output_path",
        "modelbit_conn_id",
    )
    # "py" rather than "json": data may be a DataFrame, whose repr is the readable rendering.
    template_fields_renderers = {"data": "py"}
    ui_color = "#e3f2fd"

    def __init__(
        self,
        *,
        deployment: str,
        data: Any,
        version: str | int = LATEST,
        branch: str | None = None,
        modelbit_conn_id: str = DEFAULT_CONN_ID,
        timeout_seconds: int | None = None,
        response_format: str | None = None,
        output_path: str | ObjectStoragePath | None = None,
        output_conn_id: str | None = None,
        idempotent: bool = False,
        max_xcom_bytes: int = 1_000_000,
        column_types: Mapping[str, Any] | None = None,
        result_schema: Mapping[str, Any] | None = None,
        asset: Asset | str | None = None,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        **kwargs: Any,
    ) -> None:
        if asset is not None and output_path is None:
            raise ModelbitInputError(
                f"asset={asset!r} needs output_path: the asset is the Parquet file the task writes.",
                deployment=deployment,
            )
        super().__init__(**with_asset_outlet(kwargs, asset))
        self.asset = as_asset(asset) if asset is not None else None
        self.deployment = deployment
        self.data = data
        self.version = version
        self.branch = branch
        self.modelbit_conn_id = modelbit_conn_id
        self.timeout_seconds = timeout_seconds
        self.response_format = response_format
        self.output_path = output_path
        self.output_conn_id = output_conn_id
        self.idempotent = idempotent
        self.max_xcom_bytes = max_xcom_bytes
        self.column_types = dict(column_types or {})
        self.result_schema = dict(result_schema) if result_schema is not None else None
        self._result_type = _declared_result_type(result_schema)  # an unknown type fails at parse time
        self.deferrable = deferrable
        # Remembered before rendering replaces it: a template can only produce text.
        self._data_is_template = isinstance(data, str) and "{{" in data
        self.input_tasks = xcom_input_tasks(data)  # upstream tasks whose XCom is scored, for lineage

    @cached_property
    def hook(self) -> ModelbitHook:
        """Return the hook for ``modelbit_conn_id`` (the connection is read on first request)."""
        from airflow_provider_modelbit.hooks.modelbit import ModelbitHook

        return ModelbitHook(modelbit_conn_id=self.modelbit_conn_id)

    def execute(self, context: Context) -> Any:
        self._check_arguments()
        if self.deferrable:
            return self.execute_deferrable(context)
        started = time.monotonic()
        if self.response_format == LINKS and self.output_path is not None:
            # Streamed from the link to Parquet; results bound for XCom are small enough for the hook.
            outcome = self._write_link_results(context, self._request_links())
        else:
            outcome = self._write_results(context, self._infer())
        self._announce(context, outcome)
        self.log.info(
            "Scored %d input(s) on %s (version %s) in %.2f s",
            self._input_count,
            self.deployment,
            self.version,
            time.monotonic() - started,
        )
        return outcome

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """The OpenLineage inputs, Parquet output and ``modelbit`` run facet of this finished task."""
        return inference_lineage(self)

    # ------------------------------------------------------------------ input side

    @cached_property
    def _call(self) -> InferenceCall:
        """What this task calls, as its messages name it: deployment, version and branch."""
        return self.hook.call_target(self.deployment, self.version, self.branch)

    @cached_property
    def _batch_rows(self) -> list[list[Any]] | None:
        """Return ``data`` as batch rows ``[[id, *args], ...]``, or ``None`` for a single input."""
        from airflow_provider_modelbit.hooks.batching import input_rows
        from airflow_provider_modelbit.io.column_types import with_column_types

        return input_rows(with_column_types(self.data, self.column_types), deployment=self.deployment)

    @property
    def callback_unique_ids(self) -> bool:  # type: ignore[override]
        """Whether the rows' IDs are unique: batch rows' must be, a DataFrame's index may repeat."""
        from airflow_provider_modelbit.hooks.batching import is_dataframe

        return not is_dataframe(self.data)

    @property
    def _is_single(self) -> bool:
        return self._batch_rows is None

    @property
    def _input_count(self) -> int:
        return 1 if self._batch_rows is None else len(self._batch_rows)

    scored_rows = _input_count  # what a finished task scored, for the deferred path's metrics

    def _iter_chunks(self) -> Iterator[Any]:
        """
        Yield the ``data`` of each request, in input order.

        A single input is one chunk; batch rows are cut into chunks of at most
        :data:`~airflow_provider_modelbit.defaults.DEFAULT_BATCH_SIZE` rows. Shared by the synchronous
        and the deferred path.
        """
        if self._batch_rows is None:
            yield self.data
            return
        for start in range(0, len(self._batch_rows), DEFAULT_BATCH_SIZE):
            yield self._batch_rows[start : start + DEFAULT_BATCH_SIZE]

    def _callback_payloads(self) -> Iterator[Any]:
        """The ``data`` of each async request on the deferred path: the same chunks as the sync path."""
        return self._iter_chunks()

    def _callback_work(self) -> dict[str, Any]:
        """Nothing: ``data`` is in memory, so the job's payload hashes are checked against it directly."""
        return {}

    def _check_arguments(self) -> None:
        if self.response_format not in (None, LINKS):
            raise ModelbitInputError(
                f"response_format must be None or {LINKS!r}, got {self.response_format!r}.",
                deployment=self.deployment,
            )
        if isinstance(self.max_xcom_bytes, bool) or not isinstance(self.max_xcom_bytes, int):
            raise ModelbitInputError(f"max_xcom_bytes must be an integer, got {self.max_xcom_bytes!r}.")
        if self.output_path is not None:
            from airflow_provider_modelbit.io.destination import check_output_location

            check_output_location(self._destination)
        self._warn_if_data_rendered_to_text()

    def _warn_if_data_rendered_to_text(self) -> None:
        if self._data_is_template and isinstance(self.data, str) and self.data.lstrip()[:1] in ("[", "{"):
            self.log.warning(
                "data was rendered from a template into text that looks like a list or dict; it is "
                "sent as one string. Pass the upstream task's XComArg (upstream.output) as data, or "
                "set render_template_as_native_obj=True on the DAG, to send the value itself."
            )

    # ------------------------------------------------------------------ requests

    def _request_options(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "branch": self.branch,
            "timeout_seconds": self.timeout_seconds,
            "idempotent": self.idempotent,
        }

    def _infer(self) -> Iterator[ChunkResult]:
        """Send the input and yield the parsed results per chunk, in input order."""
        if self._is_single:
            yield self._infer_single()
            return
        yield from self.hook.infer_chunks(
            self.deployment,
            self._iter_chunks(),
            response_format=self.response_format,
            max_concurrency=DEFAULT_MAX_CONCURRENCY,
            unique_ids=self.callback_unique_ids,
            **self._request_options(),
        )

    def _infer_single(self) -> ChunkResult:
        from airflow_provider_modelbit.hooks.batching import ChunkResult
        from airflow_provider_modelbit.io.xcom_size import json_size

        started = time.monotonic()
        value = self.hook.get_inference(
            self.deployment, self.data, response_format=self.response_format, **self._request_options()
        )
        return ChunkResult(
            index=0,
            rows=[[0, value]],
            seconds=time.monotonic() - started,
            response_bytes=json_size(value),
        )

    def _request_links(self) -> Iterator[str]:
        """Send each chunk asking for a results link, and yield the link URLs in input order."""
        for chunk in self._iter_chunks():
            yield self.hook.request_link(
                self.deployment, chunk, unique_ids=self.callback_unique_ids, **self._request_options()
            )

    # ------------------------------------------------------------------ output side

    def _collect_callback_results(self, context: Context, deliveries: Iterator[CallbackDelivery]) -> Any:
        """Turn the webhook deliveries into the return value, exactly as the synchronous path would."""
        if self.response_format == LINKS:
            outcome = self._write_link_results(context, (delivery.value for delivery in deliveries))
        else:
            outcome = self._write_results(context, self._delivered_chunk_results(deliveries))
        self._announce(context, outcome)
        return outcome

    def _announce(self, context: Context, outcome: Any) -> None:
        """Attach the Parquet output to the asset event, when the task has an asset."""
        if self.asset is not None:
            announce_output(context, self.asset, outcome["path"], outcome["rows"])

    def _delivered_chunk_results(self, deliveries: Iterable[CallbackDelivery]) -> Iterator[ChunkResult]:
        """Yield each delivery as a ChunkResult, batch rows matched to the chunk's input by ID."""
        from airflow_provider_modelbit.hooks.batching import ChunkResult, encode_chunk, reassemble

        for delivery, chunk in zip(deliveries, self._iter_chunks(), strict=True):
            if self._is_single:
                rows = [[0, delivery.value]]
            else:
                rows = reassemble(
                    encode_chunk(chunk, unique_ids=self.callback_unique_ids), delivery.value, call=self._call
                )
            yield ChunkResult(
                index=delivery.chunk, rows=rows, seconds=delivery.seconds, response_bytes=delivery.size
            )

    def _write_results(self, context: Context, chunk_results: Iterable[ChunkResult]) -> Any:
        """
        Turn per-chunk results into the task's return value.

        Without ``output_path``: the value (single input) or ``[[id, result], ...]`` (batch),
        refused when over ``max_xcom_bytes``. With it: a Parquet file, summarised as
        ``{"path", "rows", "bytes"}``. Shared by the synchronous and the deferred path.
        """
        if self.output_path is not None:
            from airflow_provider_modelbit.io.arrow_results import results_table

            return self._write_parquet(
                results_table([row[0] for row in chunk.rows], [row[1] for row in chunk.rows])
                for chunk in chunk_results
            )
        rows = [row for chunk in chunk_results for row in chunk.rows]
        value = rows[0][1] if self._is_single else rows
        from airflow_provider_modelbit.io.xcom_size import json_size

        self._check_xcom_size(json_size(value))
        return value

    def _write_link_results(self, context: Context, link_urls: Iterable[str]) -> Any:
        """
        Download results links into the task's return value, streaming each document.

        ``link_urls`` holds one link per chunk of :meth:`_iter_chunks`, in the same order. Without
        ``output_path`` the downloads stop as soon as they pass ``max_xcom_bytes``. Used by the
        synchronous path for Parquet output, and by the deferred path, whose webhook deliveries
        carry links.
        """
        if self.output_path is None:
            return self._read_links_for_xcom(link_urls)
        if self._is_single:
            return self._write_parquet([self._single_link_table(next(iter(link_urls)))])
        with tempfile.TemporaryDirectory(prefix="modelbit-links-") as scratch:
            return self._write_parquet(self._batch_link_tables(link_urls, Path(scratch)))

    def _read_links_for_xcom(self, link_urls: Iterable[str]) -> Any:
        from airflow_provider_modelbit.io.xcom_size import read_links_within

        values = read_links_within(self.hook.read_link, link_urls, self.max_xcom_bytes, call=self._call)
        if self._is_single:
            return values[0]
        rows = [row for chunk_rows in values for row in chunk_rows]
        return self._checked_batch_rows(rows, self._batch_rows or [])

    def _single_link_table(self, url: str) -> pa.Table:
        from airflow_provider_modelbit.io.arrow_results import results_table
        from airflow_provider_modelbit.io.links import read_link_value

        return results_table([0], [self.hook.read_link(url, read_link_value)])

    def _batch_link_tables(self, link_urls: Iterable[str], scratch: Path) -> Iterator[pa.Table]:
        """Yield each link's rows as a table in input order; one chunk is in memory at a time."""
        from airflow_provider_modelbit.io.links import link_table_in_input_order

        for index, (url, chunk) in enumerate(zip(link_urls, self._iter_chunks(), strict=True)):
            started = time.monotonic()
            table = link_table_in_input_order(
                self.hook.read_link,
                url,
                [row[0] for row in chunk],
                scratch / f"part-{index:05d}.parquet",
                call=self._call,
            )
            self.log.info(
                "Downloaded results link of %d rows from %s (version %s) in %.2f s",
                len(chunk),
                self.deployment,
                self.version,
                time.monotonic() - started,
            )
            yield table

    def _write_parquet(self, tables: Iterable[pa.Table]) -> dict[str, Any]:
        """Write result tables, in order, as one Parquet file at ``output_path`` (nothing on failure)."""
        from airflow_provider_modelbit.io.result_writer import write_results_parquet

        destination = self._destination
        rows = write_results_parquet(
            destination,
            tables,
            result_type=self._result_type,
            empty_schema=self._empty_schema(),
            before_replace=lambda rows: self._refuse_incomplete(rows, destination),
        )
        size = destination.stat().st_size
        self.log.info("Wrote %d result rows (%d bytes) to %s", rows, size, destination)
        return {"path": str(destination), "rows": rows, "bytes": size}

    def _empty_schema(self) -> pa.Schema:
        """The output's schema when no input row gives a result to type it from."""
        import pyarrow as pa

        from airflow_provider_modelbit.hooks.batching import is_dataframe
        from airflow_provider_modelbit.io.arrow_results import results_table

        schema = results_table([], []).schema
        if is_dataframe(self.data):
            # An index that may hold IDs is of numbers or strings: typed as a full output's IDs are.
            index = pa.array(self.data.index).type
            number = pa.int64() if pa.types.is_integer(index) else pa.float64()
            id_type = number if pa.types.is_integer(index) or pa.types.is_floating(index) else pa.string()
            schema = schema.set(0, pa.field("id", id_type))
        return schema

    @cached_property
    def _destination(self) -> ObjectStoragePath:
        from airflow_provider_modelbit.io.atomic import resolve_output

        assert self.output_path is not None
        return resolve_output(self.output_path, self.output_conn_id)

    def _refuse_incomplete(self, rows: int, destination: ObjectStoragePath) -> None:
        """Fail before the file replaces what was at ``destination`` unless every input has its result."""
        if rows != self._input_count:
            raise ModelbitIncompleteBatch(
                f"The results of {self.deployment!r} hold {rows} rows for {self._input_count} inputs; "
                f"nothing was written to {destination} (what was there is untouched).",
                deployment=self.deployment,
                version=self.version,
            )

    def _check_xcom_size(self, size: int) -> None:
        from airflow_provider_modelbit.io.xcom_size import refuse_oversized

        refuse_oversized(size, self.max_xcom_bytes, call=self._call)

    def _checked_batch_rows(self, rows: list[list[Any]], inputs: list[list[Any]]) -> list[list[Any]]:
        """Return ``rows`` matched to ``inputs`` by ID, in input order; refuse missing or extra IDs."""
        from airflow_provider_modelbit.io.row_ids import input_positions, row_id_key

        ids = [row[0] for row in inputs]
        positions = input_positions(
            [row_id_key(row_id) for row_id in ids],
            [row_id_key(row[0]) for row in rows],
            ids=ids,
            call=self._call,
        )
        return [[row_id, rows[position][1]] for row_id, position in zip(ids, positions, strict=True)]


# ---------------------------------------------------------------------- results


def _declared_result_type(result_schema: Mapping[str, Any] | None) -> pa.DataType | None:
    # Arrow is imported only for a declared schema: DAG files without one parse without it.
    if not result_schema:
        return None
    from airflow_provider_modelbit.io.result_writer import declared_result_type

    return declared_result_type(result_schema)


__all__ = ["ModelbitInferenceOperator"]
