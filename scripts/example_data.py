"""Sample churn data for the example DAGs, generated locally (nothing is downloaded).

The table has one row per customer: ``customer_id`` (string), ``tenure_months`` (int64),
``monthly_spend`` (double) and ``plan`` (string) — the columns the local server's
``churn_scorer`` deployment expects. The same customers are written twice:

- ``<root>/churn/customers.parquet``: the whole table, scored nightly by
  ``modelbit_batch_scoring`` and ``modelbit_async_callback``;
- ``<root>/churn/partitions/part-NNN.parquet``: the table split into several files, scored one
  mapped task per file by ``modelbit_partitioned_scoring``.

``<root>`` is ``$MODELBIT_EXAMPLES_DATA``, else ``$AIRFLOW_HOME/modelbit-examples`` — the same
default the example DAGs use for their input params. Run it on its own with::

    python scripts/example_data.py --rows 50000 --partitions 4 --dest /tmp/modelbit-examples
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

PLANS = ("free", "basic", "pro", "enterprise")
# Cheaper plans are more common, as in most subscription businesses.
PLAN_WEIGHTS = (0.4, 0.3, 0.2, 0.1)
PLAN_BASE_SPEND = {"free": 0.0, "basic": 19.0, "pro": 49.0, "enterprise": 199.0}
DEFAULT_ROWS = 40_000
DEFAULT_PARTITIONS = 4


def examples_data_root() -> Path:
    """Where the example DAGs look for their data unless a DAG param says otherwise."""
    explicit = os.environ.get("MODELBIT_EXAMPLES_DATA")
    if explicit:
        return Path(explicit)
    airflow_home = os.environ.get("AIRFLOW_HOME", os.path.expanduser("~/airflow"))
    return Path(airflow_home) / "modelbit-examples"


@dataclass(frozen=True)
class ExampleDataLayout:
    """File locations under one examples data folder.

    :param root: the examples data folder (see :func:`examples_data_root`).
    """

    root: Path

    @property
    def customers_file(self) -> Path:
        return self.root / "churn" / "customers.parquet"

    @property
    def partitions_dir(self) -> Path:
        return self.root / "churn" / "partitions"

    @property
    def scores_dir(self) -> Path:
        return self.root / "scores"


def churn_table(rows: int, *, seed: int = 0) -> pa.Table:
    """A deterministic churn table of ``rows`` customers (same seed, same table)."""
    generator = np.random.default_rng(seed)
    plan_index = generator.choice(len(PLANS), size=rows, p=PLAN_WEIGHTS)
    tenure = generator.integers(0, 120, size=rows, dtype=np.int64)
    base_spend = np.array([PLAN_BASE_SPEND[plan] for plan in PLANS])[plan_index]
    usage_spend = generator.gamma(shape=2.0, scale=12.0, size=rows)
    return pa.table(
        {
            "customer_id": pa.array([f"C{number:08d}" for number in range(1, rows + 1)], pa.string()),
            "tenure_months": pa.array(tenure, pa.int64()),
            "monthly_spend": pa.array(np.round(base_spend + usage_spend, 2), pa.float64()),
            "plan": pa.array(np.array(PLANS)[plan_index].tolist(), pa.string()),
        }
    )


def split_evenly(table: pa.Table, parts: int) -> list[pa.Table]:
    """``parts`` consecutive slices of ``table`` whose sizes differ by at most one row."""
    size, remainder = divmod(table.num_rows, parts)
    slices, offset = [], 0
    for index in range(parts):
        length = size + (1 if index < remainder else 0)
        slices.append(table.slice(offset, length))
        offset += length
    return slices


def write_example_data(
    root: Path, *, rows: int = DEFAULT_ROWS, partitions: int = DEFAULT_PARTITIONS, seed: int = 0
) -> ExampleDataLayout:
    """Write the whole table and its partition files under ``root``, replacing older files."""
    if rows < 1 or partitions < 1:
        raise ValueError(f"rows and partitions must be at least 1 (got rows={rows}, partitions={partitions})")
    layout = ExampleDataLayout(root)
    table = churn_table(rows, seed=seed)
    layout.customers_file.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, layout.customers_file)
    _replace_partitions(layout.partitions_dir, split_evenly(table, min(partitions, rows)))
    return layout


def _replace_partitions(directory: Path, tables: Sequence[pa.Table]) -> None:
    # Stale files from an earlier run with more partitions would be scored too, so clear them.
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("part-*.parquet"):
        stale.unlink()
    for index, table in enumerate(tables):
        pq.write_table(table, directory / f"part-{index:03d}.parquet")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write the sample churn data used by the example DAGs.")
    parser.add_argument("--rows", type=int, default=DEFAULT_ROWS, help="customers in the table")
    parser.add_argument("--partitions", type=int, default=DEFAULT_PARTITIONS, help="partition files")
    parser.add_argument("--dest", type=Path, default=None, help="data folder (default: as the DAGs use)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; same seed, same data")
    args = parser.parse_args(argv)
    layout = write_example_data(
        args.dest or examples_data_root(), rows=args.rows, partitions=args.partitions, seed=args.seed
    )
    print(f"wrote {args.rows} rows to {layout.customers_file} and {layout.partitions_dir}/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
