"""Medians with their spread, so that a figure from a noisy shared machine says how noisy it was."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any


def summarize(runs: Sequence[float]) -> dict[str, Any]:
    """The median of ``runs`` with the lowest and highest run, and the runs themselves."""
    if not runs:
        raise ValueError("Cannot summarize a figure that has no runs.")
    return {"median": statistics.median(runs), "low": min(runs), "high": max(runs), "runs": list(runs)}


def paired_ratios(numerators: Sequence[float], denominators: Sequence[float]) -> dict[str, Any]:
    """Per-round ratios of two figures measured side by side, summarized.

    Pairing each run with the run of the same round cancels most of the machine's slow periods,
    which a ratio of two medians taken at different moments would not.
    """
    if len(numerators) != len(denominators):
        raise ValueError(f"Cannot pair {len(numerators)} runs with {len(denominators)} runs.")
    return summarize([top / bottom for top, bottom in zip(numerators, denominators, strict=True)])
