"""A large links-mode result to Parquet the provider's way: ``ModelbitHook.open_link`` streamed into
``link_rows_to_parquet`` (incremental parse, one row group at a time).

Usage: ``python -m benchmarks.clients.links_streamed LINK_URL OUTPUT``
"""

from __future__ import annotations

import argparse
from pathlib import Path

from airflow_provider_modelbit.hooks.modelbit import ModelbitHook
from airflow_provider_modelbit.io.links import link_rows_to_parquet
from benchmarks.clients.report import measured, report


def stream_link_to_parquet(link_url: str, output_path: Path) -> int:
    """Download ``link_url`` piece by piece into Parquet at ``output_path``; returns the row count."""
    hook = ModelbitHook()  # links carry their own signature: no connection is read for them
    with hook.open_link(link_url) as pieces, output_path.open("wb") as output:
        return link_rows_to_parquet(pieces, output)


def _import_lazily_loaded_modules() -> None:
    # pyarrow imports pandas on its first conversion of Python objects: pay for that before the
    # measured section, as every scoring client does with its warm-up.
    import pandas  # noqa: F401


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("link_url")
    parser.add_argument("output", type=Path)
    arguments = parser.parse_args()
    _import_lazily_loaded_modules()
    with measured() as measurement:
        measurement.rows = stream_link_to_parquet(arguments.link_url, arguments.output)
    report(measurement)


if __name__ == "__main__":
    main()
