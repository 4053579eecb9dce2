"""The input tables the scoring workloads read: N rows of eight numeric features, as Parquet."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

FEATURE_COUNT = 8
FEATURE_NAMES = tuple(f"feature_{index}" for index in range(FEATURE_COUNT))
# Written in slices so that generating the 2,000,000-row table does not itself need much memory.
_ROWS_PER_SLICE = 100_000


def _feature_slice(generator: np.random.Generator, rows: int) -> pa.Table:
    columns = {name: generator.normal(size=rows).round(6) for name in FEATURE_NAMES}
    return pa.table(columns)


def write_feature_table(path: Path, rows: int, seed: int = 7) -> Path:
    """Write ``rows`` rows of float features to ``path`` unless an identical table is already there."""
    if path.exists() and pq.ParquetFile(path).metadata.num_rows == rows:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    generator = np.random.default_rng(seed)
    schema = pa.schema([(name, pa.float64()) for name in FEATURE_NAMES])
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, rows, _ROWS_PER_SLICE):
            writer.write_table(_feature_slice(generator, min(_ROWS_PER_SLICE, rows - start)))
    return path
