"""Draw a run's figures as one compact multi-panel PNG (for the README and docs).

Runs in the benchmark-only environment, where matplotlib is installed:
``.venv-bench/bin/python -m benchmarks.chart benchmarks/results/latest.json benchmarks/results/latest.png``
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display on build machines
import matplotlib.pyplot as plt
from matplotlib.axes import Axes

_MB = 1e6
_SHORT_CLIENT_NAMES = {
    "operator": "operator",
    "hook_dataframe": "hook\nDataFrame",
    "official_client": "official\nclient",
    "per_row_loop": "per-row\nloop",
    "floor": "floor",
}
_BAR_COLOUR, _OTHER_COLOUR = "#1565c0", "#90a4ae"
# The latency-bound runs measured against the capacity limit, with their targets.
_CAPACITY_RUNS = {"capped": ("in-flight cap 8", 0.9), "shared": ("4 tasks sharing it", 0.85)}
_LATENCY_CLIENTS = {
    "operator_adaptive": "operator,\ndefaults",
    "operator_fixed_3": "fixed 3",
    "operator_fixed_16": "fixed 16",
    "official_client": "official\nclient",
}
_VERDICT_COLOURS = {"PASS": "#2e7d32", "MISS": "#c62828"}


def _bars(
    axes: Axes, labels: Sequence[str], summaries: Sequence[Mapping[str, Any]], scale: float = 1.0
) -> None:
    medians = [summary["median"] * scale for summary in summaries]
    below = [(summary["median"] - summary["low"]) * scale for summary in summaries]
    above = [(summary["high"] - summary["median"]) * scale for summary in summaries]
    colours = [_BAR_COLOUR, *[_OTHER_COLOUR] * (len(labels) - 1)]
    axes.bar(labels, medians, yerr=[below, above], capsize=3, color=colours)
    axes.tick_params(axis="x", labelsize=8)
    for index, median in enumerate(medians):
        axes.annotate(f"{median:,.3g}", (index, median), ha="center", va="bottom", fontsize=7)


def _scoring_panels(rate_axes: Axes, cpu_axes: Axes, scoring: Mapping[str, Any]) -> None:
    clients = scoring["clients"]
    labels = [_SHORT_CLIENT_NAMES.get(name, name) for name in clients]
    _bars(rate_axes, labels, [figures["rows_per_second"] for figures in clients.values()])
    rate_axes.set_yscale("log")
    rate_axes.set_title(f"Rows/s, {scoring['rows']:,} rows (log)")
    _bars(cpu_axes, labels, [figures["cpu_seconds_per_million_rows"] for figures in clients.values()])
    cpu_axes.set_yscale("log")
    cpu_axes.set_title("Client CPU s per 1M rows (log)")


def _memory_panel(axes: Axes, memory: Mapping[str, Any]) -> None:
    labels = [f"{memory['small_rows']:,} rows", f"{memory['large_rows']:,} rows"]
    _bars(axes, labels, [memory["peak_rss_bytes_small"], memory["peak_rss_bytes_large"]], 1 / _MB)
    axes.set_title("Operator peak RSS (MB)")


def _links_panel(axes: Axes, links: Mapping[str, Any]) -> None:
    summaries = [links[name]["peak_rss_above_baseline_bytes"] for name in ("streamed", "whole")]
    _bars(axes, ["streamed", "loaded whole"], summaries, 1 / _MB)
    axes.set_title(f"Links, {links['document_bytes'] / _MB:,.0f} MB:\nRSS above baseline (MB)")


def _measured_text(target: Mapping[str, Any]) -> str:
    value = "not measured" if target["measured"] is None else f"{target['measured']:,.2f}{target['unit']}"
    return f"{value} (wanted {target['target']})"


def _targets_panel(axes: Axes, targets: Sequence[Mapping[str, Any]]) -> None:
    names = [target["name"] for target in targets][::-1]
    verdicts = [target["verdict"] for target in targets][::-1]
    measured = [_measured_text(target) for target in targets][::-1]
    colours = [_VERDICT_COLOURS.get(verdict, _OTHER_COLOUR) for verdict in verdicts]
    axes.barh(names, [1] * len(names), color=colours)
    for row, (verdict, text) in enumerate(zip(verdicts, measured, strict=True)):
        axes.text(0.02, row, f"{verdict}  {text}", va="center", color="white", fontsize=7)
    axes.set_xticks([])
    axes.tick_params(axis="y", labelsize=7)
    axes.set_title("Targets")


def _triggers_panel(axes: Axes, triggers: Mapping[str, Any]) -> None:
    latency = [key for key in ("p50_vs_poll_interval", "p99_vs_poll_interval") if key in triggers]
    if not latency:
        axes.text(0.5, 0.5, str(triggers.get("status", "not measured")), ha="center", wrap=True, fontsize=8)
        axes.set_axis_off()
        return
    _bars(axes, [key.split("_")[0] for key in latency], [triggers[key] for key in latency])
    axes.axhline(2.0, color=_VERDICT_COLOURS["MISS"], linestyle="--", linewidth=1)
    axes.set_title("Triggers: delivery-to-event / poll interval")


def _latency_panel(axes: Axes, latency: Mapping[str, Any]) -> None:
    """Rows/s ÷ capacity per client, under the cap and shared by four tasks; refused share on each bar."""
    width = 0.8 / len(_CAPACITY_RUNS)
    positions = range(len(_LATENCY_CLIENTS))
    for offset, (run, (label, target)) in enumerate(_CAPACITY_RUNS.items()):
        figures = [latency[run].get(client, {}) for client in _LATENCY_CLIENTS]
        xs = [position + (offset - 0.5) * width for position in positions]
        fractions = [figure.get("capacity_fraction", 0.0) for figure in figures]
        colour = _BAR_COLOUR if offset == 0 else _OTHER_COLOUR
        axes.bar(xs, fractions, width, color=colour, label=f"{label} (target {target})")
        for x, fraction, figure in zip(xs, fractions, figures, strict=True):
            refused = figure.get("refused_pct")
            text = f"{fraction:.2f}" + ("" if refused is None else f"\n{refused:.0f}% ref.")
            axes.annotate(text, (x, fraction), ha="center", va="bottom", fontsize=6)
    axes.axhline(1.0, color="black", linewidth=0.5)
    axes.set_xticks(list(positions), list(_LATENCY_CLIENTS.values()), fontsize=8)
    axes.set_ylim(0, 1.25)
    axes.legend(fontsize=7, loc="upper right")
    axes.set_title(
        f"Latency-bound: rows/s / capacity ({latency['capacity_rows_per_second']:,.0f} rows/s), refused"
    )


def _status_panel(axes: Axes, title: str, figures: Mapping[str, Any]) -> None:
    axes.text(0.5, 0.5, str(figures["status"])[:200], ha="center", va="center", wrap=True, fontsize=8)
    axes.set_axis_off()
    axes.set_title(title)


def _panel_or_status(
    axes: Axes, title: str, figures: Mapping[str, Any], draw: Callable[[Axes, Mapping[str, Any]], None]
) -> None:
    if "status" in figures:
        _status_panel(axes, title, figures)
    else:
        draw(axes, figures)


def draw_chart(results: Mapping[str, Any], output: Path) -> None:
    """Write the PNG: scoring, memory, links, triggers, the latency-bound runs and the targets."""
    figure = plt.figure(figsize=(16, 12), layout="constrained")
    grid = figure.add_gridspec(3, 4)
    if "status" in results["scoring"]:
        _status_panel(figure.add_subplot(grid[0, 0:2]), "Batch scoring", results["scoring"])
    else:
        _scoring_panels(figure.add_subplot(grid[0, 0]), figure.add_subplot(grid[0, 1]), results["scoring"])
    _panel_or_status(figure.add_subplot(grid[0, 2]), "Memory", results["memory"], _memory_panel)
    _panel_or_status(figure.add_subplot(grid[0, 3]), "Links", results["links"], _links_panel)
    _triggers_panel(figure.add_subplot(grid[1, 0]), results["triggers"])
    latency = results.get("latency_bound", {"status": "not measured"})
    _panel_or_status(figure.add_subplot(grid[1, 1:]), "Latency-bound", latency, _latency_panel)
    _targets_panel(figure.add_subplot(grid[2, :]), results["targets"])
    machine = results["machine"]
    figure.suptitle(
        f"airflow-provider-modelbit benchmarks ({results['size']}) — {machine['cpu_model']}, "
        f"{machine['cores']} cores, Python {machine['python']}, Airflow {machine['airflow']}",
        fontsize=10,
    )
    figure.savefig(output, dpi=100)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("results", type=Path)
    parser.add_argument("output", type=Path)
    arguments = parser.parse_args()
    draw_chart(json.loads(arguments.results.read_text()), arguments.output)


if __name__ == "__main__":
    main()
