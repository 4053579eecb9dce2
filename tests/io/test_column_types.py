"""column_types names read as Arrow types, and a DataFrame's columns cast to them."""

from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pytest

from airflow_provider_modelbit.exceptions import ModelbitInputError
from airflow_provider_modelbit.io.column_types import parse_column_types, text_id_types, with_column_types
from airflow_provider_modelbit.io.encoding import encode_json


class TestParseColumnTypes:
    @pytest.mark.parametrize(
        ("spec", "expected"),
        [
            ("str", pa.string()),
            (str, pa.string()),
            ("int", pa.int64()),
            ("float", pa.float64()),
            ("bool", pa.bool_()),
            ("date", pa.date32()),
            ("int32", pa.int32()),
            ("timestamp[us]", pa.timestamp("us")),
            (pa.decimal128(10, 2), pa.decimal128(10, 2)),
        ],
    )
    def test_python_names_arrow_aliases_and_types(self, spec: object, expected: pa.DataType) -> None:
        assert parse_column_types({"c": spec}) == {"c": expected}

    def test_an_unknown_name_names_the_column(self) -> None:
        with pytest.raises(ModelbitInputError, match=r"column 'zip' the type 'zipcode'"):
            parse_column_types({"zip": "zipcode"})

    def test_not_a_mapping_is_refused(self) -> None:
        with pytest.raises(ModelbitInputError, match="must be a dict"):
            parse_column_types(["zip"])  # type: ignore[arg-type]

    def test_a_text_id_unless_told_otherwise(self) -> None:
        assert text_id_types("id", {}) == {"id": pa.string()}
        assert text_id_types("id", {"id": pa.int64()}) == {"id": pa.int64()}
        assert text_id_types(None, {}) == {}


class TestWithColumnTypes:
    def test_an_integer_zip_code_is_sent_as_text(self) -> None:
        frame = pd.DataFrame({"zip": [2134, 10001], "x": [1.5, None]}, index=[10, 11])
        cast = with_column_types(frame, {"zip": "str"})
        assert (
            encode_json(cast.to_dict(orient="records"))
            == b'[{"zip":"2134","x":1.5},{"zip":"10001","x":null}]'
        )
        assert list(cast.index) == [10, 11]
        assert frame["zip"].tolist() == [2134, 10001]  # the caller's DataFrame is left as it was

    def test_a_value_that_does_not_fit_names_the_column_and_index(self) -> None:
        frame = pd.DataFrame({"a": ["1", "x"]}, index=["r1", "r2"])
        with pytest.raises(ModelbitInputError, match=r"Column 'a' of the DataFrame .* at index 'r2'"):
            with_column_types(frame, {"a": "int"})

    def test_a_missing_column_and_data_that_is_not_a_dataframe_are_refused(self) -> None:
        with pytest.raises(ModelbitInputError, match=r"names 'b', but the DataFrame has no such column"):
            with_column_types(pd.DataFrame({"a": [1]}), {"b": "str"})
        with pytest.raises(
            ModelbitInputError, match="applies to the columns of a DataFrame, and data is a list"
        ):
            with_column_types([[0, 1]], {"a": "str"})

    def test_without_column_types_data_is_untouched(self) -> None:
        data = [[0, 1]]
        assert with_column_types(data, None) is data
