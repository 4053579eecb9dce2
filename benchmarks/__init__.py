"""Benchmarks of the provider against the official Modelbit client, a per-row loop and a no-HTTP floor.

Run them with ``bash scripts/run_benchmarks.sh`` (see ``docs/benchmarks.md``).
"""
