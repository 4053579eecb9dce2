"""How big each workload is: the full size the targets are judged at, and a tiny size for CI."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BenchmarkSize:
    """
    The dimensions of one benchmark run.

    :param name: ``full`` or ``tiny``.
    :param scoring_rows: rows of the batch-scoring table (8 numeric features each).
    :param per_row_sample: rows the one-request-per-row loop scores; its rate is extrapolated.
    :param memory_rows: the two table sizes whose peak memory is compared.
    :param link_document_bytes: approximate size of the linked result document.
    :param repeats: runs of each measurement; medians and spreads are taken over them.
    """

    name: str
    scoring_rows: int
    per_row_sample: int
    memory_rows: tuple[int, int]
    link_document_bytes: int
    repeats: int


SIZES = {
    "full": BenchmarkSize(
        name="full",
        scoring_rows=200_000,
        per_row_sample=2_000,
        memory_rows=(200_000, 2_000_000),
        link_document_bytes=200_000_000,
        repeats=5,
    ),
    "tiny": BenchmarkSize(
        name="tiny",
        scoring_rows=2_000,
        per_row_sample=50,
        memory_rows=(1_000, 10_000),
        link_document_bytes=500_000,
        repeats=1,
    ),
}
