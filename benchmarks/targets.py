"""The issue's targets, each checked against the measured median: PASS or MISS."""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

_COMPARISONS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    "<=": operator.le,
    "<": operator.lt,
}


class FigureMissing(KeyError):
    """A target names a figure the results do not hold."""


@dataclass(frozen=True)
class Target:
    """
    One target: a figure of the results compared with a limit.

    :param name: what is promised, in words.
    :param figure: the keys leading to the figure in the results; a summary's median is used.
    :param comparison: ``>=``, ``<=`` or ``<``.
    :param limit: the bound the figure is compared with.
    :param unit: how the figure is printed (``x`` for ratios, ``MB``, ``%``).
    :param scale: factor from the stored figure to ``unit`` (``1e-6`` for bytes shown in MB).
    """

    name: str
    figure: tuple[str, ...]
    comparison: str
    limit: float
    unit: str
    scale: float = 1.0

    def measured(self, results: Mapping[str, Any]) -> float:
        """The figure's value (a summary's median) in ``results``."""
        value: Any = results
        for key in self.figure:
            if not isinstance(value, Mapping) or key not in value:
                raise FigureMissing(f"Target {self.name!r} needs figure {'.'.join(self.figure)}, absent.")
            value = value[key]
        return float(value["median"] if isinstance(value, Mapping) else value) * self.scale

    def check(self, results: Mapping[str, Any]) -> dict[str, Any]:
        """The target with its measured value and verdict (``NOT MEASURED`` if the figure is absent)."""
        try:
            measured: float | None = self.measured(results)
        except FigureMissing:
            measured = None
        return {
            "name": self.name,
            "figure": ".".join(self.figure),
            "target": f"{self.comparison} {self.limit:g}{self.unit}",
            "measured": measured,
            "unit": self.unit,
            "verdict": self._verdict(measured),
        }

    def _verdict(self, measured: float | None) -> str:
        if measured is None:
            return "NOT MEASURED"
        return "PASS" if _COMPARISONS[self.comparison](measured, self.limit) else "MISS"


LATENCY_BOUND_TARGETS = (
    Target(
        "in-flight cap 8, defaults: rows/s / capacity limit",
        ("latency_bound", "capped", "operator_adaptive", "capacity_fraction"),
        ">=",
        0.9,
        "x",
    ),
    Target(
        "in-flight cap 8, defaults: requests refused",
        ("latency_bound", "capped", "operator_adaptive", "refused_pct"),
        "<=",
        2,
        "%",
    ),
    Target(
        "4 tasks sharing the cap, defaults: rows/s / capacity limit",
        ("latency_bound", "shared", "operator_adaptive", "capacity_fraction"),
        ">=",
        0.85,
        "x",
    ),
    Target(
        "latency-bound rows/s vs the official client",
        ("latency_bound", "adaptive_vs_official_client_capped"),
        ">=",
        2.5,
        "x",
    ),
    Target(
        "latency-bound: rows not run exactly once",
        ("latency_bound", "rows_not_run_exactly_once"),
        "<=",
        0,
        " rows",
    ),
)

TARGETS = (
    Target(
        "rows/s vs the official client",
        ("scoring", "ratios", "operator_vs_official_client_rows_per_second"),
        ">=",
        3,
        "x",
    ),
    Target(
        "hook DataFrame path (DataFrame in, rows out): rows/s vs the official client",
        ("scoring", "ratios", "hook_dataframe_vs_official_client_scoring_call_rows_per_second"),
        ">=",
        3,
        "x",
    ),
    Target(
        "rows/s vs one request per row",
        ("scoring", "ratios", "operator_vs_per_row_loop_rows_per_second"),
        ">=",
        50,
        "x",
    ),
    Target(
        "client CPU per row vs the floor",
        ("scoring", "ratios", "operator_vs_floor_cpu_per_row"),
        "<=",
        1.2,
        "x",
    ),
    Target("peak RSS, 10x the rows", ("memory", "large_vs_small_peak_rss"), "<=", 1.3, "x"),
    Target(
        "links: peak RSS above baseline",
        ("links", "streamed", "peak_rss_above_baseline_bytes"),
        "<=",
        250,
        " MB",
        scale=1e-6,
    ),
    Target("1,000 waiting triggers: memory added", ("triggers", "memory_added_mb"), "<", 50, " MB"),
    Target(
        "1,000 waiting triggers: CPU while waiting",
        ("triggers", "cpu_while_waiting_pct_of_one_core"),
        "<",
        5,
        "%",
    ),
    Target(
        "trigger p99 delivery-to-event / poll interval", ("triggers", "p99_vs_poll_interval"), "<", 2, "x"
    ),
    *LATENCY_BOUND_TARGETS,
)


def check_targets(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every target with its measured value and PASS/MISS."""
    return [target.check(results) for target in TARGETS]
