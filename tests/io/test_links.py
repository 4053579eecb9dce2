"""Batch answers downloaded from links are streamed into Parquet without loading them whole."""

from __future__ import annotations

import io
import json
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from airflow_provider_modelbit.exceptions import ModelbitIncompleteBatch
from airflow_provider_modelbit.io.links import (
    link_rows_to_parquet,
    link_table_in_input_order,
    read_link_value,
)
from tests.inference_calls import call_to


def pieces(document: bytes, size: int = 7) -> Iterator[bytes]:
    """The document cut into small pieces, as an HTTP download delivers it."""
    for start in range(0, len(document), size):
        yield document[start : start + size]


def to_parquet(document: bytes, rows_per_group: int = 2) -> tuple[int, list[dict[str, Any]]]:
    sink = io.BytesIO()
    rows = link_rows_to_parquet(pieces(document), sink, rows_per_group=rows_per_group)
    return rows, pq.read_table(io.BytesIO(sink.getvalue())).to_pylist()


ROWS = [[1, 0.5], [2, 0.25], [3, None], [4, 1]]
EXPECTED = [
    {"id": 1, "result": 0.5},
    {"id": 2, "result": 0.25},
    {"id": 3, "result": None},
    {"id": 4, "result": 1.0},
]


class TestLinkRowsToParquet:
    def test_wide_rows_are_grouped_by_bytes(self) -> None:
        """However many rows a group may hold, it ends after ``bytes_per_group`` of the document."""
        document = json.dumps([[row, [row + 0.123456789] * 256] for row in range(2_000)]).encode()
        to_parquet(json.dumps(ROWS).encode())  # one-time imports are not what is measured
        tracemalloc.start()
        try:
            rows = link_rows_to_parquet(
                pieces(document, 1 << 16), io.BytesIO(), rows_per_group=50_000, bytes_per_group=1 << 18
            )
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert rows == 2_000
        assert peak < len(document) / 2

    @pytest.mark.parametrize("document", [ROWS, {"data": ROWS}], ids=["bare", "wrapped"])
    def test_writes_rows_in_document_order(self, document: Any) -> None:
        assert to_parquet(json.dumps(document).encode()) == (4, EXPECTED)

    def test_types_promote_across_row_groups(self) -> None:
        """A row group of nulls, then ints, then floats still gives one double column."""
        rows, table = to_parquet(json.dumps([[1, None], [2, None], [3, 1], [4, 2], [5, 2.5]]).encode())
        assert rows == 5
        assert [row["result"] for row in table] == [None, None, 1.0, 2.0, 2.5]

    def test_mixed_types_across_row_groups_become_json_text(self) -> None:
        _, table = to_parquet(json.dumps([[1, 1], [2, 2], [3, "three"]]).encode())
        assert [row["result"] for row in table] == ["1", "2", '"three"']

    def test_empty_batch_gives_an_empty_file_with_columns(self) -> None:
        sink = io.BytesIO()
        assert link_rows_to_parquet([b"[]"], sink) == 0
        assert pq.read_table(io.BytesIO(sink.getvalue())).column_names == ["id", "result"]

    @pytest.mark.parametrize(
        ("document", "message"),
        [
            (b"[[1, 0.5], [2, 0.", "ended early"),
            (b"[[1, 0.5, 3]]", "must be \\[id, result\\]"),
            (b'{"error": "boom"}', "instead of a batch answer"),
            (b'"just text"', "instead of a batch answer"),
        ],
        ids=["truncated", "malformed row", "not data", "single value"],
    )
    def test_broken_documents_are_refused(self, document: bytes, message: str) -> None:
        with pytest.raises(ModelbitIncompleteBatch, match=message):
            link_rows_to_parquet(pieces(document), io.BytesIO())


class TestReadLinkValue:
    @pytest.mark.parametrize(
        ("document", "value"),
        [
            (b"5", 5),
            (b'{"data": {"a": 1}}', {"a": 1}),
            (b'{"data": 1, "other": 2}', {"data": 1, "other": 2}),
            (b"[[1, 2]]", [[1, 2]]),
        ],
    )
    def test_unwraps_only_a_data_envelope(self, document: bytes, value: Any) -> None:
        assert read_link_value(pieces(document, 2)) == value

    def test_truncated_document_is_reported(self) -> None:
        with pytest.raises(ModelbitIncompleteBatch, match="cut short"):
            read_link_value([b'{"data": [1, 2'])

    def test_error_names_its_source(self) -> None:
        with pytest.raises(
            ModelbitIncompleteBatch, match=r"^Deployment 'd': the link returned 3 bytes"
        ) as caught:
            read_link_value([b"[1,"], source="Deployment 'd': the link", deployment="d", version=2)
        assert caught.value.deployment == "d"


class TestLinkTableInInputOrder:
    def test_streamed_reordered_and_removed(self, tmp_path: Path) -> None:
        """The document goes to a scratch Parquet file, comes back in input order, and the file is removed."""
        document = b'{"data": [["b", 2], ["a", 1]]}'
        part = tmp_path / "part.parquet"

        def read_link(url: str, consume: Any) -> None:
            assert url == "https://store/x"
            consume(pieces(document, 5))

        table = link_table_in_input_order(read_link, "https://store/x", ["a", "b"], part, call=call_to())
        assert table.to_pylist() == [{"id": "a", "result": 1}, {"id": "b", "result": 2}]
        assert not part.exists()

    def test_missing_id_is_refused_and_the_file_removed(self, tmp_path: Path) -> None:
        part = tmp_path / "part.parquet"
        with pytest.raises(ModelbitIncompleteBatch, match=r"missing IDs \['c'\]"):
            link_table_in_input_order(
                lambda url, consume: consume([b'[["a", 1]]']),
                "u",
                ["a", "c"],
                part,
                call=call_to(),
            )
        assert not part.exists()
