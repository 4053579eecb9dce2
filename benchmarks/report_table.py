"""The figures of a run as a Markdown table: printed by the runner and pasted into the docs."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

_MB = 1e6
CLIENT_LABELS = {
    "operator": "ModelbitBatchInferenceOperator",
    "hook_dataframe": "ModelbitHook.get_inference on a DataFrame",
    "official_client": "official client get_inference (modelbit 0.44.3)",
    "per_row_loop": "one requests.post per row (sample, extrapolated)",
    "floor": "floor: Parquet + orjson round trip, no HTTP",
}


def _spread(summary: Mapping[str, Any], scale: float = 1.0, digits: int = 1) -> str:
    median, low, high = (summary[key] * scale for key in ("median", "low", "high"))
    return f"{median:,.{digits}f} ({low:,.{digits}f}-{high:,.{digits}f})"


def _row(*cells: str) -> str:
    return "| " + " | ".join(cells) + " |"


def _machine_lines(machine: Mapping[str, Any]) -> list[str]:
    return [
        f"Machine: {machine['cpu_model']}, {machine['cores']} cores, {machine['os']}; "
        f"Python {machine['python']}, Airflow {machine['airflow']}, pyarrow {machine['pyarrow']}; "
        f"official client {machine['official_client']}.",
        "",
    ]


def _scoring_lines(scoring: Mapping[str, Any]) -> list[str]:
    lines = [
        f"Batch scoring, {scoring['rows']:,} rows x 8 features, `echo`, Parquet out "
        "(median of the runs, lowest-highest in brackets):",
        "",
        "| client | rows/s | client CPU s per 1M rows | peak RSS MB | scoring call alone, rows/s |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, figures in scoring["clients"].items():
        call = figures.get("scoring_call_rows_per_second")
        lines.append(
            _row(
                CLIENT_LABELS.get(name, name),
                _spread(figures["rows_per_second"], digits=0),
                _spread(figures["cpu_seconds_per_million_rows"]),
                _spread(figures["peak_rss_bytes"], 1 / _MB, 0),
                "—" if call is None else _spread(call, digits=0),
            )
        )
    return [*lines, ""]


def _memory_lines(memory: Mapping[str, Any]) -> list[str]:
    return [
        "Peak RSS of the operator's code path, fresh process each (MB):",
        "",
        "| rows | peak RSS MB | process baseline MB |",
        "|---:|---:|---:|",
        f"| {memory['small_rows']:,} | {_spread(memory['peak_rss_bytes_small'], 1 / _MB, 0)} | "
        f"{_spread(memory['baseline_rss_bytes'], 1 / _MB, 0)} |",
        f"| {memory['large_rows']:,} | {_spread(memory['peak_rss_bytes_large'], 1 / _MB, 0)} | |",
        "",
    ]


def _links_lines(links: Mapping[str, Any]) -> list[str]:
    lines = [
        f"Links: a {links['document_bytes'] / _MB:,.0f} MB linked result "
        f"({links['rows']:,} rows) to Parquet:",
        "",
        "| way | seconds | CPU s | peak RSS above baseline MB |",
        "|---|---:|---:|---:|",
    ]
    labels = {
        "streamed": "open_link + link_rows_to_parquet (streamed)",
        "whole": "download whole + orjson.loads",
    }
    for name, label in labels.items():
        figures = links[name]
        lines.append(
            _row(
                label,
                _spread(figures["seconds"], digits=2),
                _spread(figures["cpu_seconds"], digits=2),
                _spread(figures["peak_rss_above_baseline_bytes"], 1 / _MB, 0),
            )
        )
    return [*lines, ""]


_LATENCY_RUNS = {
    "capped": "in-flight cap 8",
    "quota": "per-minute quota",
    "shared": "4 tasks sharing cap 8",
}
_VARIANT_LABELS = {
    "operator_adaptive": "operator, defaults (adaptive)",
    "operator_fixed_3": "operator, fixed 3",
    "operator_fixed_16": "operator, fixed 16",
    "official_client": "official client, defaults",
}


def _final_concurrency(result: Mapping[str, Any]) -> str:
    final = ", ".join(map(str, result.get("concurrency_final", []))) or "—"
    return f"{final}; {result['failed']}" if "failed" in result else final


def latency_bound_lines(figures: Mapping[str, Any]) -> list[str]:
    """The latency-bound runs: one line per run and client."""
    model, per_row, rows = (
        figures["model_seconds"],
        figures["model_seconds_per_row"],
        figures["rows_per_request"],
    )
    capacity, cap = figures["capacity_rows_per_second"], figures["in_flight_cap"]
    lines = [
        f"Latency-bound: the model takes {model:g} s + {per_row:g} s per row ({model + per_row * rows:.2f} s "
        f"per {rows:,}-row request); in-flight cap {cap} -> capacity limit {capacity:,.0f} rows/s; quota "
        f"{figures['quota_per_minute']} requests per minute per client. Load average (1 min) "
        f"{figures['load_before']:.1f} before, {figures['load_after']:.1f} after.",
        "",
        "| run | client | rows/s | / capacity | requests | refused | runs per row | p50 s | p99 s | "
        "final concurrency |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for run, label in _LATENCY_RUNS.items():
        for variant, result in figures[run].items():
            fraction = result.get("capacity_fraction")
            runs = f"{result['runs_per_row_min']}-{result['runs_per_row_max']}"
            lines.append(
                _row(
                    label,
                    _VARIANT_LABELS.get(variant, variant),
                    f"{result['rows_per_second']:,.0f}",
                    "—" if fraction is None else f"{fraction:.2f}",
                    f"{result['requests']:,}",
                    f"{result['refused']:,} ({result['refused_pct']:.1f}%)",
                    runs if runs != "1-1" else "1",
                    f"{result['latency_p50_seconds']:.2f}",
                    f"{result['latency_p99_seconds']:.2f}",
                    _final_concurrency(result),
                )
            )
    return [*lines, ""]


def _flat_lines(title: str, figures: Mapping[str, Any]) -> list[str]:
    lines = [f"{title}:", "", "| figure | value |", "|---|---:|"]
    for key, value in figures.items():
        if isinstance(value, Mapping) and "median" in value:
            lines.append(f"| {key} | {_spread(value, digits=2)} |")
        elif isinstance(value, int) and not isinstance(value, bool):
            lines.append(f"| {key} | {value:,} |")
        elif isinstance(value, float):
            lines.append(f"| {key} | {value:,.3g} |")
        elif isinstance(value, str):
            lines.append(f"| {key} | {value} |")
    return [*lines, ""]


def _target_lines(targets: list[Mapping[str, Any]]) -> list[str]:
    lines = ["Targets (median figure):", "", "| target | wanted | measured | |", "|---|---:|---:|---|"]
    for target in targets:
        measured = "—" if target["measured"] is None else f"{target['measured']:,.2f}{target['unit']}"
        lines.append(f"| {target['name']} | {target['target']} | {measured} | **{target['verdict']}** |")
    return lines


_SECTIONS: tuple[tuple[str, str, Callable[[Mapping[str, Any]], list[str]]], ...] = (
    ("scoring", "Batch scoring", _scoring_lines),
    ("memory", "Peak RSS", _memory_lines),
    ("links", "Links", _links_lines),
    ("latency_bound", "Latency-bound", latency_bound_lines),
    (
        "triggers",
        "",
        lambda figures: _flat_lines("1,000 callback triggers waiting in one event loop", figures),
    ),
    ("emulator_throughput", "", lambda figures: _flat_lines("Local server throughput", figures)),
)


def _section_lines(
    results: Mapping[str, Any], name: str, title: str, render: Callable[..., list[str]]
) -> list[str]:
    figures = results.get(name, {"status": "not measured"})
    if title and "status" in figures:
        return [f"{title}: {figures['status']}", ""]
    return render(figures)


def render_table(results: Mapping[str, Any]) -> str:
    """The whole run as Markdown: machine, each workload's figures, then the targets."""
    lines = _machine_lines(results["machine"])
    for name, title, render in _SECTIONS:
        lines += _section_lines(results, name, title, render)
    lines += _target_lines(results["targets"])
    return "\n".join(lines) + "\n"
