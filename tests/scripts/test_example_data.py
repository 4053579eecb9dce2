"""The sample churn data: the columns churn_scorer expects, deterministic, split into partitions."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from example_data import (
    PLANS,
    ExampleDataLayout,
    churn_table,
    examples_data_root,
    main,
    split_evenly,
    write_example_data,
)

EXPECTED_SCHEMA = pa.schema(
    [
        ("customer_id", pa.string()),
        ("tenure_months", pa.int64()),
        ("monthly_spend", pa.float64()),
        ("plan", pa.string()),
    ]
)


class TestChurnTable:
    def test_has_the_columns_churn_scorer_expects(self) -> None:
        assert churn_table(10).schema.equals(EXPECTED_SCHEMA)

    def test_same_seed_same_table(self) -> None:
        assert churn_table(500, seed=7).equals(churn_table(500, seed=7))
        assert not churn_table(500, seed=7).equals(churn_table(500, seed=8))

    def test_values_are_plausible(self) -> None:
        table = churn_table(2_000).to_pydict()
        assert len(set(table["customer_id"])) == 2_000
        assert set(table["plan"]) <= set(PLANS)
        assert all(0 <= months < 120 for months in table["tenure_months"])
        assert all(spend >= 0 for spend in table["monthly_spend"])


class TestSplitEvenly:
    @pytest.mark.parametrize(
        ("rows", "parts", "sizes"),
        [(10, 3, [4, 3, 3]), (9, 3, [3, 3, 3]), (2, 4, [1, 1, 0, 0]), (5, 1, [5])],
    )
    def test_sizes_differ_by_at_most_one(self, rows: int, parts: int, sizes: list[int]) -> None:
        table = churn_table(rows)
        slices = split_evenly(table, parts)
        assert [piece.num_rows for piece in slices] == sizes
        assert pa.concat_tables(slices).equals(table)


class TestWriteExampleData:
    def test_writes_the_table_and_its_partitions(self, tmp_path: Path) -> None:
        layout = write_example_data(tmp_path, rows=1_001, partitions=4)
        whole = pq.read_table(layout.customers_file)
        parts = [pq.read_table(path) for path in sorted(layout.partitions_dir.glob("part-*.parquet"))]
        assert whole.num_rows == 1_001
        assert len(parts) == 4
        assert pa.concat_tables(parts).equals(whole)

    def test_rerun_with_fewer_partitions_leaves_no_stale_file(self, tmp_path: Path) -> None:
        write_example_data(tmp_path, rows=100, partitions=5)
        layout = write_example_data(tmp_path, rows=100, partitions=2)
        assert sorted(path.name for path in layout.partitions_dir.iterdir()) == [
            "part-000.parquet",
            "part-001.parquet",
        ]

    @pytest.mark.parametrize(("rows", "partitions"), [(0, 1), (10, 0)])
    def test_refuses_empty_sizes(self, tmp_path: Path, rows: int, partitions: int) -> None:
        with pytest.raises(ValueError, match="at least 1"):
            write_example_data(tmp_path, rows=rows, partitions=partitions)


class TestExamplesDataRoot:
    def test_explicit_folder_wins(self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
        monkeypatch.setenv("MODELBIT_EXAMPLES_DATA", str(tmp_path / "data"))
        monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path / "home"))
        assert examples_data_root() == tmp_path / "data"

    def test_defaults_under_airflow_home(self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
        monkeypatch.delenv("MODELBIT_EXAMPLES_DATA", raising=False)
        monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path / "home"))
        assert examples_data_root() == tmp_path / "home" / "modelbit-examples"


def test_command_line_writes_to_dest(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--rows", "50", "--partitions", "2", "--dest", str(tmp_path)]) == 0
    assert pq.read_metadata(ExampleDataLayout(tmp_path).customers_file).num_rows == 50
    assert "wrote 50 rows" in capsys.readouterr().out
